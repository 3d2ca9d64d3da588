"""Commands: the plain-data requests a flow yields.

A flow never does anything itself. It yields one of these values and the
engine (or a test) fulfils it and sends the outcome back in. Because they are
frozen, slotted dataclasses they compare by value, so a test can write::

    assert next(flow) == Input("Name a city: ")
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields
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


@dataclass(frozen=True, slots=True, init=False)
class Print(Output):
    """Show `text` to the user. Resumes with ``None``."""

    text: str

    def __init__(self, text: str) -> None:
        # Made at every line a flow shows, so written by hand: a slot set
        # through its descriptor, one test. The frozen dataclass's own
        # ``__init__`` (``object.__setattr__``) plus a ``__post_init__``
        # measured 4,050 instructions per Print; this, 2,700 (callgrind).
        if type(text) is not str:
            _require_text("Print", "text", text)
        _set_print_text(self, text)


def _slot_setter(cls: type, name: str) -> Callable[[object, Any], None]:
    """What sets slot `name` of a frozen `cls` in a hand-written ``__init__``: its descriptor's."""
    setter: Callable[[object, Any], None] = cls.__dict__[name].__set__
    return setter


_set_print_text = _slot_setter(Print, "text")


# -- answers that are not text ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """Base class of answers that are not text: a shared location, a photo.

    A question says which kinds it takes (``accepts=``); a frontend turns
    what its user sent into one of these plain values, never a frontend
    object, and hands it to ``Scheduler.send``. More kinds (a contact, a
    document) are more subclasses: flows that do not ask for them never see
    them.
    """


_COORDINATES = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*(?:[,;]\s*|\s+)([+-]?\d+(?:\.\d+)?)\s*")


@dataclass(frozen=True, slots=True)
class Location(Answer):
    """A point on Earth, in degrees: a shared location, or typed as ``51.5, -0.12``."""

    latitude: float
    longitude: float

    def __post_init__(self) -> None:
        for what, limit in (("latitude", 90), ("longitude", 180)):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"Location {what} must be a number, got {type(value).__name__} {value!r}"
                )
            if not (math.isfinite(value) and -limit <= value <= limit):
                raise ValueError(f"Location {what} must be from -{limit} to {limit}, got {value}")
            object.__setattr__(self, what, float(value))

    @classmethod
    def parse(cls, text: str) -> Location | None:
        """The location typed as ``latitude, longitude`` in `text`, or ``None`` if it is not one.

        Raises ``ValueError`` for two numbers that are not a point on Earth
        (a latitude beyond 90, a longitude beyond 180).
        """
        found = _COORDINATES.fullmatch(text)
        if found is None:
            return None
        return cls(float(found[1]), float(found[2]))

    def __str__(self) -> str:
        return f"{self.latitude!r}, {self.longitude!r}"


@dataclass(frozen=True, slots=True)
class Photo(Answer):
    """A photo the user sent: the image file's bytes (a ``Call`` can read them), and its caption."""

    data: bytes = field(repr=False)
    caption: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise TypeError(f"Photo data must be bytes, got {type(self.data).__name__}")
        if self.caption is not None:
            _require_text("Photo", "caption", self.caption)

    def __str__(self) -> str:
        caption = f" {self.caption}" if self.caption else ""
        return f"<photo{caption}, {len(self.data)} bytes>"


#: What a question takes by default: text (``str``).
TEXT: tuple[type, ...] = (str,)

#: The kinds of answer a question may take: ``str`` and the :class:`Answer` kinds.
AnswerKinds = tuple[type, ...]


@dataclass(frozen=True, init=False)
class Input(Command):
    """Ask for a line of text. Resumes with the ``str`` the user typed.

    `accepts` names the kinds of answer it takes, e.g. ``accepts=(str,
    Location)`` for a city name or a shared location; it then resumes with
    whichever came (a typed ``51.5, -0.12`` comes as a :class:`Location`).
    An answer of another kind gets a hint and the question stays pending.
    With a `timeout` (seconds), the ``yield`` raises :class:`Timeout` when
    that much time passes with no answer.
    """

    # Made at every question a flow asks, so kept cheap: `prompt` is a slot,
    # set through its descriptor; `timeout` and `accepts` are class-level
    # defaults, set on the instance (its __dict__, made only then) only
    # when given. Three slot sets cost ~1,300 instructions more per Input
    # than one, and the two reads of a default ~250 (callgrind). The
    # defaults stay declared: an Input pickled before a field existed is
    # read back with its default (see _set_fields).
    __slots__ = ("__dict__", "prompt")
    prompt: str | None
    timeout: float | None = None
    accepts: AnswerKinds = field(default=TEXT, kw_only=True)

    def __init__(
        self,
        prompt: str | None = None,
        timeout: float | None = None,
        *,
        accepts: AnswerKinds = TEXT,
    ) -> None:
        # Written by hand like Print's: the common case is one slot set and
        # three tests. The frozen dataclass's ``__init__`` plus a
        # ``__post_init__`` measured 7,200 instructions per Input; three slot
        # sets 4,500; this, 3,200 (callgrind).
        if type(prompt) is not str and prompt is not None:
            _require_text("Input", "prompt", prompt)
        _set_input_prompt(self, prompt)
        if timeout is not None:
            _check_timeout("Input", timeout)
            object.__setattr__(self, "timeout", timeout)
        if accepts is not TEXT:
            object.__setattr__(self, "accepts", _answer_kinds("Input", accepts, empty=False))

    def __repr__(self) -> str:
        # accepts and timeout only when given: the text is an Input's fingerprint in state files
        accepts = "" if self.accepts is TEXT else f", accepts={_kinds_text(self.accepts)}"
        timed = "" if self.timeout is None else f", timeout={self.timeout!r}"
        return f"Input(prompt={self.prompt!r}{accepts}{timed})"

    def accept(self, answer: object) -> Any:
        """The value an answer sends into the flow, or ``None`` if refused."""
        if self.accepts is TEXT:
            return answer if isinstance(answer, str) else None
        return _take(self.accepts, answer)

    def __getstate__(self) -> list[Any]:
        # The field values in order, as the slotted dataclass it was pickled
        # them: state files keep questions, and both releases read both.
        return [self.prompt, self.timeout, self.accepts]

    def __setstate__(self, state: list[Any]) -> None:
        _set_fields(self, state)


_set_input_prompt = _slot_setter(Input, "prompt")


@dataclass(frozen=True, slots=True, init=False)
class Choose(Command):
    """Ask the user to pick one of `options`. Resumes with exactly one of them.

    The engine validates answers (see :meth:`match`) and re-asks on anything
    else, so a flow never sees an answer that is not one of its options.
    `accepts` names kinds of answer taken besides the options: ``(str,)``
    for any text ("or type a new city"), ``(Location,)`` for a shared
    location; by default none.
    """

    prompt: str
    options: tuple[str, ...]
    timeout: float | None = None
    accepts: AnswerKinds = ()

    def __init__(
        self,
        prompt: str,
        options: Iterable[str],
        timeout: float | None = None,
        *,
        accepts: AnswerKinds = (),
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
        object.__setattr__(self, "accepts", _answer_kinds("Choose", accepts, empty=True))

    def __setstate__(self, state: list[Any]) -> None:
        _set_fields(self, state)

    def accept(self, answer: object) -> Any:
        """The option an answer names (see :meth:`match`), else one of `accepts`, else ``None``."""
        if isinstance(answer, str):
            option = self.match(answer)
            if option is not None:
                return option
        return _take(self.accepts, answer) if self.accepts else None

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

    def __repr__(self) -> str:
        # accepts and timeout only when given: the text is a Choose's fingerprint in state files
        accepts = f", accepts={_kinds_text(self.accepts)}" if self.accepts else ""
        timed = "" if self.timeout is None else f", timeout={self.timeout!r}"
        return f"Choose(prompt={self.prompt!r}, options={self.options!r}{accepts}{timed})"

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


@dataclass(frozen=True, slots=True)
class User:
    """Who a conversation is with, as the frontend knows them (plain data).

    `id` is stable per user (Telegram's user id, the terminal's login name);
    `name` is for greeting; `language` an IETF code such as ``"en"`` or
    ``"pt-BR"`` when known; `private` is false in a group chat; `start` the
    payload of the deep link that started the conversation
    (``t.me/<bot>?start=berlin`` gives ``"berlin"``), else ``None``.
    """

    id: str
    name: str
    language: str | None = None
    private: bool = True
    start: str | None = None

    def __post_init__(self) -> None:
        _require_text("User", "id", self.id)
        _require_text("User", "name", self.name)
        for what in ("language", "start"):
            value = getattr(self, what)
            if value is not None:
                _require_text("User", what, value)
        if not isinstance(self.private, bool):
            raise TypeError(f"User private must be True or False, got {self.private!r}")


@dataclass(frozen=True, slots=True)
class Who(Command):
    """Ask the frontend who the conversation is with. Resumes with a :class:`User`."""


#: The most a user's memory may take, pickled: small data, not files.
MEMORY_LIMIT = 16 * 1024


@dataclass(frozen=True, slots=True)
class Recall(Command):
    """Read what was remembered for this user. Resumes with a ``dict`` (empty at first)."""


@dataclass(frozen=True, slots=True)
class Remember(Command):
    """Keep `data` for this user, replacing what was kept; it outlives the conversation.

    `data` is a ``dict`` of plain data (text, numbers, booleans, ``None``,
    and lists, tuples and dicts of them), at most :data:`MEMORY_LIMIT`
    bytes pickled: anything else fails right here, where it is built.
    Resumes with ``None``.
    """

    data: dict[str, Any] = field(hash=False)
    blob: bytes = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.data, dict):
            raise TypeError(f"Remember takes a dict, got {type(self.data).__name__} {self.data!r}")
        _require_plain(self.data, "data")
        blob = pickle.dumps(self.data, pickle.HIGHEST_PROTOCOL)
        if len(blob) > MEMORY_LIMIT:
            raise ValueError(
                f"Remember takes at most {MEMORY_LIMIT} bytes of data per user, got "
                f"{len(blob)}: keep less (the last few places, not every one)"
            )
        object.__setattr__(self, "blob", blob)


@dataclass(frozen=True, slots=True)
class Forget(Command):
    """Forget everything remembered for this user. Resumes with ``None``."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, slots=True)
class Picture(Output):
    """Show an image: `png` is a PNG file's bytes, `caption` optional text under it.

    Like a message, it is sent again after a crash until the frontend
    confirms it. Resumes with ``None``.
    """

    png: bytes = field(repr=False)
    caption: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.png, bytes):
            raise TypeError(f"Picture png must be bytes, got {type(self.png).__name__}")
        if not self.png.startswith(_PNG_SIGNATURE):
            raise ValueError("Picture png must be a PNG file's bytes (it lacks the PNG signature)")
        if self.caption is not None:
            _require_text("Picture", "caption", self.caption)

    def __repr__(self) -> str:
        return f"Picture({len(self.png)} bytes, caption={self.caption!r})"


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
        on_class = getattr(type(command), spec.name, MISSING)
        # A slot (a descriptor on the class) is always set; a class-level
        # default (Input's) only when the value differs, so an unpickled
        # Input's ``accepts`` is TEXT itself again and takes the fast path.
        if hasattr(on_class, "__set__") or on_class != value:
            object.__setattr__(command, spec.name, value)


def _require_text(command: str, what: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(
            f"{command} {what} must be text (a str), got {type(value).__name__} {value!r}; "
            f"write str(...) or an f-string"
        )


def _answer_kinds(command: str, accepts: object, *, empty: bool) -> AnswerKinds:
    """`accepts` as a tuple of answer kinds (one kind alone is allowed), checked."""
    kinds = (accepts,) if isinstance(accepts, type) else accepts
    if not isinstance(kinds, (tuple, list)):
        raise TypeError(
            f"{command} accepts takes answer kinds such as (str, Location), got {accepts!r}"
        )
    result: list[type] = []
    for kind in kinds:
        answer_kind = isinstance(kind, type) and issubclass(kind, Answer) and kind is not Answer
        if not (kind is str or answer_kind):
            raise TypeError(
                f"{command} accepts str or kinds of Answer (Location, Photo), got {kind!r}"
            )
        if kind not in result:
            result.append(kind)
    if not result and not empty:
        raise ValueError(f"{command} must accept at least one kind of answer")
    return TEXT if result == [str] else tuple(result)


def _kinds_text(kinds: AnswerKinds) -> str:
    """``(str, Location)``: answer kinds by name."""
    names = [kind.__name__ for kind in kinds]
    return f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})"


def _take(accepts: AnswerKinds, answer: object) -> Any:
    """`answer` as the value a question taking `accepts` sends in, or ``None``."""
    if isinstance(answer, str):
        if Location in accepts:
            try:
                location = Location.parse(answer)
            except ValueError:  # two numbers, but not a point on Earth
                return None
            if location is not None:
                return location
        return answer if str in accepts else None
    return answer if isinstance(answer, accepts) else None


def takes(question: Command, kind: type) -> bool:
    """Whether `question` (an Input or Choose) takes answers of `kind`.

    A frontend asks this to offer the right thing: ``takes(question,
    Location)`` shows a "Send my location" button.
    """
    accepts: AnswerKinds = getattr(question, "accepts", ())
    return kind in accepts


_PLAIN_LEAVES = (str, int, float, bool, type(None))


def _require_plain(value: object, where: str) -> None:
    """Fail unless `value` is plain data: what survives any change to a flow's code."""
    if isinstance(value, _PLAIN_LEAVES):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"Remember {where} has a key that is not text: {key!r}")
            _require_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for number, item in enumerate(value):
            _require_plain(item, f"{where}[{number}]")
        return
    raise TypeError(
        f"Remember keeps plain data (text, numbers, lists, dicts); {where} is "
        f"{type(value).__name__} {value!r}"
    )
