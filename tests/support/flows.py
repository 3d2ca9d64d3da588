"""Tiny flows for the Telegram bot's tests (``--flow tests.support.flows:Echo``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.commands import Call, Input, Print, Sleep
from engine.states import State, Steps


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

