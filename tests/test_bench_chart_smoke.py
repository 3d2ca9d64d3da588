"""The chart benchmark's parts run at a tiny size (counts, never times)."""

from __future__ import annotations

from bench import chart_bench


def test_the_sample_forecasts_have_48_hours_and_gaps_where_asked() -> None:
    full = chart_bench.sample_forecast(gaps=False)
    gappy = chart_bench.sample_forecast(gaps=True)

    assert len(full.hourly) == len(gappy.hourly) == 48
    assert all(hour.temperature is not None for hour in full.hourly)
    assert sum(hour.temperature is None for hour in gappy.hourly) == 16


def test_every_case_is_timed_over_the_renders_asked() -> None:
    first_ms, timings = chart_bench.run(renders=2)

    assert first_ms > 0
    assert [t.name for t in timings] == [
        "chart, 48 hours",
        "chart, 48 hours with gaps",
        "7-day text",
    ]
    assert all(t.count == 2 and t.mean_ms > 0 and t.median_ms > 0 for t in timings)
