"""A fake Open-Meteo for tests: real HTTP on 127.0.0.1, scripted answers.

It serves ``/v1/search`` (geocoding) and ``/v1/forecast`` in the shapes of
the real service, starting from the recorded responses in
``tests/fixtures`` (Open-Meteo data, CC BY 4.0, attribution: Open-Meteo.com)::

    with FakeOpenMeteo() as server:          # or the `openmeteo` fixture
        os.environ["OPEN_METEO_GEOCODING_URL"] = server.geocoding_url
        server.add_place("Springfield", 39.8, -89.6, country="United States")
        server.set_forecast(39.8, -89.6, temperature=21.5)
        server.fail("rate_limit")            # the next request answers 429
        server.fail("trickle")               # the next answer comes a byte at a time
        ...
        assert server.requests[-1].params["name"] == "Springfield"

Place names match case-insensitively; an unknown name gets the recorded
no-match body (HTTP 200 without ``results``). Coordinates without a
forecast of their own get :data:`DEFAULT_WEATHER`. A request for ``hourly``
or ``daily`` values gets a recorded answer set with
``set_forecast(..., series=load_fixture("forecast_hourly_daily_horizon_nulls"))``,
or else a made-up but regular one (:func:`generated_series`): hours from
:data:`SERIES_START`, a daily temperature swing around the point's
temperature, and rain in the evening. The server is stopped,
and all of its threads joined, when the ``with`` block ends.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from tests.support.local_server import FakeServer, KeepAliveHandler, LocalServer

__all__ = [
    "DEFAULT_WEATHER",
    "FIXTURES",
    "SERIES_START",
    "FailureKind",
    "FakeOpenMeteo",
    "GeneratedCity",
    "RecordedRequest",
    "generated_series",
    "load_fixture",
]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

#: Ways the next requests can fail (see :meth:`FakeOpenMeteo.fail`).
FailureKind = Literal[
    "rate_limit",  # HTTP 429 with {"error": true, "reason": ...}
    "server_error",  # HTTP 500 (or `status`) with an HTML body
    "bad_request",  # HTTP 400 with {"error": true, "reason": ...}
    "not_json",  # HTTP 200 with an HTML body
    "wrong_shape",  # HTTP 200 with JSON the client cannot use
    "hang",  # no answer until the server stops (past any client timeout)
    "close",  # the connection is closed without an answer
    "trickle",  # the right answer, its body one byte every `trickle_seconds`
    "trickle_headers",  # the right answer, one byte every `trickle_seconds` from the status line
    "huge",  # HTTP 200 with a JSON body of HUGE_BYTES
]

#: The size of a ``huge`` answer: more than any client should take in.
HUGE_BYTES = 3_000_000

RATE_LIMIT_REASON = "Minutely API request limit exceeded. Please try again in one minute."

#: What the forecast says for coordinates with no forecast of their own
#: (the values of the recorded legacy response).
DEFAULT_WEATHER: dict[str, Any] = {
    "temperature_2m": 15.6,
    "weather_code": 3,
    "wind_speed_10m": 4.8,
    "wind_direction_10m": 13,
}


#: The first local hour of a generated forecast (the day of the recorded horizon answer).
SERIES_START = datetime(2026, 10, 17, 14)

_HOURLY_UNITS = {"temperature_2m": "°C", "precipitation": "mm", "weather_code": "wmo code"}
_DAILY_UNITS = {
    "temperature_2m_max": "°C",
    "temperature_2m_min": "°C",
    "precipitation_sum": "mm",
    "weather_code": "wmo code",
}


def _hour_values(index: int, temperature: float) -> tuple[float, float, int]:
    """Temperature, precipitation and weather code of hour `index` after midnight of day 0."""
    hour = index % 24
    swing = 4 * math.sin(2 * math.pi * (hour - 9) / 24)  # coolest near 03:00, warmest 15:00
    rain = [0.0, 0.3, 1.2, 2.1, 0.8, 0.2][hour - 18] if 18 <= hour < 24 and index < 48 else 0.0
    code = 63 if rain >= 1 else 61 if rain > 0 else 2 if 9 <= hour < 18 else 0
    return round(temperature + swing - index / 48, 1), rain, code


def generated_series(params: dict[str, str], temperature: float) -> dict[str, Any]:
    """The ``hourly``/``daily`` blocks (and units) a request asks for, made up.

    Hours start at :data:`SERIES_START` (``forecast_hours`` of them, default
    all of ``forecast_days``, default 7); days start on its date.
    """
    days = int(params.get("forecast_days", "7"))
    all_hours = [_hour_values(index, temperature) for index in range(days * 24)]
    midnight = SERIES_START.replace(hour=0)
    body: dict[str, Any] = {}
    if "hourly" in params:
        first = SERIES_START.hour
        count = int(params.get("forecast_hours", str(days * 24 - first)))
        wanted = [v for v in params["hourly"].split(",") if v in _HOURLY_UNITS]
        rows = all_hours[first : first + count]
        columns = {
            "temperature_2m": [row[0] for row in rows],
            "precipitation": [row[1] for row in rows],
            "weather_code": [row[2] for row in rows],
        }
        body["hourly_units"] = {"time": "iso8601"} | {v: _HOURLY_UNITS[v] for v in wanted}
        body["hourly"] = {
            "time": [
                (midnight + timedelta(hours=first + i)).isoformat(timespec="minutes")
                for i in range(len(rows))
            ]
        } | {v: columns[v] for v in wanted}
    if "daily" in params:
        wanted = [v for v in params["daily"].split(",") if v in _DAILY_UNITS]
        day_rows = [all_hours[day * 24 : day * 24 + 24] for day in range(days)]
        columns = {
            "temperature_2m_max": [max(h[0] for h in rows) for rows in day_rows],
            "temperature_2m_min": [min(h[0] for h in rows) for rows in day_rows],
            "precipitation_sum": [round(sum(h[1] for h in rows), 1) for rows in day_rows],
            "weather_code": [max(h[2] for h in rows) for rows in day_rows],
        }
        body["daily_units"] = {"time": "iso8601"} | {v: _DAILY_UNITS[v] for v in wanted}
        body["daily"] = {
            "time": [(midnight + timedelta(days=day)).date().isoformat() for day in range(days)]
        } | {v: columns[v] for v in wanted}
    return body


def _cut_to_asked(recorded: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """A recorded hourly/daily answer with only the blocks and variables asked for."""
    body = {k: v for k, v in recorded.items() if k not in ("hourly", "daily")}
    body = {k: v for k, v in body.items() if k not in ("hourly_units", "daily_units")}
    for block in ("hourly", "daily"):
        if block in params and isinstance(recorded.get(block), dict):
            wanted = {"time", *params[block].split(",")}
            body[block] = {k: v for k, v in recorded[block].items() if k in wanted}
            units = recorded.get(f"{block}_units") or {}
            body[f"{block}_units"] = {k: v for k, v in units.items() if k in wanted}
    return body


def load_fixture(name: str) -> Any:
    """A recorded response body, e.g. ``load_fixture("geocoding_london")``."""
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received."""

    path: str
    #: The raw query string, as sent (percent-encoded).
    query: str
    #: Decoded parameters, the first value of each.
    params: dict[str, str]
    headers: dict[str, str]
    #: The injected failure it was answered with, if any.
    failure: FailureKind | None


@dataclass(frozen=True)
class GeneratedCity:
    """A city made by :meth:`FakeOpenMeteo.add_cities`, with its own weather."""

    name: str
    latitude: float
    longitude: float
    temperature: float


@dataclass(frozen=True)
class _Failure:
    kind: FailureKind
    reason: str | None
    status: int | None
    endpoint: str | None


def _key(latitude: float, longitude: float) -> tuple[float, float]:
    return (round(latitude, 5), round(longitude, 5))


class FakeOpenMeteo(LocalServer):
    """The fake service. Scripting methods may be called while it runs."""

    name = "fake-openmeteo"

    def __init__(
        self, *, hang_seconds: float = 30.0, trickle_seconds: float = 0.1, tls: bool = False
    ) -> None:
        super().__init__(tls=tls)
        self.hang_seconds = hang_seconds
        #: The pause between the bytes of a ``trickle`` answer.
        self.trickle_seconds = trickle_seconds
        self._lock = threading.Lock()
        self._places: dict[str, list[dict[str, Any]]] = {}
        self._forecasts: dict[tuple[float, float], dict[str, Any]] = {}
        self._failures: deque[_Failure] = deque()
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()

        self.add_places("London", load_fixture("geocoding_london")["results"])
        missing_fields = load_fixture("geocoding_missing_fields")["results"]
        self.add_places("Antarctica", missing_fields)
        self.add_places("Île MacMurdo", [missing_fields[1]])
        self.add_place(
            "東京",
            35.6895,
            139.69171,
            country="日本",
            admin1="東京都",
            country_code="JP",
            timezone="Asia/Tokyo",
            population=8336599,
            id=1850147,
        )

    # -- lifecycle ---------------------------------------------------------

    def _make_server(self) -> FakeServer[FakeOpenMeteo]:
        return FakeServer(("127.0.0.1", 0), _Handler, self)

    def _opening(self) -> None:
        self._stopping.clear()

    def _closing(self) -> None:
        self._stopping.set()  # releases hanging requests

    @property
    def geocoding_url(self) -> str:
        return f"{self.base_url}/v1/search"

    @property
    def forecast_url(self) -> str:
        return f"{self.base_url}/v1/forecast"

    # -- scripting -----------------------------------------------------------

    def add_places(self, name: str, results: list[dict[str, Any]]) -> None:
        """Answer a search for `name` with these raw result objects (added to any)."""
        with self._lock:
            self._places.setdefault(name.strip().casefold(), []).extend(results)

    def add_place(
        self,
        name: str,
        latitude: float,
        longitude: float,
        *,
        country: str | None = None,
        admin1: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Add one result for a search of `name`; returns it as served."""
        result: dict[str, Any] = {"name": name, "latitude": latitude, "longitude": longitude}
        if country is not None:
            result["country"] = country
        if admin1 is not None:
            result["admin1"] = admin1
        result.update(fields)
        self.add_places(name, [result])
        return result

    def set_forecast(
        self,
        latitude: float,
        longitude: float,
        *,
        temperature: float | None = None,
        weather_code: int | None = None,
        wind_speed: float | None = None,
        wind_direction: float | None = None,
        body: dict[str, Any] | None = None,
        series: dict[str, Any] | None = None,
    ) -> None:
        """Set the weather at a point: values for the default's, or a whole raw `body`.

        With `body` (e.g. ``load_fixture("forecast_current")``) that exact
        JSON is served whatever the request asked for. With `series` (e.g.
        ``load_fixture("forecast_hourly_daily_horizon_nulls")``) requests for
        ``hourly``/``daily`` values get that answer, cut to what they asked.
        """
        if body is not None:
            forecast: dict[str, Any] = {"body": body}
        elif series is not None:
            forecast = {"series": series}
        else:
            values = {
                "temperature_2m": temperature,
                "weather_code": weather_code,
                "wind_speed_10m": wind_speed,
                "wind_direction_10m": wind_direction,
            }
            forecast = {k: v for k, v in values.items() if v is not None}
        with self._lock:
            self._forecasts[_key(latitude, longitude)] = forecast

    def add_cities(self, count: int, prefix: str = "City") -> list[GeneratedCity]:
        """Make `count` cities ``City0001``... each with its own place and weather.

        City number i is at latitude and longitude i/1000 and is i/100 °C,
        so every city has a different temperature (up to 89999 cities).
        """
        if not 0 <= count <= 89_999:
            raise ValueError("latitudes must stay within 90°: at most 89999 cities")
        cities = []
        for index in range(1, count + 1):
            city = GeneratedCity(
                name=f"{prefix}{index:04d}",
                latitude=index / 1000,
                longitude=index / 1000,
                temperature=index / 100,
            )
            self.add_place(city.name, city.latitude, city.longitude, country="Testland")
            self.set_forecast(city.latitude, city.longitude, temperature=city.temperature)
            cities.append(city)
        return cities

    def fail(
        self,
        kind: FailureKind,
        times: int = 1,
        *,
        reason: str | None = None,
        status: int | None = None,
        endpoint: Literal["search", "forecast"] | None = None,
    ) -> None:
        """Answer the next `times` requests (to `endpoint`, or any) with a failure.

        `reason` replaces the JSON reason of ``rate_limit``/``bad_request``;
        `status` replaces 500 for ``server_error``. Failures queue up in order.
        """
        with self._lock:
            for _ in range(times):
                self._failures.append(_Failure(kind, reason, status, endpoint))

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, endpoint: Literal["search", "forecast"]) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == f"/v1/{endpoint}"]

    # -- serving (on the server's request threads) -----------------------

    def _take_failure(self, endpoint: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.endpoint in (None, endpoint):
                    self._failures.remove(failure)
                    return failure
        return None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _search(self, params: dict[str, str]) -> tuple[int, Any]:
        name = params.get("name")
        if name is None:
            return 400, {"error": True, "reason": "Parameter 'name' is required"}
        try:
            count = int(params.get("count", "10"))
        except ValueError:
            count = 0
        if not 1 <= count <= 100:
            return 400, {"error": True, "reason": "Parameter 'count' must be between 1 and 100"}
        with self._lock:
            results = list(self._places.get(name.strip().casefold(), []))
        if len(name.strip()) < 2 or not results:
            return 200, load_fixture("geocoding_no_match")
        return 200, {"results": results[:count], "generationtime_ms": 0.5}

    def _forecast(self, params: dict[str, str]) -> tuple[int, Any]:
        coordinates = []
        for axis, limit in (("latitude", 90), ("longitude", 180)):
            raw = params.get(axis)
            if raw is None:
                return 400, {"error": True, "reason": f"Parameter '{axis}' is required"}
            try:
                value = float(raw)
            except ValueError:
                reason = f"Cannot initialize Float from invalid String value {raw}"
                return 400, {"error": True, "reason": reason}
            if not -limit <= value <= limit:
                reason = f"{axis.title()} must be in range of -{limit} to {limit}°. Given: {value}."
                return 400, {"error": True, "reason": reason}
            coordinates.append(value)
        latitude, longitude = coordinates
        with self._lock:
            forecast = dict(self._forecasts.get(_key(latitude, longitude), {}))
        if "body" in forecast:
            return 200, forecast["body"]
        if ("hourly" in params or "daily" in params) and "series" in forecast:
            return 200, _cut_to_asked(forecast["series"], params)
        forecast.pop("series", None)
        values = {**DEFAULT_WEATHER, **forecast}
        body: dict[str, Any] = {
            "latitude": latitude,
            "longitude": longitude,
            "generationtime_ms": 0.05,
            "utc_offset_seconds": 0,
            "timezone": "GMT",
            "timezone_abbreviation": "GMT",
            "elevation": 25.0,
        }
        if "current" in params:
            wanted = [v for v in params["current"].split(",") if v in values]
            units = {"temperature_2m": "°C", "weather_code": "wmo code"}
            units |= {"wind_speed_10m": "km/h", "wind_direction_10m": "°"}
            body["current_units"] = {"time": "iso8601", "interval": "seconds"}
            body["current_units"].update({v: units[v] for v in wanted})
            body["current"] = {"time": "2025-09-02T16:45", "interval": 900}
            body["current"].update({v: values[v] for v in wanted})
        elif "hourly" in params or "daily" in params:
            body |= generated_series(params, values["temperature_2m"])
        elif params.get("current_weather") == "true":
            body["current_weather_units"] = {
                "time": "iso8601",
                "interval": "seconds",
                "temperature": "°C",
                "windspeed": "km/h",
                "winddirection": "°",
                "is_day": "",
                "weathercode": "wmo code",
            }
            body["current_weather"] = {
                "time": "2025-09-02T16:45",
                "interval": 900,
                "temperature": values["temperature_2m"],
                "windspeed": values["wind_speed_10m"],
                "winddirection": values["wind_direction_10m"],
                "is_day": 0,
                "weathercode": values["weather_code"],
            }
        return 200, body


class _Handler(KeepAliveHandler):
    server: FakeServer[FakeOpenMeteo]

    def do_GET(self) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        params = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        endpoint = {"/v1/search": "search", "/v1/forecast": "forecast"}.get(url.path)
        failure = fake._take_failure(endpoint) if endpoint else None
        fake._record(
            RecordedRequest(
                path=url.path,
                query=url.query,
                params=params,
                headers=dict(self.headers.items()),
                failure=failure.kind if failure else None,
            )
        )
        if endpoint is None:
            self._send(404, {"error": True, "reason": "Not Found"})
        elif failure is not None:
            self._fail(failure, endpoint, params)
        else:
            self._send(*self._answer(endpoint, params))

    def _answer(self, endpoint: str, params: dict[str, str]) -> tuple[int, Any]:
        fake = self.server.fake
        return fake._search(params) if endpoint == "search" else fake._forecast(params)

    def _fail(self, failure: _Failure, endpoint: str, params: dict[str, str]) -> None:
        if failure.kind == "rate_limit":
            self._send(429, {"error": True, "reason": failure.reason or RATE_LIMIT_REASON})
        elif failure.kind == "bad_request":
            body = load_fixture("forecast_error_latitude")
            self._send(400, {**body, "reason": failure.reason} if failure.reason else body)
        elif failure.kind == "server_error":
            status = failure.status or 500
            self.respond(status, f"<html><h1>{status} oops</h1></html>".encode(), "text/html")
        elif failure.kind == "not_json":
            self.respond(200, b"<html><body>Maintenance</body></html>", "text/html")
        elif failure.kind == "wrong_shape":
            wrong = {"results": {"name": "London"}} if endpoint == "search" else {"current": 20}
            self._send(200, wrong)
        elif failure.kind == "hang":
            self.server.fake._stopping.wait(self.server.fake.hang_seconds)
            self.close_connection = True
        elif failure.kind == "close":
            self.close_connection = True
        elif failure.kind in ("trickle", "trickle_headers"):
            status, body = self._answer(endpoint, params)
            self._trickle(status, json.dumps(body), headers_too=failure.kind == "trickle_headers")
        elif failure.kind == "huge":
            padding = "x" * HUGE_BYTES
            self._send(200, {"results": [], "padding": padding, "current": {}})
        else:  # pragma: no cover - guarded by FailureKind
            raise ValueError(f"unknown failure kind {failure.kind!r}")

    def _trickle(self, status: int, text: str, *, headers_too: bool) -> None:
        """Send an answer one byte every `trickle_seconds` (from the status line if
        `headers_too`, else from the body), until done, the client leaves or the
        server stops."""
        data = text.encode("utf-8")
        head = (
            f"HTTP/1.1 {status} {self.responses[status][0]}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode("ascii")
        message = head + data
        fast = 0 if headers_too else len(head)
        self.close_connection = True
        try:
            self.wfile.write(message[:fast])
            self.wfile.flush()
            for index in range(fast, len(message)):
                if self.server.fake._stopping.wait(self.server.fake.trickle_seconds):
                    return
                self.wfile.write(message[index : index + 1])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: what a deadline is for

    def _send(self, status: int, body: Any) -> None:
        self.respond(status, json.dumps(body).encode(), "application/json; charset=utf-8")
