"""The weather flow: name a city, pick the place you mean, read its weather.

States, in order:

* ``AskCity`` (also ``WeatherFlow``, the start): ask a city (blank: ask
  again), search it; nothing found, a name too long or service unavailable
  -> ``AskCity``,
  one place -> ``ShowWeather``, several -> ``ChoosePlace``.
* ``ChoosePlace``: offer the first five as ``name, region, country`` ->
  ``ShowWeather``.
* ``ShowWeather``: say where it is and read its weather; service
  unavailable -> ``AskCity``, else -> ``AskAgain``.
* ``AskAgain``: ``continue`` -> ``AskCity``; ``quit`` -> the end; no answer
  for ``WEATHER_IDLE_MINUTES`` (default 30) -> says so, the end.

All HTTP happens in ``Call(search_places, city)`` and
``Call(current_weather, latitude, longitude)``, so tests answer those calls
instead of reaching Open-Meteo. A place without a country is shown without
the parentheses: ``Found Antarctica at latitude -78.15856 and longitude
16.40626``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from engine.commands import Call, Choose, Input, Print, Timeout
from engine.states import State, Steps
from flows.openmeteo import (
    DEFAULT_FORECAST_URL,
    DEFAULT_GEOCODING_URL,
    NameTooLong,
    Place,
    ServiceUnavailable,
    Weather,
    check_settings,
    compass_point,
    current_weather,
    search_places,
)

__all__ = [
    "CITY_PROMPT",
    "IDLE_MINUTES",
    "MAX_CHOICES",
    "NAME_TOO_LONG",
    "NEXT_PROMPT",
    "NOTHING_FOUND",
    "PLACE_PROMPT",
    "TERMINATING",
    "UNAVAILABLE",
    "AskAgain",
    "AskCity",
    "ChoosePlace",
    "ShowWeather",
    "WeatherFlow",
    "conditions",
    "found",
    "idle_minutes",
    "place_labels",
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
class AskCity(State):
    """Ask for a city and look it up; the flow's first state."""

    #: What the flow does, told to its users (the bot's ``/help``, ``--help``).
    help: ClassVar[str] = (
        "I tell you the current weather anywhere in the world: name a city, pick the place "
        "you mean if there are several, and I show its temperature, sky and wind. "
        "Weather data by Open-Meteo.com."
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
        city = ""
        while not city:
            answer = yield Input(CITY_PROMPT)
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


#: The flow's start, for ``--flow flows.weather:WeatherFlow`` (the default).
WeatherFlow = AskCity


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

    def run(self) -> Steps:
        yield Print(found(self.place))
        try:
            weather: Weather = yield Call(
                current_weather, self.place.latitude, self.place.longitude
            )
        except ServiceUnavailable:
            yield Print(UNAVAILABLE)
            return AskCity()
        yield Print(f"Current temperature is {weather.temperature} °C")
        yield Print(conditions(weather))
        return AskAgain()


@dataclass(frozen=True)
class AskAgain(State):
    """Another city, or the end (also when left unanswered for `IDLE_MINUTES`)."""

    def run(self) -> Steps:
        minutes = IDLE_MINUTES
        try:
            choice = yield Choose(NEXT_PROMPT, ["continue", "quit"], timeout=minutes * 60)
        except Timeout:
            yield Print(stopped(minutes))
            return None
        if choice == "quit":
            yield Print(TERMINATING)
            return None
        return AskCity()
