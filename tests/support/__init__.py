"""Fakes and helpers the tests and the benchmarks share; no tests here.

- ``local_server``: what every fake HTTP server shares (127.0.0.1, threads joined on stop).
- ``fake_telegram``: a fake Telegram Bot API, scripted users, and the environment
  that points a bot at it.
- ``fake_bot_api``: a stand-in for the bot's Bot API adapter, for the outbox in process.
- ``openmeteo_server``: a fake Open-Meteo serving the recorded responses in ``tests/fixtures``.
- ``flows``: tiny flows for the bot's tests (``--flow tests.support.flows:Echo``).
- ``engine``: helpers for tests that run the engine's scheduler.

Benchmarks import these without importing any test module (or pytest).
"""
