"""The 7-day forecast in words: one line per day.

``forecast_text(forecast)`` gives, for each day of a
:class:`~flows.openmeteo.Forecast`::

    Sat 17 Oct: 12 to 19 °C, Moderate rain, 4.6 mm precipitation
    Sun 18 Oct: high 18 °C, Clear sky
    Mon 19 Oct: no forecast yet

Missing values (``null`` past the model's horizon) are left out of the line
rather than guessed. Day and month names are English whatever the locale, so
the text is the same on every machine (and on replay).
"""

from __future__ import annotations

from flows.openmeteo import Forecast, ForecastDay, describe_weather_code

__all__ = ["NO_DAILY_FORECAST", "day_line", "forecast_text"]

#: What the text says when the answer had no days at all.
NO_DAILY_FORECAST = "No daily forecast is available for this place."

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _degrees(value: float) -> str:
    return f"{round(value)}"  # whole degrees; round() never gives "-0"


def _temperatures(day: ForecastDay) -> str | None:
    low, high = day.temperature_min, day.temperature_max
    if low is not None and high is not None:
        return f"{_degrees(low)} to {_degrees(high)} °C"
    if high is not None:
        return f"high {_degrees(high)} °C"
    if low is not None:
        return f"low {_degrees(low)} °C"
    return None


def _precipitation(millimetres: float | None) -> str | None:
    if millimetres is None:
        return None
    if millimetres <= 0:
        return "no precipitation"
    return f"{millimetres:.1f} mm precipitation"


def day_line(day: ForecastDay) -> str:
    """``Sat 17 Oct: 12 to 19 °C, Moderate rain, 4.6 mm precipitation``."""
    when = day.local_date
    label = f"{_DAYS[when.weekday()]} {when.day} {_MONTHS[when.month - 1]}"
    conditions = describe_weather_code(day.weather_code) if day.weather_code is not None else None
    parts = [
        part
        for part in (_temperatures(day), conditions, _precipitation(day.precipitation_sum))
        if part
    ]
    return f"{label}: {', '.join(parts) if parts else 'no forecast yet'}"


def forecast_text(forecast: Forecast) -> str:
    """One line per day of `forecast` (:func:`day_line`), or :data:`NO_DAILY_FORECAST`."""
    if not forecast.daily:
        return NO_DAILY_FORECAST
    return "\n".join(map(day_line, forecast.daily))
