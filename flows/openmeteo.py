"""A small Open-Meteo client: find places by name and read their current weather.

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
    seconds, either ``READ`` or ``CONNECT,READ``; default ``3.05,10``

Open-Meteo data is published under CC BY 4.0 (attribution: Open-Meteo.com).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

__all__ = [
    "DEFAULT_FORECAST_URL",
    "DEFAULT_GEOCODING_URL",
    "USER_AGENT",
    "WMO_CODES",
    "Place",
    "ServiceUnavailable",
    "Weather",
    "compass_point",
    "current_weather",
    "describe_weather_code",
    "search_places",
]

log = logging.getLogger("flows.openmeteo")

DEFAULT_GEOCODING_URL = "https://geocoding-api.open-meteo.com/v1/search"
DEFAULT_FORECAST_URL = "https://api.open-meteo.com/v1/forecast"
USER_AGENT = "yielded-weather/0.1"
#: (connect, read) seconds; the connect value is just above a TCP retransmit window.
DEFAULT_TIMEOUT = (3.05, 10.0)
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
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            # requests reads proxies, a CA bundle and ~/.netrc from the environment
            # on every request: a third of a lookup's CPU. Read once per URL
            # instead (_environment); Open-Meteo needs no netrc login.
            session.trust_env = False
            _session = session
        return _session


def _timeout() -> tuple[float, float]:
    raw = os.environ.get("OPEN_METEO_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        parts = [float(part) for part in raw.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] > 0:
        return (min(DEFAULT_TIMEOUT[0], parts[0]), parts[0])
    if len(parts) == 2 and parts[0] > 0 and parts[1] > 0:
        return (parts[0], parts[1])
    log.warning("ignoring OPEN_METEO_TIMEOUT=%r: want READ or CONNECT,READ seconds", raw)
    return DEFAULT_TIMEOUT


@functools.lru_cache(maxsize=16)
def _environment(url: str) -> dict[str, Any]:
    """What requests takes from the environment for `url`: proxies (``NO_PROXY`` honoured)
    and the CA bundle (``REQUESTS_CA_BUNDLE``), as ``get`` keywords."""
    found = requests.Session().merge_environment_settings(url, {}, None, None, None)
    return {"proxies": found["proxies"], "verify": found["verify"]}


def _url(variable: str, default: str) -> str:
    return os.environ.get(variable, "").strip() or default


def _get_json(what: str, url: str, params: dict[str, str | int | float]) -> dict[str, Any]:
    """GET `url` and return its JSON object, or raise ServiceUnavailable."""
    try:
        response = _get_session().get(url, params=params, timeout=_timeout(), **_environment(url))
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
        status = response.status_code
        try:
            body: Any = response.json()
            parsed = True
        except (ValueError, requests.RequestException) as error:
            body, parsed = None, False
            log.warning(
                "%s: HTTP %s from %s is not JSON (%s): %.200r",
                what,
                status,
                response.url,
                error,
                response.text,
            )

    reason = body.get("reason") if isinstance(body, dict) else None
    reason = reason.strip() if isinstance(reason, str) and reason.strip() else None
    if status == 429:
        log.warning("%s: rate limited by %s: %s", what, response.url, reason)
        raise ServiceUnavailable("rate limited")
    if status >= 400 or (isinstance(body, dict) and body.get("error") is True):
        if parsed:
            log.warning("%s: HTTP %s from %s: %.200r", what, status, response.url, reason or body)
        raise ServiceUnavailable(f"HTTP {status}: {reason}" if reason else f"HTTP {status}")
    if not parsed:
        raise ServiceUnavailable("response is not JSON")
    if not isinstance(body, dict):
        log.warning("%s: expected a JSON object from %s, got %.200r", what, response.url, body)
        raise ServiceUnavailable("unexpected response")
    return body


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
        log.warning("current weather: unknown %s unit %r", what, unit)
        raise ServiceUnavailable("unexpected response")
    return convert(value)


# ------------------------------------------------------------------------- the API


def search_places(name: str, count: int = 5) -> list[Place]:
    """Places called `name`, best match first; ``[]`` when there is none.

    Results lacking a name or coordinates are dropped; missing country,
    region, population or elevation are ``None``.
    """
    name = name.strip()
    if not name:
        return []
    body = _get_json(
        "place search",
        _url("OPEN_METEO_GEOCODING_URL", DEFAULT_GEOCODING_URL),
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
        _url("OPEN_METEO_FORECAST_URL", DEFAULT_FORECAST_URL),
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
