"""Tiny flows for the Telegram bot's tests (``--flow tests.support.flows:Echo``)."""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass
from typing import ClassVar

from engine.commands import (
    Call,
    Choose,
    Forget,
    Input,
    Location,
    Photo,
    Picture,
    Print,
    Recall,
    Remember,
    Sleep,
    Timeout,
    Who,
)
from engine.states import State, Steps
from flows import weather
from flows.openmeteo import (
    NameTooLong,
    Place,
    ServiceUnavailable,
    Weather,
    current_weather,
    search_places,
)


def long_text() -> str:
    """10,000 characters in lines of 50: more than two Telegram messages."""
    lines = [f"Line {n:03d}: the quick brown fox jumps over the lazy" for n in range(200)]
    text = "\n".join(lines)
    assert len(text) == 200 * 50 - 1
    return text + "!"


@dataclass(frozen=True)
class LongText(State):
    """Prints one 10,000-character text, then ends."""

    def run(self) -> Steps:
        yield Print(long_text())
        return None


@dataclass(frozen=True)
class Echo(State):
    """Asks once, then echoes every message until "bye"."""

    def run(self) -> Steps:
        text = yield Input("Say something")
        while text != "bye":
            yield Print(f"echo: {text}")
            text = yield Input()
        yield Print("bye")
        return None


@dataclass(frozen=True)
class Slow(State):
    """A Call that takes a second (the bot shows "typing"), then a message."""

    def run(self) -> Steps:
        yield Call(time.sleep, 1.0)
        yield Print("done")
        return None


@dataclass(frozen=True)
class Quick(State):
    """A Call answered at once (no "typing" for it), then a message."""

    def run(self) -> Steps:
        yield Call(len, "abc")
        yield Print("done")
        return None


@dataclass(frozen=True)
class Countdown(State):
    """Prints five messages at once, then waits for an answer."""

    def run(self) -> Steps:
        for n in range(5, 0, -1):
            yield Print(f"count {n}")
        yield Input("Done?")
        return None


@dataclass(frozen=True)
class Nap(State):
    """Asks how many seconds to sleep, sleeps (a ``Sleep``, no thread held), says so.

    Again until "bye".
    """

    def run(self) -> Steps:
        answer = yield Input("How long?")
        while answer != "bye":
            yield Print(f"sleeping {answer} s")
            yield Sleep(float(answer))
            yield Print(f"slept {answer} s")
            answer = yield Input("How long?")
        yield Print("bye")
        return None


@dataclass(frozen=True)
class Hold(State):
    """Echoes like :class:`Echo`, but "hold N" first blocks the engine's thread N seconds.

    A flow must never block (that is what ``Call`` is for); this one does on
    purpose, to stand for an engine that falls behind the updates (a burst,
    a slow disk), so a test can crash the bot while updates wait unjournaled.
    """

    def run(self) -> Steps:
        text = yield Input("Say something")
        while text != "bye":
            if text.startswith("hold "):
                time.sleep(float(text.split()[1]))
            yield Print(f"echo: {text}")
            text = yield Input()
        yield Print("bye")
        return None


def tiny_png() -> bytes:
    """A real 1x1 PNG image (one red pixel): what a Picture shows in the tests."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8 bits, RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte, then one red pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class Visitor(State):
    """Who, Recall, a question taking a place name or a location, Remember, Picture.

    Greets the user by name, says what it knows of them and the places they
    named before, asks where (``forget`` forgets them), remembers the last
    three places and shows a picture captioned with the place.
    """

    def run(self) -> Steps:
        who = yield Who()
        memory = yield Recall()
        places: list[str] = memory.get("places", [])
        yield Print(f"Hello {who.name}")
        private = "private" if who.private else "group"
        yield Print(f"language {who.language}, {private}, start {who.start}")
        if places:
            yield Print(f"Last time: {', '.join(places)}")
        where = yield Input("Where?", accepts=(str, Location))
        if where == "forget":
            yield Forget()
            yield Print("Forgotten")
            return None
        place = f"point {where}" if isinstance(where, Location) else where
        yield Print(f"You said {place}")
        yield Remember({"places": [place, *places][:3]})
        yield Picture(tiny_png(), caption=f"Map of {place}")
        return None


@dataclass(frozen=True)
class Pin(State):
    """A question that takes only a location, then a picture without a caption."""

    def run(self) -> Steps:
        where = yield Input("Share a location", accepts=Location)
        yield Print(f"Pinned {where.latitude} {where.longitude}")
        yield Picture(tiny_png())
        return None


@dataclass(frozen=True)
class Hurry(State):
    """A question with a short deadline, a reminder, then a default; a short nap."""

    def run(self) -> Steps:
        try:
            name = yield Input("Your name? ", timeout=0.2)
        except Timeout:
            yield Print("Still there?")
            try:
                name = yield Input("Your name? ", timeout=0.2)
            except Timeout:
                name = "stranger"
        yield Sleep(0.1)
        yield Print(f"Hello, {name}")
        return None


#: How long :class:`Remind` waits for a name, in seconds: long enough to kill and
#: restart the bot before it passes.
REMIND_AFTER = 6.0


@dataclass(frozen=True)
class Remind(State):
    """A question with a deadline: unanswered, a reminder and the question again, then the end."""

    reminded: bool = False

    def run(self) -> Steps:
        try:
            name = yield Input("What is your name?", timeout=REMIND_AFTER)
        except Timeout:
            if self.reminded:
                yield Print("No answer, goodbye")
                return None
            yield Print("Still there? I would like to know your name.")
            return Remind(reminded=True)
        yield Print(f"Hello, {name}!")
        return None


@dataclass(frozen=True)
class Snapshot(State):
    """Asks for a photo and says how many bytes and what caption it got."""

    def run(self) -> Steps:
        photo = yield Input("Send me a photo", accepts=Photo)
        yield Print(f"Got {len(photo.data)} bytes: {photo.caption}")
        return None


# -- the weather flow as it was before it learnt who, where, memory and pictures -----------
#
# The bot's plumbing tests (ordering, restarts, webhooks, groups) compare whole
# chats message by message; they run this text-only dialogue, so they test the
# plumbing, while tests/test_telegram_flow.py tests the grown weather flow.


@dataclass(frozen=True)
class ClassicWeather(State):
    """``Name a city: `` (text only) -> search -> pick -> weather -> continue/quit."""

    help: ClassVar[str] = weather.WeatherFlow.help

    def run(self) -> Steps:
        city = ""
        while not city:
            city = str((yield Input(weather.CITY_PROMPT)) or "").strip()
        try:
            places: list[Place] = yield Call(search_places, city)
        except NameTooLong:
            yield Print(weather.NAME_TOO_LONG)
            return ClassicWeather()
        except ServiceUnavailable:
            yield Print(weather.UNAVAILABLE)
            return ClassicWeather()
        if not places:
            yield Print(weather.NOTHING_FOUND)
            return ClassicWeather()
        if len(places) == 1:
            return ClassicShow(places[0])
        return ClassicChoose(tuple(places[: weather.MAX_CHOICES]))


@dataclass(frozen=True)
class ClassicChoose(State):
    places: tuple[Place, ...]

    def run(self) -> Steps:
        labels = weather.place_labels(self.places)
        label = yield Choose(weather.PLACE_PROMPT, labels)
        return ClassicShow(self.places[labels.index(label)])


@dataclass(frozen=True)
class ClassicShow(State):
    place: Place

    def run(self) -> Steps:
        yield Print(weather.found(self.place))
        try:
            now: Weather = yield Call(current_weather, self.place.latitude, self.place.longitude)
        except ServiceUnavailable:
            yield Print(weather.UNAVAILABLE)
            return ClassicWeather()
        yield Print(f"Current temperature is {now.temperature} °C")
        yield Print(weather.conditions(now))
        return ClassicAgain()


@dataclass(frozen=True)
class ClassicAgain(State):
    def run(self) -> Steps:
        minutes = weather.IDLE_MINUTES
        try:
            choice = yield Choose(weather.NEXT_PROMPT, ["continue", "quit"], timeout=minutes * 60)
        except Timeout:
            yield Print(weather.stopped(minutes))
            return None
        if choice == "quit":
            yield Print(weather.TERMINATING)
            return None
        return ClassicWeather()


#: ``--flow`` for the plumbing tests (see above).
CLASSIC = "tests.support.flows:ClassicWeather"
