"""A fake Open-Meteo for tests: real HTTP on 127.0.0.1, scripted answers.

It serves ``/v1/search`` (geocoding) and ``/v1/forecast`` in the shapes of
the real service, starting from the recorded responses in
``tests/fixtures`` (Open-Meteo data, CC BY 4.0, attribution: Open-Meteo.com)::

    with FakeOpenMeteo() as server:          # or the `openmeteo` fixture
        os.environ["OPEN_METEO_GEOCODING_URL"] = server.geocoding_url
        server.add_place("Springfield", 39.8, -89.6, country="United States")
        server.set_forecast(39.8, -89.6, temperature=21.5)
        server.fail("rate_limit")            # the next request answers 429
        ...
        assert server.requests[-1].params["name"] == "Springfield"

Place names match case-insensitively; an unknown name gets the recorded
no-match body (HTTP 200 without ``results``). Coordinates without a
forecast of their own get :data:`DEFAULT_WEATHER`. The server is stopped,
and all of its threads joined, when the ``with`` block ends.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from tests.support.local_server import KeepAliveHandler, KeepAliveServer, LocalServer

__all__ = [
    "DEFAULT_WEATHER",
    "FIXTURES",
    "FailureKind",
    "FakeOpenMeteo",
    "GeneratedCity",
    "RecordedRequest",
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
]

RATE_LIMIT_REASON = "Minutely API request limit exceeded. Please try again in one minute."

#: What the forecast says for coordinates with no forecast of their own
#: (the values of the recorded legacy response).
DEFAULT_WEATHER: dict[str, Any] = {
    "temperature_2m": 15.6,
    "weather_code": 3,
    "wind_speed_10m": 4.8,
    "wind_direction_10m": 13,
}


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

    def __init__(self, *, hang_seconds: float = 30.0, tls: bool = False) -> None:
        super().__init__(tls=tls)
        self.hang_seconds = hang_seconds
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

    def _make_server(self) -> _Server:
        return _Server(("127.0.0.1", 0), _Handler, self)

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
    ) -> None:
        """Set the weather at a point: values for the default's, or a whole raw `body`.

        With `body` (e.g. ``load_fixture("forecast_current")``) that exact
        JSON is served whatever the request asked for.
        """
        if body is not None:
            forecast: dict[str, Any] = {"body": body}
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


class _Server(KeepAliveServer):
    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        fake: FakeOpenMeteo,
    ) -> None:
        self.fake = fake
        super().__init__(address, handler)


class _Handler(KeepAliveHandler):
    server: _Server

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
            self._fail(failure, endpoint)
        elif endpoint == "search":
            self._send(*fake._search(params))
        else:
            self._send(*fake._forecast(params))

    def _fail(self, failure: _Failure, endpoint: str) -> None:
        if failure.kind == "rate_limit":
            self._send(429, {"error": True, "reason": failure.reason or RATE_LIMIT_REASON})
        elif failure.kind == "bad_request":
            body = load_fixture("forecast_error_latitude")
            self._send(400, {**body, "reason": failure.reason} if failure.reason else body)
        elif failure.kind == "server_error":
            status = failure.status or 500
            self._send_raw(status, "text/html", f"<html><h1>{status} oops</h1></html>")
        elif failure.kind == "not_json":
            self._send_raw(200, "text/html", "<html><body>Maintenance</body></html>")
        elif failure.kind == "wrong_shape":
            wrong = {"results": {"name": "London"}} if endpoint == "search" else {"current": 20}
            self._send(200, wrong)
        elif failure.kind == "hang":
            self.server.fake._stopping.wait(self.server.fake.hang_seconds)
            self.close_connection = True
        elif failure.kind == "close":
            self.close_connection = True
        else:  # pragma: no cover - guarded by FailureKind
            raise ValueError(f"unknown failure kind {failure.kind!r}")

    def _send(self, status: int, body: Any) -> None:
        self._send_raw(status, "application/json; charset=utf-8", json.dumps(body))

    def _send_raw(self, status: int, content_type: str, text: str) -> None:
        data = text.encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout); nothing to tell it
