"""Commands: the plain-data requests a flow yields.

A flow never does anything itself. It yields one of these values and the
engine (or a test) fulfils it and sends the outcome back in. Because they are
frozen, slotted dataclasses they compare by value, so a test can write::

    assert next(flow) == Input("Name a city: ")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Command:
    """Base class of everything a flow may yield."""


@dataclass(frozen=True, slots=True)
class Output(Command):
    """Base class of commands that only show something and resume with ``None``.

    Outputs are not journaled: after a restart they were shown already, so
    replay resumes them without showing them again.
    """


@dataclass(frozen=True, slots=True)
class Print(Output):
    """Show `text` to the user. Resumes with ``None``."""

    text: str

    def __post_init__(self) -> None:
        _require_text("Print", "text", self.text)


@dataclass(frozen=True, slots=True)
class Input(Command):
    """Ask for a line of text. Resumes with the ``str`` the user typed.

    With a `timeout` (seconds), the ``yield`` raises :class:`Timeout` when
    that much time passes with no answer.
    """

    prompt: str | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.prompt is not None:
            _require_text("Input", "prompt", self.prompt)
        _check_timeout("Input", self.timeout)

    def accept(self, answer: str) -> str | None:
        """The value an answer sends into the flow (any text), or ``None`` if refused."""
        return answer

    def __repr__(self) -> str:
        timed = "" if self.timeout is None else f", timeout={self.timeout!r}"
        return f"Input(prompt={self.prompt!r}{timed})"

    def __setstate__(self, state: list[Any]) -> None:
        _set_fields(self, state)


@dataclass(frozen=True, slots=True, init=False)
class Choose(Command):
    """Ask the user to pick one of `options`. Resumes with exactly one of them.

    The engine validates answers (see :meth:`match`) and re-asks on anything
    else, so a flow never sees an answer that is not one of its options.
    """

    prompt: str
    options: tuple[str, ...]
    timeout: float | None = None

    def __init__(
        self, prompt: str, options: Iterable[str], timeout: float | None = None
    ) -> None:
        _require_text("Choose", "prompt", prompt)
        _check_timeout("Choose", timeout)
        if isinstance(options, str):
            raise TypeError(f"Choose takes a list of options, got the text {options!r}")
        options = tuple(options)
        if not options:
            raise ValueError("Choose needs at least one option")
        seen: dict[str, str] = {}
        for option in options:
            _require_text("Choose", "option", option)
            if option.strip().isdigit():
                raise ValueError(
                    f"Choose option {option!r} is a bare number, which would clash with "
                    "answering by number: write it as words, e.g. '3 days'"
                )
            folded = option.strip().casefold()
            if folded in seen:
                raise ValueError(
                    f"Choose options {seen[folded]!r} and {option!r} are the same ignoring "
                    "case, so an answer could not tell them apart"
                )
            seen[folded] = option
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "timeout", timeout)

    def __repr__(self) -> str:
        timed = "" if self.timeout is None else f", timeout={self.timeout!r}"
        return f"Choose(prompt={self.prompt!r}, options={self.options!r}{timed})"

    def __setstate__(self, state: list[Any]) -> None:
        _set_fields(self, state)

    def accept(self, answer: str) -> str | None:
        """The option an answer names, or ``None`` (see :meth:`match`)."""
        return self.match(answer)

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
        if not callable(fn):
            raise TypeError(
                f"Call needs a function to call, got {type(fn).__name__} {fn!r}: pass the "
                "function and its arguments, Call(fn, arg), not the result of fn(arg)"
            )
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

    def __post_init__(self) -> None:
        seconds = self.seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(
                f"Sleep takes a number of seconds, got {type(seconds).__name__} {seconds!r}"
            )
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"Sleep takes a finite, non-negative number of seconds, got {seconds}")


class Timeout(Exception):
    """Raised inside a flow, at a question's ``yield``, when its `timeout` passed unanswered.

    An ordinary ``Exception``: the flow catches it to remind and ask again,
    take a default, or end. `seconds` is the question's timeout.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds

    def __str__(self) -> str:
        return f"no answer within {self.seconds:g} s"


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


def _check_timeout(command: str, timeout: object) -> None:
    """A question's timeout is ``None`` or a finite number of seconds above zero."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"{command} timeout takes a number of seconds, got {type(timeout).__name__} "
            f"{timeout!r}"
        )
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"{command} timeout must be a finite number of seconds above 0, "
                         f"got {timeout}")


def _set_fields(command: Command, state: list[Any]) -> None:
    """Unpickle `command`'s fields; fields added since it was pickled take their defaults.

    Questions are kept pickled in the state file (unsent outputs), so one
    pickled before a field such as ``timeout`` existed must still load.
    """
    for index, spec in enumerate(fields(command)):
        value = state[index] if index < len(state) else spec.default
        object.__setattr__(command, spec.name, value)


def _require_text(command: str, what: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(
            f"{command} {what} must be text (a str), got {type(value).__name__} {value!r}; "
            f"write str(...) or an f-string"
        )
