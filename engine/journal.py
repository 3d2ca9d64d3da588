"""What the scheduler tells a journal, and the journal that keeps nothing.

A conversation is deterministic given the values sent into its generator, so
a journal only has to keep, per conversation, its latest state snapshot and
the values sent in since; replaying them into a fresh generator rebuilds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.commands import Call, Command
from engine.states import State


def fingerprint(command: Command) -> str:
    """What must stay the same for a recorded value to answer `command` again.

    A ``Call`` is named by its function, not its arguments: an argument such
    as a session object has no stable text, and the function says enough.
    """
    if isinstance(command, Call):
        module = getattr(command.fn, "__module__", None) or "?"
        return f"Call {module}.{command.name}"
    return repr(command)


@dataclass(slots=True)
class Step:
    """A value (or an exception) sent into a generator in answer to a command."""

    fingerprint: str
    value: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class Saved:
    """An unfinished conversation as the journal kept it."""

    key: str
    state_class: str
    state_fields: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    mailbox: list[str] = field(default_factory=list)


class Journal:
    """The journal interface, and the in-memory engine's: it keeps nothing.

    The scheduler calls these on its thread, inside one transaction per batch
    of inbox events, and calls :meth:`commit` before anything from that batch
    leaves the engine (a message, a ``Call``).
    """

    def entered(self, key: str, state: State) -> None:
        """`key` began `state`: snapshot it; earlier steps are no longer needed."""

    def step(self, key: str, command: Command, value: Any, error: BaseException | None) -> None:
        """`value` (or `error`) is about to be sent in, answering `command`."""

    def queued(self, key: str, text: str) -> None:
        """A message arrived while `key` was busy; it waits in its mailbox."""

    def dequeued(self, key: str) -> None:
        """The oldest message in `key`'s mailbox was taken."""

    def ended(self, key: str) -> None:
        """`key` is over: forget it."""

    def commit(self, source: int | None) -> None:
        """Make the batch durable; `source` is the highest update id it took."""

    def last_source(self) -> int | None:
        """The highest update id ever committed (to skip redelivered updates)."""
        return None

    def unfinished(self) -> Iterator[Saved]:
        """Every conversation to rebuild after a restart."""
        return iter(())

    def close(self) -> None:
        """Release the file."""
