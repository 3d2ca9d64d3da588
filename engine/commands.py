"""Commands: the plain-data requests a flow yields.

A flow never does anything itself. It yields one of these values and the
engine (or a test) fulfils it and sends the outcome back in. Because they are
frozen, slotted dataclasses they compare by value, so a test can write::

    assert next(flow) == Input("Name a city: ")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Command:
    """Base class of everything a flow may yield."""


@dataclass(frozen=True, slots=True)
class Print(Command):
    """Show `text` to the user. Resumes with ``None``."""

    text: str


@dataclass(frozen=True, slots=True)
class Input(Command):
    """Ask for a line of text. Resumes with the ``str`` the user typed."""

    prompt: str | None = None


@dataclass(frozen=True, slots=True, init=False)
class Choose(Command):
    """Ask the user to pick one of `options`. Resumes with exactly one of them.

    The engine validates answers (see :meth:`match`) and re-asks on anything
    else, so a flow never sees an answer that is not one of its options.
    """

    prompt: str
    options: tuple[str, ...]

    def __init__(self, prompt: str, options: Iterable[str]) -> None:
        options = tuple(options)
        if not options:
            raise ValueError("Choose needs at least one option")
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "options", options)

    def match(self, answer: str) -> str | None:
        """The option `answer` names, or ``None``.

        An answer names an option by its text (case-insensitive, surrounding
        blanks ignored) or by its number as shown (``0`` for the first).
        """
        wanted = answer.strip().casefold()
        for option in self.options:
            if option.strip().casefold() == wanted:
                return option
        if wanted.isascii() and wanted.isdigit() and len(wanted) <= 9:
            number = int(wanted)
            if number < len(self.options):
                return self.options[number]
        return None

    def numbered(self) -> list[str]:
        """The options as a frontend shows them: ``0) continue``, ``1) quit``."""
        return [f"{number}) {option}" for number, option in enumerate(self.options)]


@dataclass(frozen=True, slots=True, init=False)
class Call(Command):
    """Run ``fn(*args, **kwargs)`` outside the flow.

    Resumes with its return value, or raises its exception at the ``yield``,
    so a flow handles failures with a plain ``try/except``. Every side effect
    and every source of non-determinism (HTTP, clocks, randomness, files)
    belongs in a ``Call``: that is what keeps a flow testable without mocks
    and replayable after a restart.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(hash=False)

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)

    @property
    def name(self) -> str:
        """The called function's qualified name, e.g. ``OpenMeteo.search``."""
        return getattr(self.fn, "__qualname__", None) or repr(self.fn)

    def run(self) -> Any:
        """Call the function (on a worker thread, in the engine)."""
        return self.fn(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self.args]
        arguments += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Call({self.name}, {', '.join(arguments)})" if arguments else f"Call({self.name})"


@dataclass(frozen=True, slots=True)
class Sleep(Command):
    """Pause the flow for `seconds` without holding a thread. Resumes with ``None``."""

    seconds: float


class UnsupportedCommand(TypeError):
    """A flow yielded a command the running frontend cannot fulfil."""

    def __init__(self, command: object, frontend: str) -> None:
        super().__init__(
            f"{type(command).__name__} is not supported by the {frontend} frontend: {command!r}"
        )
        self.command = command
        self.frontend = frontend


class Cancelled(BaseException):
    """Raised inside a flow, at its current ``yield``, when it is cancelled.

    It derives from ``BaseException`` (like ``GeneratorExit``) so that a
    flow's ``except Exception`` does not swallow it, while its ``finally`` and
    ``with`` blocks still run.
    """
