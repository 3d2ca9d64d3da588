"""The engine's edge cases: answers int() refuses, a SystemExit escaping a flow, a
call still queued at stop, and replay compared up to the very last command.

Each was a bug once, found while writing the engine's tests.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine import Call, Choose, Input, Print, Sleep, State
from engine.frontend import Notice
from engine.journal import JournalError, JournalLost, SqliteJournal
from engine.scheduler import Scheduler
from engine.states import Steps
from engine.testing import FlowMismatch, FlowTest, RecordingFrontend, check_transcript
from tests.support.engine import Engine, engine_threads, held

pytestmark = pytest.mark.usefixtures("no_engine_threads")

StartEngine = Callable[..., Engine]


# -- 1. Choose.match raises on digits int() refuses -------------------------------------


@pytest.mark.parametrize("answer", ["²", "1²", "9" * 5000, "10000000001", "00000000001"])
def test_choose_match_of_odd_digits_is_no_match(answer: str) -> None:
    # "²".isdigit() is true but int("²") raises; so does a number over 4300 digits.
    assert Choose("Continue?", ["Yes", "No"]).match(answer) is None


@dataclass
class Pick(State):
    def run(self) -> Steps:
        choice = yield Choose("Continue?", ["Yes", "No"])
        yield Print(f"chose {choice}")
        return None


def test_a_superscript_answer_to_a_choose_is_asked_again(start_engine: StartEngine) -> None:
    scheduler, frontend = start_engine(Pick)
    scheduler.begin("ann")
    frontend.wait_for("ann", "bot: 1) No")
    scheduler.send("ann", "²")
    frontend.wait_for("ann", f"bot: {Notice.TRY_AGAIN.value}", timeout=2)


# -- 2. a BaseException escaping a flow kills the scheduler thread ----------------------------


@dataclass
class Quitter(State):
    def run(self) -> Steps:
        text = yield Input("Ready?")
        if text == "exit":
            yield Call(sys.exit, 3)  # e.g. a library that calls sys.exit
        yield Print(f"got {text}")
        return None


def test_a_system_exit_escaping_a_flow_ends_only_that_conversation(
    start_engine: StartEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="engine")
    scheduler, frontend = start_engine(Quitter)
    scheduler.begin("ann")
    scheduler.begin("bob")
    frontend.wait_for("bob", "bot: Ready?")
    scheduler.send("bob", "exit")
    frontend.wait_for("bob", f"bot: {Notice.FAILED.value}", timeout=2)
    scheduler.send("ann", "still there?")
    frontend.wait_for("ann", "bot: got still there?", timeout=2)


# -- 3. a Call queued before stop() runs after it --------------------------------------------


@dataclass
class Worker(State):
    job: Callable[[], object]

    def run(self) -> Steps:
        yield Call(self.job)
        return None


def test_a_call_still_queued_at_stop_never_runs(
    start_engine: StartEngine, gates: Callable[[], threading.Event]
) -> None:
    gate = gates()
    hanging = threading.Event()
    ran_after_stop: list[str] = []
    stopped = threading.Event()

    def hang() -> None:
        hanging.set()
        gate.wait(10)

    def side_effect() -> None:
        if stopped.is_set():
            ran_after_stop.append("side effect")

    made = itertools.count()
    scheduler, _ = start_engine(
        lambda: Worker(held(hang if next(made) == 0 else side_effect)), workers=1
    )
    scheduler.begin("ann")
    assert hanging.wait(5)
    scheduler.begin("bob")  # its Call waits for the only worker
    scheduler.stop()  # the inbox is FIFO: bob's Call was handed to the pool before this
    stopped.set()
    gate.set()
    deadline = time.monotonic() + 2
    while engine_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran_after_stop == []


# -- 4. check_replay leaves out the last step -----------------------------------------------

FLIPS: list[int] = []


@dataclass
class Flaky(State):
    """Says more the second time it runs: something outside a Call changed."""

    def run(self) -> Steps:
        name = yield Input("Name?")
        yield Print(f"Hi {name}")
        FLIPS.append(1)
        if len(FLIPS) > 1:
            yield Print("surprise")
        return None


def test_check_transcript_replays_up_to_the_end() -> None:
    FLIPS.clear()
    with pytest.raises(FlowMismatch, match="not deterministic"):
        check_transcript(Flaky(), "bot: Name?\nyou: Ann\nbot: Hi Ann")


def test_check_replay_compares_the_pending_command_too() -> None:
    FLIPS.clear()
    flow = FlowTest(Flaky())
    flow.answer("Ann")
    flow.resume()
    assert flow.finished
    with pytest.raises(FlowMismatch, match="not deterministic"):
        flow.check_replay()


# -- a malformed command, or a state that cannot be saved -------------------------------


@dataclass
class NapsBadly(State):
    def run(self) -> Steps:
        try:
            yield Sleep("1")  # type: ignore[arg-type]
        except TypeError:
            yield Print("caught at the yield")
        yield Sleep("2")  # type: ignore[arg-type]
        return None


def test_a_malformed_command_fails_at_its_yield(
    start_engine: StartEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="engine")
    scheduler, frontend = start_engine(NapsBadly)
    scheduler.begin("ann")
    lines = frontend.wait_for("ann", "ended", timeout=2)
    assert lines == ["bot: caught at the yield", f"bot: {Notice.FAILED.value}", "ended"]


@dataclass
class HoldsALock(State):
    lock: Any = None

    def run(self) -> Steps:
        yield Input("Name? ")
        return HoldsALock(threading.Lock())  # not plain data: cannot be saved


def test_a_state_that_cannot_be_saved_ends_its_conversation_with_an_apology(
    start_engine: StartEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="engine")
    journal = SqliteJournal(tmp_path / "state.sqlite3")
    try:
        scheduler, frontend = start_engine(HoldsALock, journal=journal)
        scheduler.begin("ann")
        scheduler.send("ann", "Ann")
        lines = frontend.wait_for("ann", "ended", timeout=2)
        scheduler.stop()
    finally:
        journal.close()
    assert lines == ["bot: Name?", f"bot: {Notice.FAILED.value}", "ended"]


class Halting(RecordingFrontend):
    def __init__(self) -> None:
        super().__init__()
        self.reasons: list[str] = []

    def halted(self, reason: str) -> None:
        self.reasons.append(reason)
        self._write("engine", ["halted"])


def test_a_journal_that_cannot_be_written_stops_the_engine_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class FullDisk(SqliteJournal):
        def commit(self, source: int | None) -> None:
            if self._ops:
                raise JournalError(f"{self.path}: cannot write the state file (disk is full)")

    caplog.set_level(logging.CRITICAL, logger="engine")
    journal = FullDisk(tmp_path / "state.sqlite3")
    frontend = Halting()
    scheduler = Scheduler(frontend, Quitter, journal=journal)
    try:
        scheduler.start()
        scheduler.begin("ann")
        frontend.wait_for("engine", "halted", timeout=2)
        assert frontend.lines("ann") == []  # nothing left the engine unjournaled
        assert scheduler.halted is not None and "disk is full" in scheduler.halted
    finally:
        scheduler.stop()
        journal.close()
    assert not [name for name in engine_threads() if name == "engine-scheduler"]


def test_a_batch_the_journal_lost_lets_every_conversation_go_and_the_engine_goes_on(
    tmp_path: Path,
) -> None:
    class LosesOneBatch(SqliteJournal):
        """A shared database's journal that loses the first batch with something in it."""

        lost = threading.Event()

        def commit(self, source: int | None) -> None:
            if self._ops and not self.lost.is_set():
                self._ops.clear()  # rolled back
                self.lost.set()
                raise JournalLost(f"{self.path}: lost the database (server closed the connection)")
            super().commit(source)

    journal = LosesOneBatch(tmp_path / "state.sqlite3")
    frontend = Halting()
    scheduler = Scheduler(frontend, Quitter, journal=journal)
    try:
        scheduler.start()
        scheduler.begin("ann")  # its batch is lost: nothing shown, the conversation let go
        assert journal.lost.wait(2)
        scheduler.begin("bob")
        frontend.wait_for("bob", "bot: Ready?", timeout=2)
        assert scheduler.halted is None and frontend.reasons == []
        assert frontend.lines("ann") == []
        assert not scheduler.is_running("ann") and scheduler.is_running("bob")
    finally:
        scheduler.stop()
        journal.close()
