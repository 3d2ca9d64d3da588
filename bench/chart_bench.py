"""What a forecast chart costs to render, per chart.

Run from the repository root::

    python bench/chart_bench.py [--renders 30]

It prints, from one run: the first chart's time (it imports matplotlib and
loads fonts: once per process), then milliseconds per chart (mean and median
over N renders, one thread) for a full 48-hour forecast, one with gaps
(``null`` values past the model's horizon), and, for scale, the 7-day text.
The chart runs inside a ``Call`` on a worker thread, never on the scheduler.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.forecast import forecast_text
from flows.forecast_chart import forecast_chart
from flows.openmeteo import Forecast, ForecastDay, ForecastHour

START = datetime(2026, 10, 17, 14)


def sample_forecast(*, gaps: bool) -> Forecast:
    """48 hours and 7 days shaped like a real forecast; with `gaps`, a third of values null."""
    hours = []
    for index in range(48):
        when = START + timedelta(hours=index)
        temperature: float | None = round(14 + 4 * math.sin((when.hour - 9) / 24 * 2 * math.pi), 1)
        rain: float | None = round(max(0.0, math.sin(index / 5)) * 1.5, 1)
        if gaps and index % 3 == 0:
            temperature = rain = None
        hours.append(ForecastHour(when.isoformat(timespec="minutes"), temperature, rain, 61))
    days = tuple(
        ForecastDay((START + timedelta(days=d)).date().isoformat(), 10.0, 18.0, 61, 3.2)
        for d in range(7)
    )
    return Forecast(51.5, -0.12, "Europe/London", 3600, tuple(hours), days, "BST")


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call over `count` calls."""

    name: str
    count: int
    mean_ms: float
    median_ms: float


def measure(name: str, work: Callable[[], object], count: int) -> Timing:
    """Time `count` calls of `work`, one after another."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) * 1000)
    return Timing(name, count, statistics.fmean(samples), statistics.median(samples))


def run(renders: int) -> tuple[float, list[Timing]]:
    """The first chart's milliseconds, then each case's timing."""
    full, gappy = sample_forecast(gaps=False), sample_forecast(gaps=True)
    started = time.perf_counter()
    forecast_chart(full, "London")
    first_ms = (time.perf_counter() - started) * 1000
    return first_ms, [
        measure("chart, 48 hours", lambda: forecast_chart(full, "London"), renders),
        measure("chart, 48 hours with gaps", lambda: forecast_chart(gappy, "London"), renders),
        measure("7-day text", lambda: forecast_text(full), renders),
    ]


def main(argv: list[str] | None = None) -> None:
    """Print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=30, help="renders per case (default 30)")
    args = parser.parse_args(argv)
    first_ms, timings = run(args.renders)
    print(f"first chart (imports matplotlib, loads fonts): {first_ms:8.1f} ms")
    print(f"{'case':<28} {'renders':>7} {'mean ms':>9} {'median ms':>10}")
    for timing in timings:
        print(
            f"{timing.name:<28} {timing.count:>7} {timing.mean_ms:>9.2f} {timing.median_ms:>10.2f}"
        )


if __name__ == "__main__":
    main()
