"""A picture of the next 48 hours: temperature line, precipitation bars.

``forecast_chart(forecast, place="London")`` returns PNG bytes, 1080 x 720
pixels with large type, so that it reads on a phone. Local time runs along
the bottom (day names at midnight, hours in between), temperature in °C on
the left, precipitation in mm on the right; unknown values (``null`` past the
model's horizon) leave gaps. Example: ``flows/forecast_chart.png``.

It uses matplotlib's object API on the Agg canvas only, never ``pyplot``
(whose global state is not thread safe), so charts can be drawn on worker
threads at once: run it in a ``Call``. Rendering takes tens of
milliseconds; ``bench/chart_bench.py`` measures it.
"""

from __future__ import annotations

import io
import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from flows.openmeteo import Forecast

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["CHART_SIZE", "forecast_chart"]

#: Width and height in pixels (a phone screen's width, 3:2).
CHART_SIZE = (1080, 720)
_DPI = 100
_TEMPERATURE_COLOUR = "#d6452b"
_PRECIPITATION_COLOUR = "#2f78c4"
_FONT = 22
_HOUR = 1 / 24  # in the x axis' unit, days
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _nan(value: float | None) -> float:
    """None as NaN, which matplotlib draws as a gap."""
    return math.nan if value is None else value


def _offset_name(seconds: int) -> str:
    sign = "+" if seconds >= 0 else "-"
    hours, rest = divmod(abs(seconds), 3600)
    return f"UTC{sign}{hours}" + (f":{rest // 60:02d}" if rest else "")


def _time_label(forecast: Forecast) -> str:
    zone = forecast.timezone
    offset = _offset_name(forecast.utc_offset_seconds)
    return f"Local time ({zone}, {offset})" if zone not in ("GMT", "UTC") else f"Time ({offset})"


#: The x axis counts days from here (naive local times, as the forecast gives them).
_EPOCH = datetime(1970, 1, 1)


def _days(when: datetime) -> float:
    return (when - _EPOCH) / timedelta(days=1)


def _label_time(value: float, _position: int | None = None) -> str:
    """Day name at midnight, else the hour: the axis reads as a day-by-day timeline."""
    when = _EPOCH + timedelta(days=round(value * 24) / 24)
    return f"{_DAYS[when.weekday()]} {when.day}" if when.hour == 0 else f"{when.hour:02d}h"


def _draw_temperature(axes: Axes, times: list[float], temperatures: list[float]) -> None:
    axes.plot(times, temperatures, color=_TEMPERATURE_COLOUR, linewidth=4, zorder=3)
    axes.set_ylabel("Temperature (°C)", color=_TEMPERATURE_COLOUR, fontsize=_FONT)
    axes.tick_params(axis="y", colors=_TEMPERATURE_COLOUR, labelsize=_FONT)
    known = [
        (t, value) for t, value in zip(times, temperatures, strict=True) if not math.isnan(value)
    ]
    if not known:
        axes.set_yticks([])  # a scale for no values would only mislead
        axes.text(
            0.5,
            0.5,
            "No temperature forecast",
            transform=axes.transAxes,
            ha="center",
            va="center",
            fontsize=_FONT,
            color="#666666",
        )
        return
    low, high = min(known, key=lambda item: item[1]), max(known, key=lambda item: item[1])
    first, last = times[0], times[-1]
    for (when, value), below in ((high, False), (low, True)):
        # Near an edge the label leans inwards, so the axes do not cut it.
        where = (when - first) / (last - first) if last > first else 0.5
        align = "left" if where < 0.1 else "right" if where > 0.9 else "center"
        axes.annotate(
            f"{value:.0f}°",
            (when, value),
            xytext=(0, -34 if below else 14),
            textcoords="offset points",
            ha=align,
            fontsize=_FONT,
            fontweight="bold",
            color=_TEMPERATURE_COLOUR,
        )
    spread = max(high[1] - low[1], 4.0)
    axes.set_ylim(low[1] - spread * 0.3, high[1] + spread * 0.3)


def _draw_precipitation(axes: Axes, times: list[float], amounts: list[float]) -> None:
    # Each amount is what falls in the hour *before* its time: centre its bar there.
    centres = [when - _HOUR / 2 for when in times]
    axes.bar(
        centres,
        amounts,
        width=_HOUR * 0.85,
        color=_PRECIPITATION_COLOUR,
        alpha=0.55,
        zorder=1,
    )
    axes.set_ylabel("Precipitation (mm)", color=_PRECIPITATION_COLOUR, fontsize=_FONT)
    axes.tick_params(axis="y", colors=_PRECIPITATION_COLOUR, labelsize=_FONT)
    known = [value for value in amounts if not math.isnan(value)]
    # At least 2 mm of scale, so that a drizzle does not look like a flood.
    axes.set_ylim(0, max([2.0, *known]) * 1.15)


def forecast_chart(forecast: Forecast, place: str | None = None) -> bytes:
    """PNG bytes of the next 48 hours of `forecast`, titled with `place` if given."""
    # Imported here so that programs start without loading matplotlib (~0.3 s);
    # the first chart pays it, on a worker thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    width, height = CHART_SIZE
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    # Fixed margins for the fixed size and type: a layout engine would draw
    # the whole figure once more per chart (it doubled the rendering time).
    figure.subplots_adjust(left=0.115, right=0.885, top=0.885, bottom=0.15)
    FigureCanvasAgg(figure)
    title = f"{place}: next 48 hours" if place else "Next 48 hours"
    figure.suptitle(title, fontsize=_FONT + 8, fontweight="bold")
    temperature_axes = figure.add_subplot()
    hours = forecast.hourly
    if not hours:
        temperature_axes.set_axis_off()
        temperature_axes.text(
            0.5, 0.5, "No hourly forecast available", ha="center", va="center", fontsize=_FONT + 4
        )
    else:
        times = [_days(hour.local_time) for hour in hours]
        precipitation_axes = temperature_axes.twinx()
        _draw_precipitation(precipitation_axes, times, [_nan(h.precipitation) for h in hours])
        _draw_temperature(temperature_axes, times, [_nan(h.temperature) for h in hours])
        # The line above the bars; the front axes must then not hide the back ones.
        temperature_axes.set_zorder(precipitation_axes.get_zorder() + 1)
        temperature_axes.patch.set_visible(False)
        temperature_axes.set_xlim(times[0] - _HOUR, times[-1])
        every = 6 if times[-1] - times[0] >= 12 * _HOUR else 1
        temperature_axes.xaxis.set_major_locator(MultipleLocator(every * _HOUR))
        temperature_axes.xaxis.set_major_formatter(FuncFormatter(_label_time))
        temperature_axes.tick_params(axis="x", labelsize=_FONT)
        temperature_axes.set_xlabel(_time_label(forecast), fontsize=_FONT)
        temperature_axes.grid(True, color="#dddddd", linewidth=1)
    figure.text(
        0.995,
        0.005,
        "Data: Open-Meteo.com",
        ha="right",
        va="bottom",
        fontsize=_FONT - 8,
        color="#888888",
    )
    buffer = io.BytesIO()
    # zlib level 1: a tenth larger than the default 6, in two thirds of the time.
    figure.savefig(buffer, format="png", dpi=_DPI, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()
