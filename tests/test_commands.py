"""Commands: as plain values, and fulfilled by the real scheduler.

Each command is checked twice: as the frozen value a flow yields (what a
step-level test compares against), and end to end through a running
:class:`Scheduler` with a :class:`RecordingFrontend`, which is how a user
meets it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from engine import Call, Choose, Input, Print, Sleep, State, UnsupportedCommand
from engine.commands import Cancelled, Command, Output
from engine.frontend import Notice
from engine.states import Steps
from engine.testing import RecordingFrontend
from tests.support.engine import Engine, FakeClock, round_trip

pytestmark = pytest.mark.usefixtures("no_engine_threads")

StartEngine = Callable[..., Engine]


def add(a: int, b: int, *, times: int = 1) -> int:
    return (a + b) * times


def refuse(reason: str) -> None:
    raise LookupError(reason)


class Shelf:
    def fetch(self) -> str:
        return "book"


@dataclass(frozen=True, slots=True)
class Shout(Command):
    """A command no frontend here knows."""

    text: str


@dataclass(frozen=True, slots=True)
class Photo(Output):
    """An output command that :class:`PhotoFrontend` declares in ``extra_commands``."""

    url: str


class PhotoFrontend(RecordingFrontend):
    name = "photo"
    extra_commands = (Photo,)

    def __init__(self) -> None:
        super().__init__()
        self.delivered: list[tuple[str, Command]] = []

    def deliver(self, key: str, command: Command, receipt: int | None = None) -> None:
        self.delivered.append((key, command))
        super().deliver(key, command)


class WatchingFrontend(RecordingFrontend):
    """Also writes down ``working`` (a Call or Sleep began) as ``working: <type>``."""

    def working(self, key: str, command: Command) -> None:
        self._write(key, [f"working: {type(command).__name__}"])


# -- the values ---------------------------------------------------------------


def test_commands_compare_by_value_and_are_frozen() -> None:
    assert Print("hi") == Print("hi")
    assert Print("hi") != Print("ho")
    assert Input() == Input(None)
    assert Input("Name? ") != Input("Age? ")
    assert Sleep(1.5) == Sleep(1.5)
    assert Choose("Go?", ["a", "b"]) == Choose("Go?", ("a", "b"))
    assert Print("hi") != Input("hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Print("hi").text = "ho"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Choose("Go?", ["a"]).options = ("b",)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Call(add, 1, 2).args = ()  # type: ignore[misc]


def test_choose_keeps_its_options_as_a_tuple() -> None:
    question = Choose("Pick", (option for option in ["red", "green"]))
    assert question.options == ("red", "green")
    assert question.prompt == "Pick"


def test_choose_needs_an_option() -> None:
    with pytest.raises(ValueError, match="at least one option"):
        Choose("Pick", [])


@pytest.mark.parametrize(
    ("answer", "option"),
    [
        ("Yes", "Yes"),
        ("yes", "Yes"),
        ("YES", "Yes"),
        ("  yes \t", "Yes"),
        ("no", "No"),
        ("0", "Yes"),
        ("1", "No"),
        (" 1 ", "No"),
        ("STRASSE", "Straße"),  # case-folded, not only lower-cased
    ],
)
def test_choose_matches_an_option_by_text_or_number(answer: str, option: str) -> None:
    assert Choose("Continue?", ["Yes", "No", "Straße"]).match(answer) == option


@pytest.mark.parametrize("answer", ["", "  ", "maybe", "ye", "yes no", "3", "-1", "1.0", "one"])
def test_choose_matches_nothing_else(answer: str) -> None:
    assert Choose("Continue?", ["Yes", "No", "Later"]).match(answer) is None


def test_choose_refuses_options_that_clash_with_answering_by_number() -> None:
    with pytest.raises(ValueError, match=r"^Choose option '1' is a bare number"):
        Choose("How many?", ["1", "2", "3"])
    assert Choose("How many?", ["1 day", "2 days"]).match("1") == "2 days"


def test_choose_refuses_options_equal_ignoring_case() -> None:
    with pytest.raises(ValueError, match=r"^Choose options 'Red' and 'RED ' are the same"):
        Choose("Colour?", ["Red", "RED "])


def test_choose_ignores_blanks_around_an_option_and_returns_it_as_written() -> None:
    assert Choose("Go?", ["  Later "]).match("later") == "  Later "


def test_choose_numbers_its_options_from_zero() -> None:
    assert Choose("Go?", ["continue", "quit"]).numbered() == ["0) continue", "1) quit"]


def test_call_runs_its_function_with_its_arguments() -> None:
    call = Call(add, 2, 3, times=10)
    assert call.args == (2, 3)
    assert call.kwargs == {"times": 10}
    assert call.run() == 50
    with pytest.raises(LookupError, match="gone"):
        Call(refuse, "gone").run()


def test_call_compares_function_and_arguments() -> None:
    assert Call(add, 1, 2) == Call(add, 1, 2)
    assert Call(add, 1, 2, times=3) == Call(add, 1, 2, times=3)
    assert Call(add, 1, 2, times=3) != Call(add, 1, 2, times=4)
    assert Call(add, 1, 2) != Call(add, 2, 1)
    assert Call(add, 1, 2) != Call(refuse, 1, 2)
    assert Call(add, 1, 2, times=3) in {Call(add, 1, 2, times=3)}  # hashable despite kwargs


def test_call_is_named_by_the_qualified_name_of_its_function() -> None:
    assert Call(add).name == "add"
    assert Call(Shelf().fetch).name == "Shelf.fetch"
    assert Call(str.upper, "x").name == "str.upper"
    assert repr(Call(add, 1, "two", times=3)) == "Call(add, 1, 'two', times=3)"
    assert repr(Call(Shelf().fetch)) == "Call(Shelf.fetch)"


def test_unsupported_command_names_the_command_and_the_frontend() -> None:
    error = UnsupportedCommand(Shout("hey"), "terminal")
    assert isinstance(error, TypeError)
    assert str(error) == "Shout is not supported by the terminal frontend: Shout(text='hey')"
    assert error.command == Shout("hey")
    assert error.frontend == "terminal"


def test_cancelled_passes_through_except_exception() -> None:
    assert issubclass(Cancelled, BaseException)
    assert not issubclass(Cancelled, Exception)


# -- through the scheduler -------------------------------------------------------


@dataclass
class Chatter(State):
    """Prints twice, shows what a Print resumes with, then ends."""

    def run(self) -> Steps:
        yield Print("one")
        resumed = yield Print("two\nthree")
        yield Print(f"a Print resumes with {resumed!r}")
        return None


def test_print_is_delivered_in_order(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Chatter)
    scheduler.begin("ann")
    assert frontend.wait_for("ann", "ended") == [
        "bot: one",
        "bot: two",
        "bot: three",
        "bot: a Print resumes with None",
        "ended",
    ]
    assert scheduler.running() == 0


@dataclass
class Echo(State):
    prompt: str | None = "Say something:"

    def run(self) -> Steps:
        text = yield Input(self.prompt)
        yield Print(f"you said {text!r}")
        return None


def test_input_resumes_with_the_text_as_typed(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Echo)
    scheduler.begin("ann")
    frontend.wait_for("ann", "bot: Say something:")
    assert frontend.asked["ann"] == Input("Say something:")
    assert scheduler.running() == 1
    scheduler.send("ann", "  Hello, World!  ")
    assert frontend.wait_for("ann", "ended") == [
        "bot: Say something:",
        "bot: you said '  Hello, World!  '",
        "ended",
    ]


def test_input_without_a_prompt_is_still_asked(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(lambda: Echo(prompt=None))
    scheduler.begin("ann")
    frontend.wait_until(lambda: "ann" in frontend.asked)
    assert frontend.asked["ann"] == Input(None)
    assert frontend.lines("ann") == []
    scheduler.send("ann", "hi")
    assert frontend.wait_for("ann", "ended") == ["bot: you said 'hi'", "ended"]


@dataclass
class Pick(State):
    def run(self) -> Steps:
        choice = yield Choose("Continue?", ["Yes", "No"])
        yield Print(f"chose {choice!r}")
        return None


QUESTION = ["bot: Continue?", "bot: 0) Yes", "bot: 1) No"]


@pytest.mark.parametrize(
    ("answer", "option"),
    [("Yes", "Yes"), ("  yES ", "Yes"), ("no", "No"), ("0", "Yes"), ("1", "No"), (" 1\n", "No")],
)
def test_choose_takes_an_option_by_text_or_number(
    start_engine: StartEngine, answer: str, option: str
) -> None:
    scheduler, frontend = start_engine(Pick)
    scheduler.begin("ann")
    frontend.wait_for("ann", "bot: 1) No")
    assert frontend.asked["ann"] == Choose("Continue?", ["Yes", "No"])
    scheduler.send("ann", answer)
    assert frontend.wait_for("ann", "ended") == [*QUESTION, f"bot: chose {option!r}", "ended"]


def test_choose_asks_again_until_an_answer_names_an_option(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Pick)
    scheduler.begin("ann")
    frontend.wait_for("ann", "bot: 1) No")
    for wrong in ["maybe", "2", "-1", "", "yes please"]:
        scheduler.send("ann", wrong)
    scheduler.send("ann", "NO")
    try_again = ["bot: Try again", *QUESTION]
    assert frontend.wait_for("ann", "ended") == [
        *QUESTION,
        *try_again * 5,
        "bot: chose 'No'",
        "ended",
    ]


@dataclass
class Calculator(State):
    """Adds in a Call, then catches the exception of a second Call."""

    trail: list[str]

    def run(self) -> Steps:
        total = yield Call(add, 2, 3, times=10)
        yield Print(f"total {total}")
        try:
            yield Call(self.where_am_i)
            yield Call(refuse, "no such thing")
            yield Print("not reached")
        except LookupError as error:
            yield Print(f"caught {type(error).__name__}: {error}")
        return None

    def where_am_i(self) -> None:
        self.trail.append(threading.current_thread().name)


def test_call_returns_its_value_or_raises_at_the_yield(start_engine: StartEngine) -> None:
    trail: list[str] = []
    scheduler, frontend = start_engine(lambda: Calculator(trail), WatchingFrontend())
    scheduler.begin("ann")
    assert frontend.wait_for("ann", "ended") == [
        "working: Call",
        "bot: total 50",
        "working: Call",
        "working: Call",
        "bot: caught LookupError: no such thing",
        "ended",
    ]
    assert len(trail) == 1
    assert trail[0].startswith("engine-worker-")


@dataclass
class Napper(State):
    seconds: float

    def run(self) -> Steps:
        yield Print("before")
        resumed = yield Sleep(self.seconds)
        yield Print(f"after, with {resumed!r}")
        return None


def test_sleep_resumes_with_none_once_that_long_has_passed(start_engine: StartEngine) -> None:
    clock = FakeClock()
    scheduler, frontend = start_engine(lambda: Napper(0.2), WatchingFrontend(), clock=clock)
    scheduler.begin("ann")
    frontend.wait_for("ann", "working: Sleep")
    clock.advance(0.19)
    round_trip(scheduler, frontend)
    assert frontend.lines("ann") == ["bot: before", "working: Sleep"]
    clock.advance(0.01)
    round_trip(scheduler, frontend)
    assert frontend.wait_for("ann", "ended") == [
        "bot: before",
        "working: Sleep",
        "bot: after, with None",
        "ended",
    ]


#: Gates by id, for states that wait on one.
GATES: dict[int, threading.Event] = {}


@dataclass
class Waiter(State):
    """Blocks a worker in a Call until the gate named `gate` is set."""

    gate: int  # a key of GATES: a state's fields are plain data

    def run(self) -> Steps:
        opened = yield Call(GATES[self.gate].wait, 10)
        yield Print(f"gate opened: {opened}")
        return None


def test_sleep_does_not_hold_a_worker(
    start_engine: StartEngine, gates: Callable[[], threading.Event]
) -> None:
    gate = gates()
    GATES[id(gate)] = gate
    made = itertools.count()
    clock = FakeClock()
    scheduler, frontend = start_engine(
        lambda: Waiter(id(gate)) if next(made) == 0 else Napper(0.3),
        WatchingFrontend(),
        workers=1,
        clock=clock,
    )
    scheduler.begin("busy")
    frontend.wait_for("busy", "working: Call")
    # The only worker is stuck; a hundred sleeps still run side by side.
    sleepers = [f"sleeper-{n}" for n in range(100)]
    for key in sleepers:
        scheduler.begin(key)
    round_trip(scheduler, frontend)
    clock.advance(0.3)
    round_trip(scheduler, frontend)
    frontend.wait_until(lambda: all("ended" in frontend.log.get(key, []) for key in sleepers))
    assert frontend.lines("sleeper-7")[-2:] == ["bot: after, with None", "ended"]
    assert frontend.lines("busy") == ["working: Call"]
    gate.set()
    opened = ["working: Call", "bot: gate opened: True", "ended"]
    assert frontend.wait_for("busy", "ended") == opened


@dataclass
class Shouter(State):
    catch: bool

    def run(self) -> Steps:
        try:
            yield Shout("hey")
            yield Print("not reached")
        except UnsupportedCommand as error:
            if not self.catch:
                raise
            yield Print(f"caught: {error}")
        yield Print("still here")
        return None


def test_an_unsupported_command_raises_at_the_yield(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(lambda: Shouter(catch=True))
    scheduler.begin("ann")
    assert frontend.wait_for("ann", "ended") == [
        "bot: caught: Shout is not supported by the recording frontend: Shout(text='hey')",
        "bot: still here",
        "ended",
    ]


def test_an_unsupported_command_left_uncaught_ends_that_conversation(
    start_engine: StartEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="engine")
    scheduler, frontend = start_engine(lambda: Shouter(catch=False))
    scheduler.begin("ann")
    assert frontend.wait_for("ann", "ended") == [f"bot: {Notice.FAILED.value}", "ended"]
    assert scheduler.running() == 0
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is UnsupportedCommand]
    assert len(failures) == 1
    assert "ann" in failures[0].getMessage()
    assert "Shout is not supported by the recording frontend" in caplog.text


@dataclass
class Photographer(State):
    def run(self) -> Steps:
        resumed = yield Photo("https://example.org/cat.jpg")
        yield Print(f"sent, resumed with {resumed!r}")
        return None


def test_extra_commands_of_a_frontend_are_delivered(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Photographer, PhotoFrontend())
    scheduler.begin("ann")
    assert frontend.wait_for("ann", "ended") == [
        "bot: Photo(url='https://example.org/cat.jpg')",
        "bot: sent, resumed with None",
        "ended",
    ]
    assert isinstance(frontend, PhotoFrontend)
    assert frontend.delivered[0] == ("ann", Photo("https://example.org/cat.jpg"))


def test_extra_commands_of_one_frontend_are_unsupported_by_another(
    start_engine: StartEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="engine")
    scheduler, frontend = start_engine(Photographer)
    scheduler.begin("ann")
    assert frontend.wait_for("ann", "ended") == [f"bot: {Notice.FAILED.value}", "ended"]
