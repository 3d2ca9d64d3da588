"""The weather flow: name a city (or share a location), pick the place you mean, read its weather.

States, in order:

* ``Welcome`` (also ``WeatherFlow``, the start): greet the user by name
  (``Who``) -> ``AskCity``, with the deep link's payload (``/start berlin``)
  as the city if there is one.
* ``AskCity``: recall the last places looked up (at most
  :data:`MAX_RECENT`) and offer them as choices, while a new city can still
  be typed and a location shared (blank: ask again); a shared location ->
  ``ShowWeather`` of that point; a recent place -> ``ShowWeather``; a name is
  searched: nothing found, a name too long or service unavailable ->
  ``AskCity``, one place -> ``ShowWeather``, several -> ``ChoosePlace``.
* ``ChoosePlace``: offer the first five as ``name, region, country`` ->
  ``ShowWeather``.
* ``ShowWeather``: say where it is, remember it among the recent places and
  read its weather; service unavailable -> ``AskCity``, else -> ``AskAgain``.
* ``AskAgain``: ``continue`` -> ``AskCity``; ``quit`` -> the end;
  ``forecast`` -> ``ShowForecast``; no answer for ``WEATHER_IDLE_MINUTES``
  (default 30) -> says so, the end.
* ``ShowForecast``: the next 7 days as text and a chart of the next 48
  hours (a picture, drawn in a ``Call``) -> ``AskAgain``.

All HTTP happens in ``Call(search_places, city)``,
``Call(current_weather, latitude, longitude)`` and
``Call(weather_forecast, latitude, longitude)``, so tests answer those calls
instead of reaching Open-Meteo. A place without a country is shown without
the parentheses: ``Found Antarctica at latitude -78.15856 and longitude
16.40626``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.commands import (
    Call,
    Choose,
    Input,
    Location,
    Picture,
    Print,
    Recall,
    Remember,
    Timeout,
    User,
    Who,
)
from engine.states import State, Steps
from flows.forecast import forecast_text
from flows.forecast_chart import forecast_chart
from flows.openmeteo import (
    DEFAULT_FORECAST_URL,
    DEFAULT_GEOCODING_URL,
    Forecast,
    NameTooLong,
    Place,
    ServiceUnavailable,
    Weather,
    check_settings,
    compass_point,
    current_weather,
    search_places,
    weather_forecast,
)

__all__ = [
    "CITY_ANSWERS",
    "CITY_PROMPT",
    "IDLE_MINUTES",
    "MAX_CHOICES",
    "MAX_RECENT",
    "NAME_TOO_LONG",
    "NEXT_PROMPT",
    "NOTHING_FOUND",
    "PLACE_PROMPT",
    "TERMINATING",
    "UNAVAILABLE",
    "AskAgain",
    "AskCity",
    "ChoosePlace",
    "ShowForecast",
    "ShowWeather",
    "WeatherFlow",
    "Welcome",
    "conditions",
    "found",
    "greeting",
    "idle_minutes",
    "place_labels",
    "point_place",
    "recent_places",
    "remembered",
    "stopped",
]

CITY_PROMPT = "Name a city: "
NOTHING_FOUND = "Found nothing"
NAME_TOO_LONG = "That name is too long."
PLACE_PROMPT = "Which one do you mean?"
NEXT_PROMPT = "What next?"
UNAVAILABLE = "The weather service is unavailable right now, please try again later."
TERMINATING = "Terminating"
#: How many places a user is offered when a name is ambiguous.
MAX_CHOICES = 5
#: How many places looked up are remembered per user (and offered next time).
MAX_RECENT = 5
#: The answers "Name a city" takes: a name, or a shared (or typed) location.
CITY_ANSWERS = (str, Location)


def idle_minutes(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    """How long "What next?" waits for an answer: ``WEATHER_IDLE_MINUTES``, default 30.

    Raises ``ValueError`` with a one-line reason for anything but a positive number.
    """
    text = environ.get("WEATHER_IDLE_MINUTES", "").strip()
    if not text:
        return 30.0
    try:
        minutes = float(text)
    except ValueError:
        minutes = math.nan
    if not math.isfinite(minutes) or minutes <= 0:
        raise ValueError(f"WEATHER_IDLE_MINUTES must be a positive number of minutes, got {text!r}")
    return minutes


#: Read once, when the flow is loaded: a restart with another value changes
#: how long the next "What next?" waits, never what a conversation did.
IDLE_MINUTES = idle_minutes()


def stopped(minutes: float) -> str:
    """``No answer for 30 minutes, so I stopped here. Goodbye!``."""
    unit = "minute" if minutes == 1 else "minutes"
    return f"No answer for {minutes:g} {unit}, so I stopped here. Goodbye!"


def found(place: Place) -> str:
    """``Found London (United Kingdom) at latitude 51.50853 and longitude -0.12574``."""
    where = f"{place.name} ({place.country})" if place.country else place.name
    return f"Found {where} at latitude {place.latitude} and longitude {place.longitude}"


def conditions(weather: Weather) -> str:
    """The line after the temperature: ``Overcast, wind 4.8 km/h from the north``."""
    text = weather.description
    if weather.wind_speed is not None:
        if weather.wind_speed == 0:
            text += ", no wind"
        else:
            text += f", wind {weather.wind_speed} km/h"
            if weather.wind_direction is not None:
                text += f" from the {compass_point(weather.wind_direction)}"
    return text


def greeting(user: User) -> str:
    """``Hello, Ann! Name a city or share a location, and I tell you its weather.``."""
    return f"Hello, {user.name}! Name a city or share a location, and I tell you its weather."


def point_place(location: Location) -> Place:
    """A shared location as a place named by its coordinates (no search needed)."""
    latitude, longitude = round(location.latitude, 5), round(location.longitude, 5)
    return Place(f"{latitude}, {longitude}", latitude, longitude)


def found_point(place: Place) -> str:
    """``Your location is at latitude 51.5 and longitude -0.12``."""
    return f"Your location is at latitude {place.latitude} and longitude {place.longitude}"


def _is_point(place: Place) -> bool:
    """Whether `place` is a shared location (see :func:`point_place`), not a named place."""
    try:
        return place.country is None and Location.parse(place.name) is not None
    except ValueError:
        return False


def _kept_place(place: Place) -> dict[str, Any]:
    """What is remembered of a place: plain data, enough to show its weather again."""
    kept: dict[str, Any] = {"name": place.name, "latitude": place.latitude,
                            "longitude": place.longitude}  # fmt: skip
    if place.country:
        kept["country"] = place.country
    if place.admin1:
        kept["admin1"] = place.admin1
    return kept


def recent_places(memory: dict[str, Any]) -> tuple[Place, ...]:
    """The places a user looked up last, newest first, from what was remembered.

    Anything malformed (memory written by an older flow, say) is skipped.
    """
    places: list[Place] = []
    for kept in memory.get("places", ()) if isinstance(memory.get("places"), list) else ():
        try:
            place = Place(
                str(kept["name"]),
                float(kept["latitude"]),
                float(kept["longitude"]),
                kept.get("country"),
                kept.get("admin1"),
            )
        except (TypeError, KeyError, ValueError, AttributeError):
            continue
        places.append(place)
    return tuple(places[:MAX_RECENT])


def remembered(memory: dict[str, Any], place: Place) -> dict[str, Any]:
    """`memory` with `place` first among the recent places (once), at most :data:`MAX_RECENT`."""
    others = [
        _kept_place(old)
        for old in recent_places(memory)
        if (old.latitude, old.longitude) != (place.latitude, place.longitude)
    ]
    return {**memory, "places": [_kept_place(place), *others][:MAX_RECENT]}


def place_labels(places: tuple[Place, ...]) -> list[str]:
    """``name, region, country`` per place, skipping missing parts, all distinct.

    A label that repeats an earlier one (ignoring case, as ``Choose`` matches
    answers) gets `` (2)``, `` (3)``... appended.
    """
    labels: list[str] = []
    taken: set[str] = set()
    for place in places:
        parts = [place.name, place.admin1, place.country]
        base = ", ".join(dict.fromkeys(part for part in parts if part))
        label, number = base, 1
        while label.casefold() in taken or label.isdigit():
            number += 1
            label = f"{base} ({number})"
        taken.add(label.casefold())
        labels.append(label)
    return labels


@dataclass(frozen=True)
class Welcome(State):
    """Greet the user by name; the flow's first state."""

    #: What the flow does, told to its users (the bot's ``/help``, ``--help``).
    help: ClassVar[str] = (
        "I tell you the current weather anywhere in the world: name a city (or share a "
        "location), pick the place you mean if there are several, and I show its temperature, "
        "sky and wind; then, if you like, the next 7 days and a chart of the next 48 hours. "
        f"I remember the last {MAX_RECENT} places you looked up, to offer them next time, "
        "and nothing else. Weather data by Open-Meteo.com."
    )
    #: The environment variables the flow reads (listed by ``--help``).
    settings: ClassVar[dict[str, str]] = {
        "OPEN_METEO_GEOCODING_URL": f"place search endpoint (default {DEFAULT_GEOCODING_URL})",
        "OPEN_METEO_FORECAST_URL": f"forecast endpoint (default {DEFAULT_FORECAST_URL})",
        "OPEN_METEO_TIMEOUT": "HTTP timeout in seconds, READ or CONNECT,READ (default 3.05,10)",
    }

    @staticmethod
    def check(environ: Mapping[str, str]) -> None:
        """Refuse bad `settings` at a program's start: ValueError, in one line."""
        check_settings(environ)

    def run(self) -> Steps:
        user: User = yield Who()
        yield Print(greeting(user))
        # A deep link's payload (t.me/<bot>?start=new_york) names the city; "_" for spaces.
        return AskCity(city=(user.start or "").replace("_", " ").strip())


#: The flow's start, for ``--flow flows.weather:WeatherFlow`` (the default).
WeatherFlow = Welcome


@dataclass(frozen=True)
class AskCity(State):
    """Ask for a city (or a location, or one of the recent places) and look it up.

    `city`, if given, is searched at once (the deep link's payload).
    """

    city: str = ""

    def run(self) -> Steps:
        recent = recent_places((yield Recall()))
        labels = place_labels(recent)
        city = self.city
        while not city:
            if recent:  # the places of last time, and still any city or a location
                answer = yield Choose(CITY_PROMPT, labels, accepts=CITY_ANSWERS)
            else:
                answer = yield Input(CITY_PROMPT, accepts=CITY_ANSWERS)
            if isinstance(answer, Location):
                return ShowWeather(point_place(answer), point=True)
            if answer in labels:
                place = recent[labels.index(answer)]
                return ShowWeather(place, point=_is_point(place))
            city = str(answer or "").strip()
        try:
            places: list[Place] = yield Call(search_places, city)
        except NameTooLong:
            yield Print(NAME_TOO_LONG)
            return AskCity()
        except ServiceUnavailable:
            yield Print(UNAVAILABLE)
            return AskCity()
        if not places:
            yield Print(NOTHING_FOUND)
            return AskCity()
        if len(places) == 1:
            return ShowWeather(places[0])
        return ChoosePlace(tuple(places[:MAX_CHOICES]))


@dataclass(frozen=True)
class ChoosePlace(State):
    """Several places share the name: let the user pick one."""

    places: tuple[Place, ...]

    def run(self) -> Steps:
        labels = place_labels(self.places)
        label = yield Choose(PLACE_PROMPT, labels)
        return ShowWeather(self.places[labels.index(label)])


@dataclass(frozen=True)
class ShowWeather(State):
    """Say which place was found and what its weather is now."""

    place: Place
    #: A shared location rather than a place found by name.
    point: bool = False

    def run(self) -> Steps:
        yield Print(found_point(self.place) if self.point else found(self.place))
        yield Remember(remembered((yield Recall()), self.place))
        try:
            weather: Weather = yield Call(
                current_weather, self.place.latitude, self.place.longitude
            )
        except ServiceUnavailable:
            yield Print(UNAVAILABLE)
            return AskCity()
        yield Print(f"Current temperature is {weather.temperature} °C")
        yield Print(conditions(weather))
        return AskAgain(self.place)


@dataclass(frozen=True)
class AskAgain(State):
    """Another city, the forecast of `place`, or the end (also when left unanswered)."""

    #: The place just shown (``None`` in conversations saved before the forecast existed).
    place: Place | None = None

    def run(self) -> Steps:
        minutes = IDLE_MINUTES
        # "forecast" last, so that the numbers of continue (0) and quit (1) stay as they were
        options = ["continue", "quit"] if self.place is None else ["continue", "quit", "forecast"]
        try:
            choice = yield Choose(NEXT_PROMPT, options, timeout=minutes * 60)
        except Timeout:
            yield Print(stopped(minutes))
            return None
        if choice == "quit":
            yield Print(TERMINATING)
            return None
        if choice == "forecast" and self.place is not None:
            return ShowForecast(self.place)
        return AskCity()


@dataclass(frozen=True)
class ShowForecast(State):
    """The next 7 days of `place` in words, then a chart of the next 48 hours."""

    place: Place

    def run(self) -> Steps:
        try:
            forecast: Forecast = yield Call(
                weather_forecast, self.place.latitude, self.place.longitude
            )
        except ServiceUnavailable:
            yield Print(UNAVAILABLE)
            return AskAgain(self.place)
        where = self.place.name
        yield Print(f"The next 7 days in {where}:\n{forecast_text(forecast)}")
        # Drawn on a worker thread: rendering takes tens of milliseconds.
        png: bytes = yield Call(forecast_chart, forecast, where)
        yield Picture(png, caption=f"The next 48 hours in {where}")
        return AskAgain(self.place)
