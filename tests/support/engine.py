"""Helpers for tests that run the engine's scheduler (used by ``tests/conftest.py``)."""

from __future__ import annotations

import threading
from typing import Any

from engine.scheduler import Scheduler
from engine.testing import RecordingFrontend

#: A started scheduler and the frontend it talks to.
Engine = tuple[Scheduler, RecordingFrontend]


class FakeClock:
    """A monotonic clock that moves only when told: timers in tests, with no wall-time bounds."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on; a :func:`round_trip` then lets the scheduler see it."""
        self.now += seconds


def round_trip(scheduler: Scheduler, frontend: RecordingFrontend) -> None:
    """Wait until the scheduler has handled every event posted so far.

    The inbox is first in, first out, and a batch's messages leave only after
    its due timers fired; so once the probe's reply is out, so is the rest.
    The flow must answer "probe"'s message (begun or not: a conversation that
    was not begun gets the "not started" notice).
    """
    before = len(frontend.lines("probe"))
    scheduler.send("probe", "anyone there?")
    frontend.wait_until(lambda: len(frontend.log.get("probe", [])) > before)


def engine_threads() -> list[str]:
    """Names of the engine's threads still alive (scheduler and workers)."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("engine-"))


_HELD: dict[int, Any] = {}


class Held:
    """A live test object (an Event, a function) that a state can keep as a field.

    A state's fields must be plain data, since they are saved at every state
    boundary; a test that wants to steer its flow from outside keeps the
    object here and the state holds this stand-in, which is saved by number
    and passes attribute access and calls through.
    """

    def __init__(self, thing: Any) -> None:
        self.number = id(thing)
        _HELD[self.number] = thing

    def __getattr__(self, name: str) -> Any:
        return getattr(_HELD[self.__dict__["number"]], name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _HELD[self.number](*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_held, (self.number,))


def _held(number: int) -> Any:
    held = Held.__new__(Held)
    held.number = number
    return held


def held(thing: Any) -> Any:
    """`thing`, as something a state can keep as a field (see :class:`Held`)."""
    return Held(thing)


#: The tables of format 2, the format before timers had deadlines.
FORMAT_2 = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE conversations (
    key TEXT PRIMARY KEY, state_class TEXT NOT NULL, state_fields BLOB NOT NULL,
    since INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE batches (id INTEGER PRIMARY KEY, steps BLOB NOT NULL);
CREATE TABLE mailbox (key TEXT PRIMARY KEY, texts BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE outgoing (
    receipt INTEGER PRIMARY KEY, key TEXT NOT NULL, kind TEXT NOT NULL, item BLOB NOT NULL
);
PRAGMA user_version = 2;
"""


class Confirming(RecordingFrontend):
    """Sends in the background, as the Telegram bot does: confirms outputs only when told."""

    confirms_delivery = True

    def __init__(self) -> None:
        super().__init__()
        self.receipts: list[int] = []

    def deliver(self, key: str, command: Any, receipt: int | None = None) -> None:
        """Write it down and keep its receipt until :meth:`confirm_all`."""
        assert receipt is not None
        self.receipts.append(receipt)
        super().deliver(key, command)

    def ask(self, key: str, question: Any, receipt: int | None = None) -> None:
        """Write it down and keep its receipt until :meth:`confirm_all`."""
        assert receipt is not None
        self.receipts.append(receipt)
        super().ask(key, question)

    def confirm_all(self) -> None:
        """Confirm every output so far, as a sender would once Telegram took them."""
        for receipt in self.receipts:
            self.sent(receipt)
        self.receipts.clear()
