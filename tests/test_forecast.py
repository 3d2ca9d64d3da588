"""The forecast: the client against the fake server, the 7-day text and the chart."""

from __future__ import annotations

import pickle
import struct
import threading

import pytest

from flows.forecast import NO_DAILY_FORECAST, day_line, forecast_text
from flows.forecast_chart import CHART_SIZE, forecast_chart
from flows.openmeteo import (
    Forecast,
    ForecastDay,
    ForecastHour,
    ServiceUnavailable,
    weather_forecast,
)
from tests.support.openmeteo_server import FakeOpenMeteo, load_fixture

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (fails if it is not a PNG)."""
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _day(
    date: str, low: float | None, high: float | None, code: int | None, rain: float | None
) -> ForecastDay:
    return ForecastDay(date, low, high, code, rain)


# -- the client ----------------------------------------------------------------------


def test_the_forecast_asks_for_48_hours_and_7_days_in_local_time(
    openmeteo: FakeOpenMeteo,
) -> None:
    weather_forecast(51.5, -0.12)

    (request,) = openmeteo.requests
    assert request.path == "/v1/forecast"
    assert request.params == {
        "latitude": "51.5",
        "longitude": "-0.12",
        "hourly": "temperature_2m,precipitation,weather_code",
        "daily": "weather_code,temperature_2m_max,temperature_2m_min,precipitation_sum",
        "forecast_hours": "48",
        "forecast_days": "7",
        "temperature_unit": "celsius",
        "precipitation_unit": "mm",
        "timezone": "auto",
    }


def test_the_forecast_has_hourly_and_daily_parts(openmeteo: FakeOpenMeteo) -> None:
    forecast = weather_forecast(51.5, -0.12)

    assert (forecast.timezone, forecast.utc_offset_seconds) == ("GMT", 0)
    assert len(forecast.hourly) == 48
    assert forecast.hourly[0] == ForecastHour("2026-10-17T14:00", 19.2, 0.0, 2)
    assert forecast.hourly[0].local_time.hour == 14
    assert forecast.hourly[-1].time == "2026-10-19T13:00"
    assert len(forecast.daily) == 7
    assert forecast.daily[0] == ForecastDay("2026-10-17", 11.5, 19.3, 63, 4.6)
    assert forecast.daily[0].local_date.isoformat() == "2026-10-17"


def test_nulls_past_the_horizon_are_none(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(52.28, 6.87, series=load_fixture("forecast_hourly_daily_horizon_nulls"))

    forecast = weather_forecast(52.28, 6.87)

    assert [hour.time for hour in forecast.hourly] == [
        "2026-10-18T20:00",
        "2026-10-18T21:00",
        "2026-10-18T22:00",
        "2026-10-18T23:00",
    ]
    assert {(h.temperature, h.precipitation, h.weather_code) for h in forecast.hourly} == {
        (None, None, None)
    }
    # temperature_2m_min and precipitation_sum are absent from the answer: None too
    assert forecast.daily == (
        ForecastDay("2026-10-17", None, 18.3, 0, None),
        ForecastDay("2026-10-18", None, None, None, None),
    )


def test_a_named_zone_keeps_its_local_times_and_offset(openmeteo: FakeOpenMeteo) -> None:
    recorded = load_fixture("forecast_hourly_probabilities_new_york")
    openmeteo.set_forecast(40.71, -74.01, series=recorded)

    forecast = weather_forecast(40.71, -74.01)

    assert forecast.timezone == "America/New_York"
    assert forecast.timezone_abbreviation == "GMT-4"
    assert forecast.utc_offset_seconds == -14400
    assert [hour.time for hour in forecast.hourly] == recorded["hourly"]["time"]
    assert forecast.daily == ()


def test_fahrenheit_and_inches_are_converted(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(
        1.0,
        2.0,
        series={
            "timezone": "GMT",
            "hourly_units": {"temperature_2m": "°F", "precipitation": "inch"},
            "hourly": {
                "time": ["2026-01-01T00:00"],
                "temperature_2m": [50.0],
                "precipitation": [0.1],
                "weather_code": [61],
            },
        },
    )

    (hour,) = weather_forecast(1.0, 2.0).hourly

    assert hour == ForecastHour("2026-01-01T00:00", 10.0, 2.5, 61)


@pytest.mark.parametrize(
    "series",
    [
        {"timezone": "GMT"},  # neither hourly nor daily
        {"hourly": {"time": "2026-01-01T00:00"}},
        {"hourly": {"time": ["yesterday"]}},
        {"daily": {"time": ["2026-01-01"], "temperature_2m_max": 3}},
        {
            "hourly_units": {"temperature_2m": "K"},
            "hourly": {"time": ["2026-01-01T00:00"], "temperature_2m": [280]},
        },
    ],
    ids=["no blocks", "time not a list", "time not ISO", "values not a list", "unknown unit"],
)
def test_answers_it_cannot_use_are_unavailable(
    openmeteo: FakeOpenMeteo, series: dict[str, object]
) -> None:
    if "hourly" in series or "daily" in series:
        openmeteo.set_forecast(1.0, 2.0, series=series)
    else:
        openmeteo.set_forecast(1.0, 2.0, body=series)

    with pytest.raises(ServiceUnavailable, match="unexpected response"):
        weather_forecast(1.0, 2.0)


def test_short_value_lists_are_padded_with_none(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(
        1.0,
        2.0,
        series={"daily": {"time": ["2026-01-01", "2026-01-02"], "temperature_2m_max": [4, "x"]}},
    )

    assert [day.temperature_max for day in weather_forecast(1.0, 2.0).daily] == [4.0, None]


def test_a_failing_service_is_unavailable(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.fail("server_error", endpoint="forecast")

    with pytest.raises(ServiceUnavailable, match="HTTP 500"):
        weather_forecast(51.5, -0.12)


def test_a_forecast_survives_pickle(openmeteo: FakeOpenMeteo) -> None:
    forecast = weather_forecast(51.5, -0.12)

    assert pickle.loads(pickle.dumps(forecast)) == forecast


# -- the 7-day text ------------------------------------------------------------------


def test_one_line_per_day(openmeteo: FakeOpenMeteo) -> None:
    text = forecast_text(weather_forecast(51.5, -0.12))

    lines = text.splitlines()
    assert len(lines) == 7
    assert lines[0] == "Sat 17 Oct: 12 to 19 °C, Moderate rain, 4.6 mm precipitation"
    assert lines[2] == "Mon 19 Oct: 10 to 18 °C, Partly cloudy, no precipitation"


@pytest.mark.parametrize(
    ("day", "line"),
    [
        (_day("2026-10-17", None, 18.3, 0, None), "Sat 17 Oct: high 18 °C, Clear sky"),
        (_day("2026-10-18", -0.4, None, None, 0.0), "Sun 18 Oct: low 0 °C, no precipitation"),
        (
            _day("2026-12-31", -5.6, -0.2, 71, 0.25),
            "Thu 31 Dec: -6 to 0 °C, Slight snowfall, 0.2 mm precipitation",
        ),
        (_day("2026-10-18", None, None, None, None), "Sun 18 Oct: no forecast yet"),
        (_day("2026-10-19", 1, 2, 42, None), "Mon 19 Oct: 1 to 2 °C, Unknown conditions (code 42)"),
    ],
)
def test_missing_values_are_left_out_of_the_line(day: ForecastDay, line: str) -> None:
    assert day_line(day) == line


def test_the_horizon_answer_reads_plainly(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(52.28, 6.87, series=load_fixture("forecast_hourly_daily_horizon_nulls"))

    assert forecast_text(weather_forecast(52.28, 6.87)) == (
        "Sat 17 Oct: high 18 °C, Clear sky\nSun 18 Oct: no forecast yet"
    )


def test_no_days_at_all_is_said() -> None:
    assert forecast_text(Forecast(0.0, 0.0, "GMT", 0, (), ())) == NO_DAILY_FORECAST


# -- the chart -----------------------------------------------------------------------


def test_the_chart_is_a_phone_sized_png(openmeteo: FakeOpenMeteo) -> None:
    chart = forecast_chart(weather_forecast(51.5, -0.12), "London")

    assert png_size(chart) == CHART_SIZE == (1080, 720)
    assert 20_000 < len(chart) < 500_000


def test_the_chart_survives_nulls_and_an_empty_forecast(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(52.28, 6.87, series=load_fixture("forecast_hourly_daily_horizon_nulls"))
    all_null = weather_forecast(52.28, 6.87)
    gaps = Forecast(
        0.0,
        0.0,
        "GMT",
        0,
        tuple(
            ForecastHour(f"2026-10-05T{h:02d}:00", None if h % 5 == 0 else h, None, None)
            for h in range(24)
        ),
        (),
    )
    empty = Forecast(0.0, 0.0, "GMT", 0, (), ())

    for forecast in (all_null, gaps, empty):
        assert png_size(forecast_chart(forecast)) == CHART_SIZE


def test_the_chart_renders_the_new_york_answer(openmeteo: FakeOpenMeteo) -> None:
    openmeteo.set_forecast(
        40.71, -74.01, series=load_fixture("forecast_hourly_probabilities_new_york")
    )

    chart = forecast_chart(weather_forecast(40.71, -74.01), "New York")

    assert png_size(chart) == CHART_SIZE


def test_the_title_changes_the_picture(openmeteo: FakeOpenMeteo) -> None:
    forecast = weather_forecast(51.5, -0.12)

    assert forecast_chart(forecast, "London") != forecast_chart(forecast, "Paris")
    assert forecast_chart(forecast, "London") == forecast_chart(forecast, "London")


def test_charts_drawn_on_threads_at_once_are_the_same_as_one_drawn_alone(
    openmeteo: FakeOpenMeteo,
) -> None:
    forecast = weather_forecast(51.5, -0.12)
    alone = forecast_chart(forecast, "London")
    results: list[bytes] = []
    lock = threading.Lock()
    start = threading.Barrier(4, timeout=10)

    def draw() -> None:
        start.wait()
        chart = forecast_chart(forecast, "London")
        with lock:
            results.append(chart)

    threads = [threading.Thread(target=draw, name=f"test-chart-{n}") for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not any(thread.is_alive() for thread in threads)
    assert results == [alone] * 4
