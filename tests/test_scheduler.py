"""The scheduler: many conversations on one thread, with real worker threads.

Flows are small states defined here; the frontend is a
:class:`RecordingFrontend` (sometimes extended to count), and tests wait on
its log with a timeout instead of sleeping. Where time matters (idle expiry,
a stale Sleep), a :class:`FakeClock` makes it exact: the test moves the clock
and then sends a probe message, whose reply proves that the scheduler has
handled everything before it and fired every timer due.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine import Call, Choose, Input, Print, Sleep, State
from engine.frontend import Notice
from engine.scheduler import MAILBOX_LIMIT, Scheduler
from engine.sources import Taken
from engine.states import Steps
from engine.testing import RecordingFrontend
from engine.workers import WorkerPool
from tests.support.engine import Engine, FakeClock, engine_threads, held, round_trip
from tests.support.flows import Nap

pytestmark = pytest.mark.usefixtures("no_engine_threads")

StartEngine = Callable[..., Engine]
Gates = Callable[[], threading.Event]

FAILED = f"bot: {Notice.FAILED.value}"
EXPIRED = f"bot: {Notice.EXPIRED.value}"
NOT_STARTED = f"bot: {Notice.NOT_STARTED.value}"
ALREADY_RUNNING = f"bot: {Notice.ALREADY_RUNNING.value}"
CANCELLED = f"bot: {Notice.CANCELLED.value}"


@dataclass
class Echo(State):
    """Echoes each line until told ``bye``; ``boom`` crashes it."""

    trail: list[str] = field(default_factory=list)

    def run(self) -> Steps:
        try:
            while True:
                text = yield Input("Say something:")
                if text == "bye":
                    return None
                if text == "boom":
                    raise RuntimeError(f"kaboom in the flow of {text!r}")
                yield Print(f"echo: {text}")
        finally:
            self.trail.append("finally")


# -- beginning and ending ------------------------------------------------------


def test_a_conversation_runs_to_its_end(start_engine: StartEngine) -> None:
    trail: list[str] = []
    scheduler, frontend = start_engine(lambda: Echo(trail))
    scheduler.begin("ann")
    frontend.wait_for("ann", "bot: Say something:")
    assert scheduler.running() == 1
    scheduler.send("ann", "hello")
    scheduler.send("ann", "bye")
    assert frontend.wait_for("ann", "ended") == [
        "bot: Say something:",
        "bot: echo: hello",
        "bot: Say something:",
        "ended",
    ]
    assert trail == ["finally"]
    assert scheduler.running() == 0


def test_begin_twice_says_already_running_and_keeps_the_conversation(
    start_engine: StartEngine,
) -> None:
    scheduler, frontend = start_engine(Echo)
    scheduler.begin("ann")
    scheduler.begin("ann")
    frontend.wait_for("ann", ALREADY_RUNNING)
    scheduler.send("ann", "still you?")
    assert frontend.wait_for("ann", "bot: echo: still you?") == [
        "bot: Say something:",
        ALREADY_RUNNING,
        "bot: echo: still you?",
        "bot: Say something:",
    ]
    assert scheduler.running() == 1


def test_text_without_a_conversation_says_not_started(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Echo)
    scheduler.send("ann", "hello?")
    assert frontend.wait_for("ann", NOT_STARTED) == [NOT_STARTED]
    assert scheduler.running() == 0


def test_after_the_end_text_says_not_started_and_begin_starts_anew(
    start_engine: StartEngine,
) -> None:
    scheduler, frontend = start_engine(Echo)
    scheduler.begin("ann")
    scheduler.send("ann", "bye")
    scheduler.send("ann", "hello?")
    scheduler.begin("ann")
    scheduler.send("ann", "again")
    assert frontend.wait_for("ann", "bot: echo: again") == [
        "bot: Say something:",
        "ended",
        NOT_STARTED,
        "bot: Say something:",
        "bot: echo: again",
        "bot: Say something:",
    ]


def test_conversations_with_different_keys_are_apart(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Echo)
    scheduler.begin("ann")
    scheduler.begin("bob")
    scheduler.send("bob", "I am bob")
    scheduler.send("ann", "I am ann")
    frontend.wait_for("ann", "bot: echo: I am ann")
    frontend.wait_for("bob", "bot: echo: I am bob")
    assert "bot: echo: I am bob" not in frontend.lines("ann")
    assert "bot: echo: I am ann" not in frontend.lines("bob")


def test_a_state_instance_is_a_flow_too(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Echo())
    for key in ["ann", "bob"]:
        scheduler.begin(key)
        scheduler.send(key, f"from {key}")
        frontend.wait_for(key, f"bot: echo: from {key}")


@dataclass
class First(State):
    def run(self) -> Steps:
        name = yield Input("Name?")
        return Second(name)


@dataclass
class Second(State):
    name: str

    def run(self) -> Steps:
        yield Print(f"Hello, {self.name}")
        return None


def test_states_follow_each_other_and_only_commands_reach_the_frontend(
    start_engine: StartEngine,
) -> None:
    scheduler, frontend = start_engine(First)
    scheduler.begin("ann")
    scheduler.send("ann", "Ann")
    assert frontend.wait_for("ann", "ended") == ["bot: Name?", "bot: Hello, Ann", "ended"]


# -- many at once ------------------------------------------------------------------


def shout(text: str) -> str:
    return text.upper()


@dataclass
class Greeter(State):
    def run(self) -> Steps:
        name = yield Input("Your name?")
        loud = yield Call(shout, name)
        yield Print(f"Hello, {loud}")
        return None


class CountingFrontend(RecordingFrontend):
    """Counts questions and endings, so a test can wait on ten thousand cheaply."""

    def __init__(self) -> None:
        super().__init__()
        self.questions = 0
        self.endings = 0

    def ask(self, key: str, question: Input | Choose, receipt: int | None = None) -> None:
        self.questions += 1  # only the scheduler thread calls a frontend
        super().ask(key, question)

    def ended(self, key: str) -> None:
        self.endings += 1
        super().ended(key)


def test_ten_thousand_conversations_at_once(start_engine: StartEngine) -> None:
    count = 10_000
    frontend = CountingFrontend()
    scheduler, _ = start_engine(Greeter, frontend)
    keys = [f"user-{n}" for n in range(count)]
    for key in keys:
        scheduler.begin(key)
    frontend.wait_until(lambda: frontend.questions == count, timeout=20)
    assert scheduler.running() == count
    for n, key in enumerate(reversed(keys)):
        scheduler.send(key, f"name {n}")
    frontend.wait_until(lambda: frontend.endings == count, timeout=20)
    assert scheduler.running() == 0
    for n, key in enumerate(reversed(keys)):
        assert frontend.lines(key) == ["bot: Your name?", f"bot: Hello, NAME {n}", "ended"]


# -- the mailbox ---------------------------------------------------------------------


@dataclass
class Collector(State):
    """Busy in a Call until `gate` opens, then takes `count` answers."""

    gate: threading.Event
    count: int

    def run(self) -> Steps:
        yield Call(self.gate.wait, 10)
        answers = []
        for _ in range(self.count):
            answers.append((yield Input("Next?")))
        yield Print(" ".join(answers))
        return None


def test_a_burst_of_messages_to_a_busy_conversation_waits_in_order(
    start_engine: StartEngine, gates: Gates
) -> None:
    gate = gates()
    count = MAILBOX_LIMIT
    scheduler, frontend = start_engine(lambda: Collector(held(gate), count))
    scheduler.begin("ann")
    round_trip(scheduler, frontend)  # now in the Call
    for n in range(count):
        scheduler.send("ann", str(n))
    round_trip(scheduler, frontend)
    assert frontend.lines("ann") == []  # all of them wait
    gate.set()
    # Every answer came from the mailbox: the question was never shown.
    assert frontend.wait_for("ann", "ended") == [
        " ".join(str(n) for n in range(count)).join(["bot: ", ""]),
        "ended",
    ]


def test_a_mailbox_is_taken_before_new_messages(start_engine: StartEngine, gates: Gates) -> None:
    gate = gates()
    scheduler, frontend = start_engine(lambda: Collector(held(gate), 3))
    scheduler.begin("ann")
    scheduler.send("ann", "first")
    scheduler.send("ann", "second")
    round_trip(scheduler, frontend)
    gate.set()
    frontend.wait_for("ann", "bot: Next?")  # the mailbox ran dry at the third question
    scheduler.send("ann", "third")
    assert frontend.wait_for("ann", "ended") == ["bot: Next?", "bot: first second third", "ended"]


TOO_MANY = f"bot: {Notice.TOO_MANY_WAITING.value}"


@dataclass
class TwoBursts(State):
    """Busy twice (a Call until each gate opens), taking three answers after each."""

    first: threading.Event
    second: threading.Event

    def run(self) -> Steps:
        for gate in (self.first, self.second):
            yield Call(gate.wait, 10)
            answers = []
            for _ in range(3):
                answers.append((yield Input("Next?")))
            yield Print(" ".join(answers))
        return None


def test_messages_beyond_the_mailbox_limit_are_dropped_and_the_user_told_once_per_burst(
    start_engine: StartEngine, gates: Gates
) -> None:
    first, second = gates(), gates()
    scheduler, frontend = start_engine(
        lambda: TwoBursts(held(first), held(second)), mailbox_limit=3
    )
    scheduler.begin("ann")
    for text in "abcde":  # d and e find the mailbox full
        scheduler.send("ann", text)
    round_trip(scheduler, frontend)
    assert frontend.lines("ann") == [TOO_MANY]
    first.set()
    frontend.wait_for("ann", "bot: a b c")  # caught up, and busy again
    for text in "fghi":
        scheduler.send("ann", text)
    round_trip(scheduler, frontend)
    second.set()
    assert frontend.wait_for("ann", "ended") == [
        TOO_MANY, "bot: a b c", TOO_MANY, "bot: f g h", "ended",
    ]  # fmt: skip


@dataclass
class BusyChooser(State):
    gate: threading.Event

    def run(self) -> Steps:
        yield Call(self.gate.wait, 10)
        choice = yield Choose("Continue?", ["Yes", "No"])
        yield Print(f"chose {choice}")
        return None


def test_queued_answers_to_a_choose_are_checked_too(
    start_engine: StartEngine, gates: Gates
) -> None:
    gate = gates()
    scheduler, frontend = start_engine(lambda: BusyChooser(held(gate)))
    scheduler.begin("ann")
    scheduler.send("ann", "perhaps")
    scheduler.send("ann", " no ")
    scheduler.send("ann", "yes")  # left over: the conversation ends before it
    round_trip(scheduler, frontend)
    gate.set()
    lines = frontend.wait_for("ann", "ended")
    assert lines[0] == "bot: Try again"
    assert lines[-2:] == ["bot: chose No", "ended"]
    assert "bot: chose Yes" not in lines


# -- cancel ---------------------------------------------------------------------------


@dataclass
class Guarded(State):
    """Waits where told, and writes down what ran when it is cancelled."""

    where: str
    trail: list[str]
    gate: Any = None

    def run(self) -> Steps:
        try:
            yield Print("waiting")
            if self.where == "input":
                yield Input("Anything?")
            elif self.where == "call":
                yield Call(self.gate.wait, 10)
            else:
                yield Sleep(60)
            self.trail.append("went on")
        except Exception as error:  # a Cancelled must not land here
            self.trail.append(f"swallowed {error!r}")
        finally:
            self.trail.append("finally")
        yield Print("not reached")
        return None


@pytest.mark.parametrize("where", ["input", "call", "sleep"])
def test_cancel_runs_finally_and_says_exiting(
    start_engine: StartEngine, gates: Gates, where: str
) -> None:
    trail: list[str] = []
    gate = gates()
    scheduler, frontend = start_engine(lambda: Guarded(where, trail, held(gate)))
    scheduler.begin("ann")
    frontend.wait_for("ann", "bot: waiting")
    round_trip(scheduler, frontend)
    assert trail == []
    scheduler.cancel("ann")
    assert frontend.wait_for("ann", "ended")[-2:] == [CANCELLED, "ended"]
    assert trail == ["finally"]
    assert scheduler.running() == 0
    gate.set()
    scheduler.send("ann", "hello?")
    assert frontend.wait_for("ann", NOT_STARTED)[-3:] == [CANCELLED, "ended", NOT_STARTED]
    assert trail == ["finally"]


def test_cancel_without_a_conversation_says_not_started(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Echo)
    scheduler.cancel("ann")
    assert frontend.wait_for("ann", NOT_STARTED) == [NOT_STARTED]


def test_cancel_ends_only_that_conversation(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Echo)
    scheduler.begin("ann")
    scheduler.begin("bob")
    scheduler.cancel("ann")
    scheduler.send("bob", "still here")
    frontend.wait_for("bob", "bot: echo: still here")
    assert frontend.wait_for("ann", "ended")[-2:] == [CANCELLED, "ended"]
    assert scheduler.running() == 1


@dataclass
class Fetcher(State):
    """Prints what its Call returned."""

    fetch: Callable[[], Any]

    def run(self) -> Steps:
        yield Print("fetching")
        value = yield Call(self.fetch)
        yield Print(f"got {value}")
        return None


def test_a_late_call_result_after_cancel_goes_nowhere(
    start_engine: StartEngine, gates: Gates
) -> None:
    stale_gate = gates()
    stale_running = threading.Event()
    results = iter(["stale", "fresh"])
    entered: list[str] = []

    def fetch() -> str:
        result = next(results)
        entered.append(result)
        if result == "stale":
            stale_running.set()
            stale_gate.wait(10)
        return result

    # One worker: the second call runs only after the first returned, so
    # the stale result reaches the inbox before the fresh one.
    scheduler, frontend = start_engine(lambda: Fetcher(held(fetch)), workers=1)
    scheduler.begin("ann")
    assert stale_running.wait(5)
    scheduler.cancel("ann")
    frontend.wait_for("ann", "ended")
    scheduler.begin("ann")
    round_trip(scheduler, frontend)
    stale_gate.set()
    assert frontend.wait_until(lambda: frontend.lines("ann").count("ended") == 2, key="ann") == [
        "bot: fetching",
        CANCELLED,
        "ended",
        "bot: fetching",
        "bot: got fresh",
        "ended",
    ]
    assert entered == ["stale", "fresh"]


@dataclass
class Dozer(State):
    def run(self) -> Steps:
        yield Sleep(10)
        yield Print("woke")
        return None


def test_a_stale_sleep_after_cancel_wakes_nobody(start_engine: StartEngine) -> None:
    clock = FakeClock()
    made = itertools.count()
    scheduler, frontend = start_engine(lambda: Dozer() if next(made) == 0 else Echo(), clock=clock)
    scheduler.begin("ann")
    round_trip(scheduler, frontend)
    scheduler.cancel("ann")
    scheduler.begin("ann")
    round_trip(scheduler, frontend)
    clock.advance(11)
    round_trip(scheduler, frontend)
    scheduler.send("ann", "hi")
    assert frontend.wait_for("ann", "bot: echo: hi") == [
        CANCELLED,
        "ended",
        "bot: Say something:",
        "bot: echo: hi",
        "bot: Say something:",
    ]


def test_a_sleep_wakes_when_its_time_comes(start_engine: StartEngine) -> None:
    clock = FakeClock()
    scheduler, frontend = start_engine(Dozer, clock=clock)
    scheduler.begin("ann")
    round_trip(scheduler, frontend)  # asleep at 0
    clock.advance(9.75)
    round_trip(scheduler, frontend)
    assert frontend.lines("ann") == []
    clock.advance(0.25)
    round_trip(scheduler, frontend)
    assert frontend.wait_for("ann", "ended") == ["bot: woke", "ended"]


# -- failures -------------------------------------------------------------------------


def test_an_exception_escaping_a_flow_ends_only_that_conversation(
    start_engine: StartEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="engine")
    trails: dict[str, list[str]] = {}

    def flow() -> State:
        trail: list[str] = []
        trails[f"flow {len(trails)}"] = trail
        return Echo(trail)

    scheduler, frontend = start_engine(flow)
    scheduler.begin("ann")
    scheduler.begin("bob")
    scheduler.send("bob", "boom")
    assert frontend.wait_for("bob", "ended") == ["bot: Say something:", FAILED, "ended"]
    assert sorted(map(tuple, trails.values())) == [(), ("finally",)]
    scheduler.send("bob", "hello?")
    frontend.wait_for("bob", NOT_STARTED)
    scheduler.send("ann", "fine here")
    frontend.wait_for("ann", "bot: echo: fine here")
    assert scheduler.running() == 1

    [record] = [r for r in caplog.records if r.exc_info]
    assert record.levelno == logging.ERROR
    assert "bob" in record.getMessage()
    assert "Echo" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
    assert "Traceback (most recent call last)" in caplog.text
    assert "kaboom in the flow of 'boom'" in caplog.text
    assert 'raise RuntimeError(f"kaboom in the flow of {text!r}")' in caplog.text


def test_a_flow_that_cannot_make_its_first_state_fails_that_conversation(
    start_engine: StartEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="engine")
    scheduler, frontend = start_engine(lambda: "not a state")
    scheduler.begin("ann")
    assert frontend.wait_for("ann", "ended") == [FAILED, "ended"]
    scheduler.begin("ann")
    assert frontend.wait_until(lambda: frontend.lines("ann").count("ended") == 2, key="ann")


@dataclass
class SloppyCleaner(State):
    def run(self) -> Steps:
        try:
            yield Input("Anything?")
        finally:
            raise ValueError("the finally block broke")


def test_a_failing_finally_on_cancel_still_ends_the_conversation(
    start_engine: StartEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="engine")
    scheduler, frontend = start_engine(SloppyCleaner)
    scheduler.begin("ann")
    scheduler.cancel("ann")
    assert frontend.wait_for("ann", "ended") == ["bot: Anything?", CANCELLED, "ended"]
    assert scheduler.running() == 0
    assert "the finally block broke" in caplog.text


class FragileFrontend(RecordingFrontend):
    """Fails to deliver anything to ``bad``."""

    def deliver(self, key: str, command: Any, receipt: int | None = None) -> None:
        if key == "bad":
            raise ConnectionError("the network is down")
        super().deliver(key, command)


def test_a_failing_frontend_does_not_stop_the_scheduler(
    start_engine: StartEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="engine")
    scheduler, frontend = start_engine(Second("you"), FragileFrontend())
    scheduler.begin("bad")
    scheduler.begin("good")
    assert frontend.wait_for("good", "ended") == ["bot: Hello, you", "ended"]
    assert frontend.wait_for("bad", "ended") == ["ended"]
    assert "the recording frontend failed" in caplog.text
    assert "the network is down" in caplog.text


# -- idle expiry ------------------------------------------------------------------------


def test_an_idle_conversation_expires(start_engine: StartEngine) -> None:
    trail: list[str] = []
    clock = FakeClock()
    scheduler, frontend = start_engine(lambda: Echo(trail), idle_timeout=0.2, clock=clock)
    scheduler.begin("ann")
    round_trip(scheduler, frontend)
    clock.advance(0.19)
    round_trip(scheduler, frontend)
    assert frontend.lines("ann") == ["bot: Say something:"]
    clock.advance(0.01)
    round_trip(scheduler, frontend)
    assert frontend.wait_for("ann", "ended", timeout=3) == ["bot: Say something:", "ended"]
    assert trail == ["finally"]
    assert scheduler.running() == 0
    scheduler.send("ann", "sorry, I was away")
    scheduler.send("ann", "hello?")
    scheduler.send("ann", "anyone?")
    lines = frontend.wait_until(lambda: frontend.lines("ann").count(NOT_STARTED) == 2, key="ann")
    assert lines == [
        "bot: Say something:",
        "ended",
        EXPIRED,
        NOT_STARTED,
        NOT_STARTED,
    ]


def test_messages_keep_a_conversation_from_expiring(start_engine: StartEngine) -> None:
    clock = FakeClock()
    trail: list[str] = []
    scheduler, frontend = start_engine(lambda: Echo(trail), idle_timeout=10, clock=clock)
    scheduler.begin("ann")
    round_trip(scheduler, frontend)  # begun at 0
    clock.advance(8)
    scheduler.send("ann", "a")
    round_trip(scheduler, frontend)  # active at 8
    clock.advance(4)
    round_trip(scheduler, frontend)  # 12: the first deadline (10) passed, but not 8 + 10
    assert scheduler.running() == 1
    scheduler.send("ann", "b")
    round_trip(scheduler, frontend)  # active at 12
    clock.advance(9)
    round_trip(scheduler, frontend)  # 21
    assert scheduler.running() == 1
    assert trail == []
    clock.advance(1.5)
    round_trip(scheduler, frontend)  # 22.5: idle for 10.5 s
    lines = frontend.wait_for("ann", "ended")
    assert lines[-3:] == ["bot: echo: b", "bot: Say something:", "ended"]
    assert trail == ["finally"]


def test_begin_after_expiry_starts_without_the_expired_notice(start_engine: StartEngine) -> None:
    clock = FakeClock()
    scheduler, frontend = start_engine(Echo, idle_timeout=10, clock=clock)
    scheduler.begin("ann")
    round_trip(scheduler, frontend)
    clock.advance(11)
    round_trip(scheduler, frontend)
    scheduler.begin("ann")
    scheduler.send("ann", "back")
    assert frontend.wait_for("ann", "bot: echo: back") == [
        "bot: Say something:",
        "ended",
        "bot: Say something:",
        "bot: echo: back",
        "bot: Say something:",
    ]


# -- stop -----------------------------------------------------------------------------


def test_stop_abandons_a_stuck_call_and_leaves_no_other_thread(
    start_engine: StartEngine, gates: Gates
) -> None:
    gate = gates()
    hanging = threading.Event()
    stuck_in: list[str] = []

    def hang() -> str:
        stuck_in.append(threading.current_thread().name)
        hanging.set()
        gate.wait(10)
        return "too late"

    scheduler, frontend = start_engine(lambda: Fetcher(held(hang)), workers=4)
    scheduler.begin("ann")
    assert hanging.wait(5)
    assert len(engine_threads()) == 5
    scheduler.stop()
    # Had stop waited for the stuck call, its worker would have ended by now.
    assert engine_threads() == stuck_in
    gate.set()
    deadline = time.monotonic() + 2
    while engine_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine_threads() == []
    assert frontend.lines("ann") == ["bot: fetching"]


def test_stop_joins_every_thread_when_nothing_is_stuck(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Echo, workers=3)
    scheduler.begin("ann")
    frontend.wait_for("ann", "bot: Say something:")
    assert engine_threads() == [
        "engine-scheduler",
        "engine-worker-0",
        "engine-worker-1",
        "engine-worker-2",
    ]
    scheduler.stop()
    assert engine_threads() == []
    scheduler.stop()  # again: harmless


def test_a_scheduler_starts_once(start_engine: StartEngine) -> None:
    scheduler, _ = start_engine(Echo)
    with pytest.raises(RuntimeError, match="already started"):
        scheduler.start()


def test_stop_without_start_returns(no_engine_threads: None) -> None:
    Scheduler(RecordingFrontend(), Echo).stop()


# -- sources, notices ----------------------------------------------------------------


def test_a_redelivered_update_is_taken_once(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Echo)
    assert scheduler.last_source is None
    scheduler.begin("ann", source=1)
    scheduler.send("ann", "two", source=2)
    scheduler.send("ann", "two again", source=2)
    scheduler.send("ann", "one again", source=1)
    scheduler.send("ann", "no source")
    scheduler.send("ann", "three", source=3)
    scheduler.begin("ann", source=3)
    round_trip(scheduler, frontend)
    assert frontend.lines("ann") == [
        "bot: Say something:",
        "bot: echo: two",
        "bot: Say something:",
        "bot: echo: no source",
        "bot: Say something:",
        "bot: echo: three",
        "bot: Say something:",
    ]
    assert scheduler.last_source == 3


def far_below_is_new(source: int, taken: Taken) -> bool:
    """A source policy like Telegram's: new unless taken, or when far below the highest."""
    highest = taken.highest
    return source not in taken or (highest is not None and source < highest - 1_000_000)


def test_the_frontends_source_policy_decides_what_is_new(start_engine: StartEngine) -> None:
    # Telegram numbers updates from a random id after a week without any.
    scheduler, frontend = start_engine(Echo, sources=far_below_is_new)
    scheduler.begin("ann", source=900_000_000)
    scheduler.send("ann", "before", source=900_000_001)
    scheduler.send("ann", "after", source=12_345)
    scheduler.send("ann", "after again", source=12_345)
    round_trip(scheduler, frontend)
    assert frontend.lines("ann") == [
        "bot: Say something:",
        "bot: echo: before",
        "bot: Say something:",
        "bot: echo: after",
        "bot: Say something:",
    ]
    assert scheduler.last_source == 12_345


class QuietFrontend(RecordingFrontend):
    notices = {Notice.NOT_STARTED: "Send /start first", Notice.CANCELLED: ""}  # noqa: RUF012


def test_a_frontend_can_reword_or_silence_notices(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Echo, QuietFrontend())
    scheduler.send("ann", "hi")
    scheduler.begin("ann")
    scheduler.cancel("ann")
    scheduler.begin("ann")
    scheduler.begin("ann")
    assert frontend.wait_for("ann", ALREADY_RUNNING) == [
        "bot: Send /start first",
        "bot: Say something:",
        "ended",
        "bot: Say something:",
        ALREADY_RUNNING,
    ]


# -- the worker pool ------------------------------------------------------------------


def test_a_worker_pool_cannot_have_fewer_than_none() -> None:
    with pytest.raises(ValueError, match="fewer than no threads"):
        WorkerPool(-1)


def test_a_pool_without_threads_runs_each_job_at_once_here() -> None:
    pool = WorkerPool(0)
    pool.start()
    replies: list[tuple[Any, Any, Any]] = []
    pool.submit(lambda: threading.current_thread().name, "a", lambda *r: replies.append(r))
    pool.submit(lambda: 1 / 0, "b", lambda *r: replies.append(r))
    pool.stop(time.monotonic() + 1)
    assert replies[0] == ("a", threading.current_thread().name, None)
    assert replies[1][0] == "b" and isinstance(replies[1][2], ZeroDivisionError)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a Ctrl-C goes through to the terminal
        pool.submit(interrupted, "c", lambda *r: replies.append(r))


def test_a_worker_pool_replies_with_values_and_any_exception(no_engine_threads: None) -> None:
    replies: list[tuple[Any, Any, Any]] = []
    done = threading.Semaphore(0)

    def reply(ticket: Any, value: Any, error: BaseException | None) -> None:
        replies.append((ticket, value, type(error)))
        done.release()

    def leave() -> None:
        raise SystemExit(3)

    pool = WorkerPool(2)
    pool.start()
    try:
        pool.submit(lambda: 42, "answer", reply)
        pool.submit(leave, "exit", reply)
        pool.submit(lambda: 1 / 0, "divide", reply)
        for _ in range(3):
            assert done.acquire(timeout=5)
    finally:
        pool.stop(time.monotonic() + 1)
    assert sorted(replies, key=lambda r: str(r[0])) == [
        ("answer", 42, type(None)),
        ("divide", None, ZeroDivisionError),
        ("exit", None, SystemExit),
    ]


# -- a value from one flow cannot touch another conversation -----------------------------


@pytest.mark.parametrize("seconds", ["nan", "inf", "-1"])
def test_a_sleep_of_nan_or_inf_fails_that_conversation_only(
    start_engine: StartEngine, caplog: pytest.LogCaptureFixture, seconds: str
) -> None:
    caplog.set_level(logging.CRITICAL, logger="engine")
    clock = FakeClock()
    scheduler, frontend = start_engine(Nap, clock=clock)
    scheduler.begin("ann")
    scheduler.begin("bob")
    scheduler.send("bob", "1")
    scheduler.send("ann", seconds)  # Sleep(float(seconds)) refuses it where it is built
    assert frontend.wait_for("ann", "ended")[-2:] == [FAILED, "ended"]
    frontend.wait_for("bob", "bot: sleeping 1 s")
    clock.advance(1.0)
    round_trip(scheduler, frontend)  # the timers still fire, in order, for everyone else
    assert frontend.lines("bob")[-2:] == ["bot: slept 1 s", "bot: How long?"]


def test_sleep_refuses_what_is_not_a_finite_number_of_seconds_where_it_is_built() -> None:
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="finite, non-negative"):
            Sleep(bad)
    with pytest.raises(TypeError, match="number of seconds"):
        Sleep("1")  # type: ignore[arg-type]
