"""Benchmarks; run ``python bench/engine_bench.py`` from the repository root."""
