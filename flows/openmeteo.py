"""A small Open-Meteo client: find places by name, read their current weather and forecast.

Everything here is plain data in and out so that results can be journaled
with :mod:`pickle`: :class:`Place` and :class:`Weather` are frozen
dataclasses of plain values, and every failure raises the one picklable
:class:`ServiceUnavailable` with a short reason (the details go to the
``flows.openmeteo`` logger at warning level).

Configuration is read from the environment at call time, so tests can point
the client at a local fake server:

``OPEN_METEO_GEOCODING_URL``
    default ``https://geocoding-api.open-meteo.com/v1/search``
``OPEN_METEO_FORECAST_URL``
    default ``https://api.open-meteo.com/v1/forecast``
``OPEN_METEO_TIMEOUT``
    seconds, ``READ``, ``CONNECT,READ`` or ``CONNECT,READ,TOTAL``; default
    ``3.05,10`` and a total of the two: no lookup lasts longer than the total,
    however slowly a server trickles its answer

:func:`check_settings` refuses bad values at a program's start. A place name
longer than :data:`MAX_NAME_LENGTH` is never sent (:class:`NameTooLong`), and
no log line of this module is longer than :data:`LOG_LINE_LIMIT`.

Open-Meteo data is published under CC BY 4.0 (attribution: Open-Meteo.com).
"""

from __future__ import annotations

import datetime as dt
import functools
import http.client
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import requests
import urllib3

from flows.http_connections import (
    REDIRECTS,
    KeptConnections,
    LeanResponse,
    environment_settings,
    query_string,
)
from flows.http_deadline import DeadlineAdapter, DeadlineResponse, deadline, remaining_seconds

__all__ = [
    "DEFAULT_FORECAST_URL",
    "DEFAULT_GEOCODING_URL",
    "DEFAULT_TIMEOUT",
    "FORECAST_DAYS",
    "FORECAST_HOURS",
    "LOG_LINE_LIMIT",
    "MAX_NAME_LENGTH",
    "MAX_RESPONSE_BYTES",
    "USER_AGENT",
    "WMO_CODES",
    "Forecast",
    "ForecastDay",
    "ForecastHour",
    "NameTooLong",
    "Place",
    "ServiceUnavailable",
    "Timeouts",
    "Weather",
    "check_settings",
    "compass_point",
    "current_weather",
    "describe_weather_code",
    "search_places",
    "weather_forecast",
]

log = logging.getLogger("flows.openmeteo")

#: No log line of this module is longer (a user's text or a server's answer may be huge).
LOG_LINE_LIMIT = 1000


class _CapLogLines(logging.Filter):
    """Cuts every record of the module's logger to LOG_LINE_LIMIT characters."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > LOG_LINE_LIMIT:
            record.msg = f"{message[:LOG_LINE_LIMIT]}... ({len(message)} characters)"
            record.args = None
        return True


log.addFilter(_CapLogLines())


def _clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis (for messages quoting input)."""
    return text if len(text) <= limit else f"{text[:limit]}..."


DEFAULT_GEOCODING_URL = "https://geocoding-api.open-meteo.com/v1/search"
DEFAULT_FORECAST_URL = "https://api.open-meteo.com/v1/forecast"
_DEFAULT_URLS = {
    "OPEN_METEO_GEOCODING_URL": DEFAULT_GEOCODING_URL,
    "OPEN_METEO_FORECAST_URL": DEFAULT_FORECAST_URL,
}
USER_AGENT = "yielded-weather/0.1"


class Timeouts(NamedTuple):
    """Seconds a lookup may take: to connect, for each read, and in all."""

    connect: float
    read: float
    #: The whole lookup, however slowly a server trickles its answer.
    total: float


#: The connect value is just above a TCP retransmit window; the total is the two added.
DEFAULT_TIMEOUT = Timeouts(3.05, 10.0, 13.05)
#: Place names longer than this are not sent (see NameTooLong).
MAX_NAME_LENGTH = 200
#: An answer larger than this is refused; a 16-day hourly forecast is ~100 KB.
MAX_RESPONSE_BYTES = 2_000_000
_CHUNK_BYTES = 16_384
#: Variables asked of the forecast API (its newer ``current=`` shape).
CURRENT_VARIABLES = "temperature_2m,weather_code,wind_speed_10m,wind_direction_10m"

#: WMO weather interpretation codes, as documented by Open-Meteo.
WMO_CODES: dict[int, str] = {
    0: "Clear sky",
    1: "Mainly clear",
    2: "Partly cloudy",
    3: "Overcast",
    45: "Fog",
    48: "Depositing rime fog",
    51: "Light drizzle",
    53: "Moderate drizzle",
    55: "Dense drizzle",
    56: "Light freezing drizzle",
    57: "Dense freezing drizzle",
    61: "Slight rain",
    63: "Moderate rain",
    65: "Heavy rain",
    66: "Light freezing rain",
    67: "Heavy freezing rain",
    71: "Slight snowfall",
    73: "Moderate snowfall",
    75: "Heavy snowfall",
    77: "Snow grains",
    80: "Slight rain showers",
    81: "Moderate rain showers",
    82: "Violent rain showers",
    85: "Slight snow showers",
    86: "Heavy snow showers",
    95: "Thunderstorm",
    96: "Thunderstorm with slight hail",
    99: "Thunderstorm with heavy hail",
}

_COMPASS = (
    "north",
    "north-east",
    "east",
    "south-east",
    "south",
    "south-west",
    "west",
    "north-west",
)


class ServiceUnavailable(Exception):
    """Open-Meteo could not answer usefully; `reason` says why in a few words.

    Picklable: its only state is the reason, kept in ``args``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)

    @property
    def reason(self) -> str:
        return str(self.args[0])


class NameTooLong(ValueError):
    """A place name longer than MAX_NAME_LENGTH characters: it was not sent.

    Picklable: its only state is the name's length, kept in ``args``.
    """

    def __init__(self, length: int) -> None:
        super().__init__(length)

    @property
    def length(self) -> int:
        return int(self.args[0])

    def __str__(self) -> str:
        return f"a place name of {self.length} characters (at most {MAX_NAME_LENGTH})"


@dataclass(frozen=True)
class Place:
    """One geocoding result. Only name and coordinates are always present."""

    name: str
    latitude: float
    longitude: float
    country: str | None = None
    #: The first-level region: a state, province or country part ("England").
    admin1: str | None = None
    country_code: str | None = None
    timezone: str | None = None
    population: int | None = None
    elevation: float | None = None
    id: int | None = None


@dataclass(frozen=True)
class Weather:
    """Current conditions in metric units; any part but the temperature may be unknown."""

    #: Degrees Celsius.
    temperature: float
    #: WMO weather interpretation code.
    weather_code: int | None = None
    #: Kilometres per hour.
    wind_speed: float | None = None
    #: Degrees the wind comes from (0 is north, 90 east).
    wind_direction: float | None = None
    #: Local time of the observation as the API gives it (ISO 8601), if any.
    time: str | None = None

    @property
    def description(self) -> str:
        """The weather code in words, e.g. ``"Overcast"``."""
        return describe_weather_code(self.weather_code)


def describe_weather_code(code: int | None) -> str:
    """Words for a WMO weather code; unknown codes are named as such."""
    if code is None:
        return "Unknown conditions"
    return WMO_CODES.get(code, f"Unknown conditions (code {code})")


def compass_point(degrees: float) -> str:
    """The nearest of eight compass points, e.g. ``compass_point(13) == "north"``."""
    return _COMPASS[round((degrees % 360) / 45) % 8]


# --------------------------------------------------------------------------- HTTP

_session: requests.Session | None = None
_session_lock = threading.Lock()


def _get_session() -> requests.Session:
    """The one shared session (made on first use; safe for concurrent GETs)."""
    global _session
    with _session_lock:
        if _session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            session.headers["Accept"] = "application/json"
            # Calls run on many worker threads: keep more than urllib3's 10
            # connections per host, and never retry behind the flow's back.
            # DeadlineAdapter bounds each lookup as a whole (see _get_json).
            adapter = DeadlineAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            # requests reads proxies, a CA bundle and ~/.netrc from the environment
            # on every request: a third of a lookup's CPU. Read once per URL
            # instead (_environment); Open-Meteo needs no netrc login.
            session.trust_env = False
            _session = session
        return _session


def _parse_timeout(raw: str) -> Timeouts:
    """``READ``, ``CONNECT,READ`` or ``CONNECT,READ,TOTAL`` seconds; ValueError if not."""
    try:
        parts = [float(part) for part in raw.split(",")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or not all(0 < part < math.inf for part in parts):
        raise ValueError(
            f"OPEN_METEO_TIMEOUT={_clip(raw, 40)!r} is not READ, CONNECT,READ or "
            "CONNECT,READ,TOTAL seconds (positive numbers), e.g. 3.05,10"
        )
    if len(parts) == 1:
        parts = [min(DEFAULT_TIMEOUT.connect, parts[0]), parts[0]]
    connect, read = parts[0], parts[1]
    return Timeouts(connect, read, parts[2] if len(parts) == 3 else connect + read)


@functools.lru_cache(maxsize=8)
def _timeouts_from(raw: str) -> Timeouts:
    """The timeouts a setting means; a bad one is warned about once and the default used."""
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        return _parse_timeout(raw)
    except ValueError as error:
        log.warning("ignoring %s (check_settings refuses it at start)", error)
        return DEFAULT_TIMEOUT


def _timeouts() -> Timeouts:
    return _timeouts_from(os.environ.get("OPEN_METEO_TIMEOUT", "").strip())


def _check_url(variable: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{variable}={_clip(url, 100)!r} is not an http:// or https:// URL with a host, "
            f"e.g. {_DEFAULT_URLS[variable]}"
        )


def check_settings(environ: Mapping[str, str]) -> None:
    """Refuse bad Open-Meteo settings in `environ` with a one-line :class:`ValueError`.

    Programs call it at start (exit status 2 on error), so that a URL without
    a scheme or host, or a timeout that is not a number, is not mistaken for
    an outage later.
    """
    for variable in _DEFAULT_URLS:
        url = environ.get(variable, "").strip()
        if url:
            _check_url(variable, url)
    raw = environ.get("OPEN_METEO_TIMEOUT", "").strip()
    if raw:
        _parse_timeout(raw)


@functools.lru_cache(maxsize=16)
def _environment(url: str) -> dict[str, Any]:
    """What requests takes from the environment for `url`: proxies (``NO_PROXY`` honoured)
    and the CA bundle (``REQUESTS_CA_BUNDLE``), as ``get`` keywords."""
    return environment_settings(url)


def _url(variable: str) -> str:
    """The configured URL; a bad one is a configuration error, logged once per value."""
    url = os.environ.get(variable, "").strip() or _DEFAULT_URLS[variable]
    try:
        _check_url(variable, url)
    except ValueError as error:
        _log_configuration_error_once(url, "configuration error: %s", error)
        raise ServiceUnavailable("misconfigured") from None
    return url


_configuration_errors: set[str] = set()
_configuration_errors_lock = threading.Lock()


def _log_configuration_error_once(key: str, message: str, *args: object) -> None:
    """ERROR the first time `key` goes wrong; later the same goes to DEBUG (no flood)."""
    with _configuration_errors_lock:
        first = key not in _configuration_errors
        _configuration_errors.add(key)
    log.log(logging.ERROR if first else logging.DEBUG, message, *args)


def _read_body(response: requests.Response) -> bytes:
    """The whole body, refusing more than MAX_RESPONSE_BYTES (a runaway server)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_CHUNK_BYTES):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise _TooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


class _TooLarge(Exception):
    pass


def _is_timeout(error: BaseException) -> bool:
    """requests reports a read timeout in the body as a ConnectionError around urllib3's."""
    if isinstance(error, requests.Timeout):
        return True
    cause = error.args[0] if error.args else None
    return isinstance(cause, urllib3.exceptions.ReadTimeoutError)


class _Answer(NamedTuple):
    """An HTTP answer read whole: its status, the URL asked (with the query) and its body."""

    status: int
    url: str
    data: bytes


def _get_json(what: str, variable: str, params: dict[str, str | int | float]) -> dict[str, Any]:
    """GET the URL configured in `variable` and return its JSON object, or raise
    ServiceUnavailable. The whole lookup (connecting, headers, body) ends by the
    total timeout, however slowly the server trickles its answer."""
    url = _url(variable)
    timeouts = _timeouts()
    settings = _environment(url)
    with deadline(timeouts.total):
        answer = None
        if not settings["proxies"] and "@" not in urlsplit(url).netloc:
            answer = _get_kept(what, url, params, timeouts, settings["verify"])
        if answer is None:  # a proxy, a login in the URL, or a redirect: requests knows them
            answer = _get_by_requests(what, url, params, timeouts, settings)
    return _json_object(what, variable, answer)


class _LookupResponse(DeadlineResponse, LeanResponse):
    """An answer read within the lookup's deadline, its headers read the lean way."""


#: The lookups' connections, kept alive across lookups and worker threads; each
#: answer read within the lookup's deadline (flows.http_deadline).
_connections = KeptConnections(keep=32, response_class=_LookupResponse)
_HEADERS = {"User-Agent": USER_AGENT, "Accept": "application/json"}


def _get_kept(
    what: str,
    url: str,
    params: dict[str, str | int | float],
    timeouts: Timeouts,
    verify: bool | str | None,
) -> _Answer | None:
    """The lookup on a kept-alive connection (flows.http_connections): a quarter of the CPU
    of requests' (see bench/telegram_bench.py); None if the answer is a redirect."""
    parts = urlsplit(url)
    query = query_string(params)
    if parts.query:
        query = f"{parts.query}&{query}"
    target, asked = f"{parts.path or '/'}?{query}", f"{url.split('?', 1)[0]}?{query}"
    origin = _connections.origin(f"{parts.scheme}://{parts.netloc}", verify)
    left = remaining_seconds()
    connect_timeout = timeouts.connect if left is None else max(min(timeouts.connect, left), 0.001)
    try:
        connection = _connections.take(origin, connect_timeout)
    except TimeoutError as error:
        log.warning("%s: %s timed out: connecting to %s: %s", what, url, origin.where, error)
        raise ServiceUnavailable("timed out") from None
    except (OSError, http.client.HTTPException) as error:
        log.warning("%s: cannot reach %s: %r", what, url, error)
        raise ServiceUnavailable("cannot connect") from None
    try:
        connection.sock.settimeout(timeouts.read)
        connection.request("GET", target, headers=_HEADERS)
        response = connection.getresponse()
    except (OSError, http.client.HTTPException) as error:  # TimeoutError is an OSError
        connection.close()
        raise _unavailable(what, url, error, answering=False) from None
    try:
        data = _read_answer(response)
    except _TooLarge:
        connection.close()
        log.warning("%s: %s sent more than %d bytes", what, url, MAX_RESPONSE_BYTES)
        raise ServiceUnavailable("response too large") from None
    except (OSError, http.client.HTTPException) as error:
        connection.close()
        raise _unavailable(what, url, error, answering=True) from None
    _connections.give_back(origin, connection)
    if response.status in REDIRECTS and response.getheader("Location"):
        log.info("%s: HTTP %s from %s: following it with requests", what, response.status, url)
        return None
    return _Answer(response.status, asked, data)


def _unavailable(what: str, url: str, error: Exception, *, answering: bool) -> ServiceUnavailable:
    """Log why a lookup's request (or, `answering`, its answer) failed; the error for the flow."""
    if isinstance(error, TimeoutError):
        if answering:
            log.warning("%s: %s timed out sending its answer: %s", what, url, error or "no more")
        else:
            log.warning("%s: %s timed out: %s", what, url, error or "no answer")
        return ServiceUnavailable("timed out")
    if answering:
        log.warning("%s: %s broke off its answer: %r", what, url, error)
        return ServiceUnavailable("connection lost")
    log.warning("%s: cannot reach %s: %r", what, url, error)
    return ServiceUnavailable("cannot connect")


def _read_answer(response: http.client.HTTPResponse) -> bytes:
    """The whole body, refusing more than MAX_RESPONSE_BYTES (a runaway server)."""
    if response.length is not None:
        if response.length > MAX_RESPONSE_BYTES:
            raise _TooLarge(response.length)
        return response.read()
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read(_CHUNK_BYTES):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise _TooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _get_by_requests(
    what: str,
    url: str,
    params: dict[str, str | int | float],
    timeouts: Timeouts,
    settings: dict[str, Any],
) -> _Answer:
    """The lookup through requests (a proxy, a login in the URL, a redirect)."""
    try:
        response = _get_session().get(
            url, params=params, timeout=(timeouts.connect, timeouts.read), stream=True, **settings
        )
    except requests.Timeout as error:
        log.warning("%s: %s timed out: %s", what, url, error)
        raise ServiceUnavailable("timed out") from None
    except requests.ConnectionError as error:
        log.warning("%s: cannot reach %s: %s", what, url, error)
        raise ServiceUnavailable("cannot connect") from None
    except requests.RequestException as error:
        log.warning("%s: request to %s failed: %r", what, url, error)
        raise ServiceUnavailable("request failed") from None
    with response:
        try:
            data = _read_body(response)
        except _TooLarge:
            log.warning("%s: %s sent more than %d bytes", what, url, MAX_RESPONSE_BYTES)
            raise ServiceUnavailable("response too large") from None
        except requests.RequestException as error:
            if _is_timeout(error):
                log.warning("%s: %s timed out sending its answer: %s", what, url, error)
                raise ServiceUnavailable("timed out") from None
            log.warning("%s: %s broke off its answer: %s", what, url, error)
            raise ServiceUnavailable("connection lost") from None
    return _Answer(response.status_code, response.url or url, data)


def _json_object(what: str, variable: str, answer: _Answer) -> dict[str, Any]:
    """The JSON object in an answer, or ServiceUnavailable saying what was wrong."""
    status, data = answer.status, answer.data
    try:
        body: Any = json.loads(data)
        parsed = True
    except ValueError as error:
        body, parsed = None, False
        text = data[:200].decode("utf-8", "replace")
        log.warning(
            "%s: HTTP %s from %s is not JSON (%s): %r", what, status, answer.url, error, text
        )
    reason = body.get("reason") if isinstance(body, dict) else None
    reason = reason.strip() if isinstance(reason, str) and reason.strip() else None
    failed = status >= 400 or (isinstance(body, dict) and body.get("error") is True)
    if status == 429:
        log.warning("%s: rate limited by %s: %s", what, answer.url, reason)
        raise ServiceUnavailable("rate limited")
    if status == 404:
        # Every request will fail the same way: say so once, as what it is.
        _log_configuration_error_once(
            f"404 {_without_query(answer.url)}",
            "%s: configuration error: %s answers HTTP 404 Not Found; check %s",
            what,
            _without_query(answer.url),
            variable,
        )
    elif failed and parsed:
        log.warning("%s: HTTP %s from %s: %.200r", what, status, answer.url, reason or body)
    if failed:
        raise ServiceUnavailable(f"HTTP {status}: {reason}" if reason else f"HTTP {status}")
    if not parsed:
        raise ServiceUnavailable("response is not JSON")
    if not isinstance(body, dict):
        log.warning("%s: expected a JSON object from %s, got %.200r", what, answer.url, body)
        raise ServiceUnavailable("unexpected response")
    return body


def _without_query(url: str | None) -> str:
    return urlsplit(url or "")._replace(query="", fragment="").geturl()


# ------------------------------------------------------------------ parsing helpers


def _number(value: Any) -> float | None:
    """A finite JSON number as float; anything else (bool, str, null, NaN) is None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number.is_integer() else None


def _place(item: Any) -> Place | None:
    if not isinstance(item, dict):
        return None
    name = _text(item.get("name"))
    latitude = _number(item.get("latitude"))
    longitude = _number(item.get("longitude"))
    if name is None or latitude is None or longitude is None:
        return None
    return Place(
        name=name,
        latitude=latitude,
        longitude=longitude,
        country=_text(item.get("country")),
        admin1=_text(item.get("admin1")),
        country_code=_text(item.get("country_code")),
        timezone=_text(item.get("timezone")),
        population=_integer(item.get("population")),
        elevation=_number(item.get("elevation")),
        id=_integer(item.get("id")),
    )


# Units the API may report, converted to the ones Weather promises.
_TEMPERATURE_UNITS: dict[str, Callable[[float], float]] = {
    "°C": lambda value: value,
    "°F": lambda value: round((value - 32) * 5 / 9, 1),
}
_SPEED_UNITS: dict[str, Callable[[float], float]] = {
    "km/h": lambda value: value,
    "mp/h": lambda value: round(value * 1.609344, 1),
    "mph": lambda value: round(value * 1.609344, 1),
    "m/s": lambda value: round(value * 3.6, 1),
    "kn": lambda value: round(value * 1.852, 1),
}


def _convert(
    value: float | None, unit: Any, table: dict[str, Callable[[float], float]], what: str
) -> float | None:
    if value is None or unit is None:
        return value
    convert = table.get(unit) if isinstance(unit, str) else None
    if convert is None:
        log.warning("unknown %s unit %.40r", what, unit)
        raise ServiceUnavailable("unexpected response")
    return convert(value)


# ------------------------------------------------------------------------- the API


def search_places(name: str, count: int = 5) -> list[Place]:
    """Places called `name`, best match first; ``[]`` when there is none.

    A name longer than MAX_NAME_LENGTH raises NameTooLong without a request.

    Results lacking a name or coordinates are dropped; missing country,
    region, population or elevation are ``None``.
    """
    name = name.strip()
    if not name:
        return []
    if len(name) > MAX_NAME_LENGTH:
        raise NameTooLong(len(name))
    body = _get_json(
        "place search",
        "OPEN_METEO_GEOCODING_URL",
        {"name": name, "count": count, "language": "en", "format": "json"},
    )
    results = body.get("results")
    if results is None:
        return []
    if not isinstance(results, list):
        log.warning("place search: 'results' is not a list: %.200r", results)
        raise ServiceUnavailable("unexpected response")
    places = [place for place in map(_place, results) if place is not None]
    if len(places) < len(results):
        log.warning(
            "place search: dropped %d malformed of %d results for %r",
            len(results) - len(places),
            len(results),
            name,
        )
        if not places:
            raise ServiceUnavailable("unexpected response")
    return places[:count]


def current_weather(latitude: float, longitude: float) -> Weather:
    """The current weather at a point, in °C and km/h.

    Reads the forecast API's ``current`` block, or the legacy
    ``current_weather`` block if that is what came back. A missing
    temperature is an unusable answer; other missing values are ``None``.
    """
    body = _get_json(
        "current weather",
        "OPEN_METEO_FORECAST_URL",
        {
            "latitude": latitude,
            "longitude": longitude,
            "current": CURRENT_VARIABLES,
            "temperature_unit": "celsius",
            "wind_speed_unit": "kmh",
            "timezone": "auto",
        },
    )
    current = body.get("current")
    if isinstance(current, dict):
        units = body.get("current_units")
        units = units if isinstance(units, dict) else {}
        names = ("temperature_2m", "weather_code", "wind_speed_10m", "wind_direction_10m")
    else:
        current = body.get("current_weather")
        units = body.get("current_weather_units")
        units = units if isinstance(units, dict) else {}
        names = ("temperature", "weathercode", "windspeed", "winddirection")
    if not isinstance(current, dict):
        log.warning("current weather: no current block in %.300r", body)
        raise ServiceUnavailable("unexpected response")

    temperature_key, code_key, speed_key, direction_key = names
    temperature = _convert(
        _number(current.get(temperature_key)),
        units.get(temperature_key),
        _TEMPERATURE_UNITS,
        "temperature",
    )
    if temperature is None:
        log.warning("current weather: no usable temperature in %.300r", current)
        raise ServiceUnavailable("unexpected response")
    wind_speed = _convert(
        _number(current.get(speed_key)),
        units.get(speed_key),
        _SPEED_UNITS,
        "wind speed",
    )
    direction = _number(current.get(direction_key))
    return Weather(
        temperature=temperature,
        weather_code=_integer(current.get(code_key)),
        wind_speed=wind_speed,
        wind_direction=direction % 360 if direction is not None else None,
        time=_text(current.get("time")),
    )


# ------------------------------------------------------------------- the forecast

#: Hours and days :func:`weather_forecast` asks for.
FORECAST_HOURS = 48
FORECAST_DAYS = 7
HOURLY_VARIABLES = "temperature_2m,precipitation,weather_code"
DAILY_VARIABLES = "weather_code,temperature_2m_max,temperature_2m_min,precipitation_sum"

_PRECIPITATION_UNITS: dict[str, Callable[[float], float]] = {
    "mm": lambda value: value,
    "inch": lambda value: round(value * 25.4, 1),
}


@dataclass(frozen=True)
class ForecastHour:
    """One hour of the forecast; any value may be unknown (past the model's horizon)."""

    #: Local time at the place, as the API gives it: ``"2026-10-18T20:00"``.
    time: str
    #: Degrees Celsius.
    temperature: float | None
    #: Millimetres in the hour before `time` (rain, showers and snow together).
    precipitation: float | None
    #: WMO weather interpretation code.
    weather_code: int | None

    @property
    def local_time(self) -> dt.datetime:
        """`time` as a naive local datetime."""
        return dt.datetime.fromisoformat(self.time)


@dataclass(frozen=True)
class ForecastDay:
    """One day of the forecast; any value may be unknown (past the model's horizon)."""

    #: The local date: ``"2026-10-17"``.
    date: str
    #: Degrees Celsius.
    temperature_min: float | None
    temperature_max: float | None
    #: The day's most severe WMO weather code.
    weather_code: int | None
    #: Millimetres over the day.
    precipitation_sum: float | None

    @property
    def local_date(self) -> dt.date:
        """`date` as a :class:`datetime.date`."""
        return dt.date.fromisoformat(self.date)


@dataclass(frozen=True)
class Forecast:
    """The next hours and days at a point, in local time, °C and mm."""

    latitude: float
    longitude: float
    #: The place's time zone, e.g. ``"Europe/London"`` (``"GMT"`` when the API knows none).
    timezone: str
    #: Local time minus UTC, in seconds, as the API computed it for this answer.
    utc_offset_seconds: int
    #: The next FORECAST_HOURS hours, oldest first (may be fewer, or none).
    hourly: tuple[ForecastHour, ...]
    #: The next FORECAST_DAYS days, today first (may be fewer, or none).
    daily: tuple[ForecastDay, ...]
    #: e.g. ``"BST"`` or ``"GMT-4"``, if given.
    timezone_abbreviation: str | None = None


def weather_forecast(latitude: float, longitude: float) -> Forecast:
    """The next 48 hours and 7 days at a point, in local time, °C and mm.

    ``null`` values (beyond the model's horizon) and variables missing from
    the answer are ``None``; an answer with neither hours nor days, or with
    times that are not ISO dates, is ServiceUnavailable.
    """
    body = _get_json(
        "forecast",
        "OPEN_METEO_FORECAST_URL",
        {
            "latitude": latitude,
            "longitude": longitude,
            "hourly": HOURLY_VARIABLES,
            "daily": DAILY_VARIABLES,
            "forecast_hours": FORECAST_HOURS,
            "forecast_days": FORECAST_DAYS,
            "temperature_unit": "celsius",
            "precipitation_unit": "mm",
            "timezone": "auto",
        },
    )
    hourly, daily = body.get("hourly"), body.get("daily")
    if not isinstance(hourly, dict) and not isinstance(daily, dict):
        log.warning("forecast: neither hourly nor daily values in %.300r", body)
        raise ServiceUnavailable("unexpected response")
    return Forecast(
        latitude=_number(body.get("latitude")) or latitude,
        longitude=_number(body.get("longitude")) or longitude,
        timezone=_text(body.get("timezone")) or "GMT",
        utc_offset_seconds=_integer(body.get("utc_offset_seconds")) or 0,
        hourly=_hours(hourly, body.get("hourly_units")),
        daily=_days(daily, body.get("daily_units")),
        timezone_abbreviation=_text(body.get("timezone_abbreviation")),
    )


def _times(block: dict[str, Any], parse: Callable[[str], object], limit: int) -> list[str]:
    times = block.get("time")
    if not isinstance(times, list) or not all(isinstance(t, str) for t in times):
        log.warning("forecast: 'time' is not a list of strings: %.200r", times)
        raise ServiceUnavailable("unexpected response")
    try:
        for time in times:
            parse(time)
    except ValueError:
        log.warning("forecast: times are not ISO 8601: %.200r", times)
        raise ServiceUnavailable("unexpected response") from None
    return times[:limit]


def _series(
    block: dict[str, Any],
    units: Any,
    name: str,
    length: int,
    table: dict[str, Callable[[float], float]] | None = None,
) -> list[float | None]:
    """`length` values of variable `name`, None where null, absent or not a number."""
    values = block.get(name)
    if values is None:
        return [None] * length
    if not isinstance(values, list):
        log.warning("forecast: %r is not a list: %.200r", name, values)
        raise ServiceUnavailable("unexpected response")
    numbers = [_number(value) for value in values[:length]]
    numbers += [None] * (length - len(numbers))
    unit = units.get(name) if isinstance(units, dict) else None
    if table is not None:
        numbers = [_convert(number, unit, table, name) for number in numbers]
    return numbers


def _codes(block: dict[str, Any], length: int) -> list[int | None]:
    return [
        None if code is None or not code.is_integer() else int(code)
        for code in _series(block, None, "weather_code", length)
    ]


def _hours(block: Any, units: Any) -> tuple[ForecastHour, ...]:
    if not isinstance(block, dict):
        return ()
    times = _times(block, dt.datetime.fromisoformat, FORECAST_HOURS)
    count = len(times)
    temperatures = _series(block, units, "temperature_2m", count, _TEMPERATURE_UNITS)
    precipitation = _series(block, units, "precipitation", count, _PRECIPITATION_UNITS)
    codes = _codes(block, count)
    return tuple(map(ForecastHour, times, temperatures, precipitation, codes))


def _days(block: Any, units: Any) -> tuple[ForecastDay, ...]:
    if not isinstance(block, dict):
        return ()
    dates = _times(block, dt.date.fromisoformat, FORECAST_DAYS)
    count = len(dates)
    lows = _series(block, units, "temperature_2m_min", count, _TEMPERATURE_UNITS)
    highs = _series(block, units, "temperature_2m_max", count, _TEMPERATURE_UNITS)
    sums = _series(block, units, "precipitation_sum", count, _PRECIPITATION_UNITS)
    return tuple(map(ForecastDay, dates, lows, highs, _codes(block, count), sums))
