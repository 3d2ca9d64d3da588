"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.openmeteo_server import FakeOpenMeteo


@pytest.fixture
def openmeteo(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenMeteo]:
    """A running fake Open-Meteo that `flows.openmeteo` talks to for this test.

    Sets ``OPEN_METEO_GEOCODING_URL``/``OPEN_METEO_FORECAST_URL`` to it and
    ``OPEN_METEO_TIMEOUT`` to 5 s (lower it to test a hang). Script it with
    ``add_place``/``set_forecast``/``add_cities``/``fail``; read ``requests``.
    """
    with FakeOpenMeteo() as server:
        monkeypatch.setenv("OPEN_METEO_GEOCODING_URL", server.geocoding_url)
        monkeypatch.setenv("OPEN_METEO_FORECAST_URL", server.forecast_url)
        monkeypatch.setenv("OPEN_METEO_TIMEOUT", "5")
        monkeypatch.delenv("HTTP_PROXY", raising=False)
        monkeypatch.delenv("http_proxy", raising=False)
        monkeypatch.delenv("ALL_PROXY", raising=False)
        monkeypatch.delenv("all_proxy", raising=False)
        yield server
