"""Timers: questions with a deadline, Sleeps and idle expiry, on fake clocks, across restarts.

Time is two fake clocks that move only when told: the monotonic one the
scheduler runs its timers on, and the wall clock its deadlines are journaled
in. A restart is a scheduler stopped without ending its conversations (as
``kill -9`` leaves them) and a new one on the same state file, with a new
monotonic clock (a new process) and the wall clock moved on by the downtime.
After moving the clocks, :func:`settle` proves that every timer due has fired
and its output is out: no sleeping, no wall-time bounds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine import Choose, Input, Print, Sleep, State, Timeout
from engine.frontend import Notice
from engine.journal import SqliteJournal
from engine.journals import open_journal
from engine.postgres_journal import PostgresJournal
from engine.scheduler import Scheduler
from engine.states import Flow, Steps
from engine.testing import FlowMismatch, FlowTest, RecordingFrontend, check_transcript

pytestmark = pytest.mark.usefixtures("no_engine_threads")

CANCELLED = f"bot: {Notice.CANCELLED.value}"
TRY_AGAIN = f"bot: {Notice.TRY_AGAIN.value}"


class Clocks:
    """A monotonic clock and a wall clock, both moved only by :meth:`advance`."""

    def __init__(self, wall: float = 1_800_000_000.0, monotonic: float = 500.0) -> None:
        self.wall = wall
        self.monotonic = monotonic

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.monotonic += seconds

    def restarted(self, downtime: float) -> Clocks:
        """The clocks of a new process started `downtime` seconds later."""
        return Clocks(self.wall + downtime, monotonic=7.0)


class Ordered(RecordingFrontend):
    """Also writes down, across all conversations, which key was shown what, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[tuple[str, str]] = []

    def _write(self, key: str, lines: list[str]) -> None:
        with self._changed:
            self.order.extend((key, line) for line in lines)
        super()._write(key, lines)


def settle(scheduler: Scheduler) -> None:
    """Wait until every timer due by now has fired and what it showed is out.

    A posted action runs after its batch commits; timers due fire in that
    batch; so once a second action, posted after the first ran, has run, the
    first batch's outputs are all out.
    """
    for _ in range(2):
        done = threading.Event()
        scheduler.post(done.set)
        assert done.wait(5), "the scheduler did not take a posted action"


# -- flows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask(State):
    """A question with a minute's timeout, then one without."""

    def run(self) -> Steps:
        try:
            name = yield Input("Your name?", timeout=60)
        except Timeout as timeout:
            yield Print(f"timed out after {timeout.seconds:g} s")
        else:
            yield Print(f"hello {name}")
        answer = yield Input("Next?")
        yield Print(f"next: {answer}")
        return None


@dataclass(frozen=True)
class Remind(State):
    """Reminds once, then takes a default: a Choose with a timeout, caught twice."""

    def run(self) -> Steps:
        for reminder in ("Still there?", None):
            try:
                colour = yield Choose("Colour?", ["red", "blue"], timeout=30)
            except Timeout:
                if reminder is None:
                    colour = "red"
                    break
                yield Print(reminder)
            else:
                break
        yield Print(f"colour: {colour}")
        return None


@dataclass(frozen=True)
class Nap(State):
    """Sleeps an hour, then says so and asks something."""

    def run(self) -> Steps:
        yield Sleep(3600)
        yield Print("woke")
        yield Input("Done?")
        return None


@dataclass(frozen=True)
class Chores(State):
    """Sleeps, or asks with a timeout, for as long as the key's name says."""

    def run(self) -> Steps:
        yield Print("started")
        seconds = yield Input("How long?")
        if seconds.startswith("ask "):
            try:
                yield Input("Quick?", timeout=float(seconds[4:]))
            except Timeout:
                yield Print("due: question")
                return None
        yield Sleep(float(seconds))
        yield Print("due: sleep")
        return None


@dataclass(frozen=True)
class Wait(State):
    """Asks once, with no timeout of its own."""

    def run(self) -> Steps:
        yield Input("Anything?")
        yield Print("thanks")
        return None


# -- questions with a deadline ------------------------------------------------------


class Engine:
    """A scheduler on fake clocks, with or without a state file; stopped as a crash would."""

    def __init__(
        self, flow: Flow, clocks: Clocks, path: str | None = None, **options: Any
    ) -> None:
        self.clocks = clocks
        self.frontend = Ordered()
        self.journal = open_journal(path) if path is not None else None
        self.scheduler = Scheduler(
            self.frontend,
            flow,
            journal=self.journal,
            clock=lambda: clocks.monotonic,
            wall_clock=lambda: clocks.wall,
            **options,
        )
        self.scheduler.start()

    def advance(self, seconds: float) -> list[str]:
        """Move time on once all posted so far is handled; ``ann``'s log once all due fired."""
        settle(self.scheduler)
        self.clocks.advance(seconds)
        settle(self.scheduler)
        return self.frontend.lines("ann")

    def crash(self) -> None:
        self.scheduler.stop()
        if self.journal is not None:
            self.journal.close()


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines a test started; each is stopped after it, even if it fails."""
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.crash()


def start(engines: list[Engine], flow: Flow, clocks: Clocks, **options: Any) -> Engine:
    engine = Engine(flow, clocks, **options)
    engines.append(engine)
    return engine


def test_a_question_unanswered_until_its_deadline_raises_timeout(engines: list[Engine]) -> None:
    engine = start(engines, Ask, Clocks())
    engine.scheduler.begin("ann")
    assert engine.advance(59.75) == ["bot: Your name?"]
    assert engine.advance(0.25) == ["bot: Your name?", "bot: timed out after 60 s", "bot: Next?"]


def test_an_answer_just_before_the_deadline_answers_the_question(engines: list[Engine]) -> None:
    engine = start(engines, Ask, Clocks())
    engine.scheduler.begin("ann")
    engine.advance(59.999)
    engine.scheduler.send("ann", "Ann")
    assert engine.advance(0) == ["bot: Your name?", "bot: hello Ann", "bot: Next?"]
    # The deadline passes while the flow waits on a question with none: nothing happens.
    assert engine.advance(3600) == ["bot: Your name?", "bot: hello Ann", "bot: Next?"]


def test_an_answer_just_after_the_deadline_goes_to_the_next_question(
    engines: list[Engine],
) -> None:
    engine = start(engines, Ask, Clocks())
    engine.scheduler.begin("ann")
    engine.advance(0)
    engine.clocks.advance(60.001)  # the answer and the due timer reach the loop together
    engine.scheduler.send("ann", "Ann")
    assert engine.advance(0) == [
        "bot: Your name?",
        "bot: timed out after 60 s",
        "bot: Next?",
        "bot: next: Ann",
        "ended",
    ]


def test_a_refused_answer_leaves_the_deadline_where_it_was(engines: list[Engine]) -> None:
    engine = start(engines, Remind, Clocks())
    engine.scheduler.begin("ann")
    engine.advance(20)
    engine.scheduler.send("ann", "green")  # not an option
    assert engine.advance(9.5)[3:] == [TRY_AGAIN, "bot: Colour?", "bot: 0) red", "bot: 1) blue"]
    assert engine.advance(0.5)[7:9] == ["bot: Still there?", "bot: Colour?"]


def test_a_reminder_then_a_default_when_nobody_answers(engines: list[Engine]) -> None:
    engine = start(engines, Remind, Clocks())
    engine.scheduler.begin("ann")
    assert engine.advance(30)[-5:] == [
        "bot: 1) blue",
        "bot: Still there?",
        "bot: Colour?",
        "bot: 0) red",
        "bot: 1) blue",
    ]
    assert engine.advance(29.5)[-1] == "bot: 1) blue"
    assert engine.advance(0.5)[-2:] == ["bot: colour: red", "ended"]


def test_a_cancel_during_a_timed_question_ends_it_and_its_timer(engines: list[Engine]) -> None:
    engine = start(engines, Ask, Clocks())
    engine.scheduler.begin("ann")
    engine.advance(30)
    engine.scheduler.cancel("ann")
    engine.advance(0)
    engine.scheduler.begin("ann")  # a new conversation, with a deadline of its own
    assert engine.advance(31) == ["bot: Your name?", CANCELLED, "ended", "bot: Your name?"]
    assert engine.advance(29)[-3:] == ["bot: Your name?", "bot: timed out after 60 s",
                                       "bot: Next?"]


def test_a_flow_that_sleeps_then_prints_reaches_a_silent_user(engines: list[Engine]) -> None:
    engine = start(engines, Nap, Clocks())
    engine.scheduler.begin("ann")
    assert engine.advance(3599) == []
    assert engine.advance(1) == ["bot: woke", "bot: Done?"]  # nobody wrote anything


# -- surviving a restart -------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def state_file(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the journal keeps its state: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state.sqlite3")
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_a_sleep_wakes_at_its_original_moment_after_a_restart(
    engines: list[Engine], state_file: str
) -> None:
    clocks = Clocks()
    first = start(engines, Nap, clocks, path=state_file)
    first.scheduler.begin("ann")
    first.advance(600)  # ten minutes into the hour
    first.crash()

    second = start(engines, Nap, clocks.restarted(downtime=0), path=state_file)
    assert second.advance(3000 - 0.5) == []  # not the full hour again: 50 minutes
    assert second.advance(0.5) == ["bot: woke", "bot: Done?"]


def _deadlines(engine: Engine) -> list[tuple[str, float]]:
    assert engine.journal is not None
    table = "yielded.deadlines" if isinstance(engine.journal, PostgresJournal) else "deadlines"
    assert isinstance(engine.journal, (SqliteJournal, PostgresJournal))
    rows = engine.journal._connection.execute(f"SELECT key, due FROM {table} ORDER BY key")
    return [(key, due) for key, due in rows]


def test_a_deadline_is_kept_while_it_is_pending_and_forgotten_after(
    engines: list[Engine], state_file: str
) -> None:
    clocks = Clocks()
    engine = start(engines, Ask, clocks, path=state_file)
    begun = clocks.wall
    engine.scheduler.begin("ann")
    engine.advance(0)
    assert _deadlines(engine) == [("ann", begun + 60)]  # absolute: read from the clock once
    engine.scheduler.send("ann", "Ann")
    engine.advance(0)
    assert _deadlines(engine) == []
    engine.scheduler.send("ann", "bye")
    assert engine.advance(0)[-1] == "ended"


def test_a_question_deadline_keeps_its_remaining_time_after_a_restart(
    engines: list[Engine], state_file: str
) -> None:
    clocks = Clocks()
    first = start(engines, Ask, clocks, path=state_file)
    first.scheduler.begin("ann")
    first.advance(20)
    first.crash()

    second = start(engines, Ask, clocks.restarted(downtime=10), path=state_file)
    assert second.advance(29.5) == ["(restored)"]  # 20 + 10 + 29.5 < 60
    assert second.advance(0.5) == ["(restored)", "bot: timed out after 60 s", "bot: Next?"]
    second.scheduler.send("ann", "on")
    assert second.advance(0)[-2:] == ["bot: next: on", "ended"]


def test_overdue_timers_fire_at_once_in_deadline_order_after_a_long_downtime(
    engines: list[Engine], state_file: str
) -> None:
    clocks = Clocks()
    first = start(engines, Chores, clocks, path=state_file)
    # Started in one order, due in another: c (100 s), a (200 s), d (250 s), b (300 s).
    for key, seconds in [("a", "200"), ("b", "300"), ("c", "ask 100"), ("d", "250")]:
        first.scheduler.begin(key)
        first.scheduler.send(key, seconds)
        first.advance(0)
    first.advance(50)
    first.crash()

    second = start(engines, Chores, clocks.restarted(downtime=86_400), path=state_file)
    second.advance(0)  # no time passes: they were due while the bot was down
    due = [(key, line) for key, line in second.frontend.order if line.startswith("bot: due")]
    assert due == [
        ("c", "bot: due: question"),
        ("a", "bot: due: sleep"),
        ("d", "bot: due: sleep"),
        ("b", "bot: due: sleep"),
    ]
    assert second.scheduler.running() == 0


def test_idle_expiry_counts_the_time_before_a_restart(
    engines: list[Engine], state_file: str
) -> None:
    clocks = Clocks()
    first = start(engines, Wait, clocks, path=state_file, idle_timeout=100)
    first.scheduler.begin("ann")
    first.advance(60)
    first.crash()

    second = start(engines, Wait, clocks.restarted(downtime=10), path=state_file,
                   idle_timeout=100)
    assert second.advance(29.5) == ["(restored)"]  # idle 99.5 s of 100
    assert second.advance(0.5) == ["(restored)", "ended"]
    second.scheduler.send("ann", "back")
    assert second.advance(0)[-1] == f"bot: {Notice.EXPIRED.value}"


def test_an_answer_before_a_restart_restarts_the_idle_time(
    engines: list[Engine], state_file: str
) -> None:
    clocks = Clocks()
    first = start(engines, Ask, clocks, path=state_file, idle_timeout=100)
    first.scheduler.begin("ann")
    first.advance(50)
    first.scheduler.send("ann", "Ann")  # active at 50: idle from here
    first.advance(20)
    first.crash()

    second = start(engines, Ask, clocks.restarted(downtime=20), path=state_file,
                   idle_timeout=100)
    assert second.advance(59) == ["(restored)"]  # idle 99 s of 100
    assert second.advance(1) == ["(restored)", "ended"]


# -- the testing kit ---------------------------------------------------------------


def test_the_testing_kit_lets_a_question_time_out() -> None:
    flow = FlowTest(Ask())
    assert flow.command == Input("Your name?", timeout=60)
    flow.times_out()
    flow.expect(Print("timed out after 60 s"))
    assert flow.command == Input("Next?")
    with pytest.raises(FlowMismatch, match="has no timeout"):
        flow.times_out()
    flow.check_replay()


def test_a_transcript_says_where_a_question_times_out() -> None:
    test = check_transcript(Remind(), """
        bot: Colour?
        bot: 0) red
        bot: 1) blue
        timeout:
        bot: Still there?
        bot: Colour?
        bot: 0) red
        bot: 1) blue
        timeout: 30
        bot: colour: red
    """)
    assert "timeout: 30" in test.transcript


def test_a_transcript_cannot_time_out_a_question_without_a_timeout() -> None:
    with pytest.raises(FlowMismatch, match="has no timeout"):
        check_transcript(Wait(), """
            bot: Anything?
            timeout:
        """)
