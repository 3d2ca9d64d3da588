"""A state file written by the first release (format 1) opens and resumes after the upgrade.

``tests/fixtures/state_v1.db`` holds four conversations of
:class:`tests.flows_for_tests.Park`, parked at an ``Input``, a ``Choose``, a
``Call`` and a ``Sleep``, and six questions handed to a confirming frontend
but never confirmed (their kind stored as the method name ``ask``).
"""

from __future__ import annotations

import pickle
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from engine.commands import Choose, Input
from engine.frontend import Delivery
from engine.journal import SCHEMA_VERSION, JournalError, SqliteJournal
from engine.runner import Snapshot, fingerprint
from engine.scheduler import Scheduler
from engine.testing import RecordingFrontend
from tests import flows_for_tests
from tests.flows_for_tests import Park
from tests.support.engine import FORMAT_2, FakeClock

pytestmark = pytest.mark.usefixtures("no_engine_threads")

FIXTURE = Path(__file__).parent / "fixtures" / "state_v1.db"


class Confirming(RecordingFrontend):
    """Writes down receipts too, as a frontend that confirms delivery gets them."""

    confirms_delivery = True

    def __init__(self) -> None:
        super().__init__()
        self.receipts: list[int | None] = []

    def ask(self, key: str, question: Any, receipt: int | None = None) -> None:
        self.receipts.append(receipt)
        super().ask(key, question, receipt)
        self.sent(receipt)


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    path = tmp_path / "state.sqlite3"
    shutil.copyfile(FIXTURE, path)
    return path


def test_the_old_format_is_upgraded_in_place(old_file: Path) -> None:
    with closing(sqlite3.connect(old_file)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 1
    journal = SqliteJournal(old_file)
    try:
        kinds = {kind for _, _, kind, _ in journal.undelivered()}
        assert kinds == {Delivery.QUESTION}
    finally:
        journal.close()
    with closing(sqlite3.connect(old_file)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        stored = {row[0] for row in connection.execute("SELECT kind FROM outgoing")}
    assert stored == {"question"}


def test_conversations_parked_by_the_first_release_resume(old_file: Path) -> None:
    flows_for_tests.RELEASE.set()  # the Call parked in the file may now return
    clock = FakeClock(5000.0)
    frontend = Confirming()
    journal = SqliteJournal(old_file)
    scheduler = Scheduler(frontend, Park, journal=journal, clock=clock)
    scheduler.start()
    try:
        # The six unconfirmed questions go out again first, with receipts.
        frontend.wait_until(lambda: len(frontend.receipts) >= 6)
        assert frontend.receipts[:6] == [1, 2, 3, 4, 5, 6]
        # The Call parked at the crash runs again and the flow goes on.
        frontend.wait_for("call", "bot: call released")
        scheduler.send("input", "hello")
        assert frontend.wait_for("input", "ended")[-2:] == ["bot: said hello", "ended"]
        scheduler.send("choose", "1")
        assert frontend.wait_for("choose", "ended")[-2:] == ["bot: picked blue", "ended"]
        # The Sleep of an hour is slept again (format 1 kept no deadline).
        clock.now += 3600
        scheduler.send("probe", "wake the loop")
        assert frontend.wait_for("sleep", "ended")[-2:] == ["bot: woke", "ended"]
    finally:
        flows_for_tests.RELEASE.clear()
        scheduler.stop()
        journal.close()
    assert scheduler.running() == 0


def test_a_state_file_belongs_to_the_flow_that_wrote_it(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    journal = SqliteJournal(path)
    journal.claim("flows.weather:WeatherFlow")
    journal.claim("flows.weather:WeatherFlow")  # the same flow again: fine
    with pytest.raises(JournalError, match=(
        r"state.sqlite3: the state file belongs to the flow flows.weather:WeatherFlow, "
        r"not tests.flows_for_tests:Echo; run with --flow flows.weather:WeatherFlow"
    )):
        journal.claim("tests.flows_for_tests:Echo")
    journal.close()
    reopened = SqliteJournal(path)  # kept in the file
    with pytest.raises(JournalError):
        reopened.claim("tests.flows_for_tests:Echo")
    reopened.close()


def test_questions_pickled_before_timeouts_existed_load_without_one(old_file: Path) -> None:
    journal = SqliteJournal(old_file)
    try:
        questions = [item for _, _, _, item in journal.undelivered()]
    finally:
        journal.close()
    assert len(questions) == 6
    for question in questions:
        assert isinstance(question, (Input, Choose))
        assert question.timeout is None
        again = Input(question.prompt) if isinstance(question, Input) else Choose(
            question.prompt, question.options
        )
        assert question == again
        assert fingerprint(question) == fingerprint(again)




def test_a_format_2_file_is_upgraded_and_its_conversations_resume(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    snapshot = Snapshot.of(Park())
    steps = [("ann", 1, fingerprint(Input("Park where?")), "sleep", None)]
    with closing(sqlite3.connect(path)) as connection:
        connection.executescript(FORMAT_2)
        connection.execute(
            "INSERT INTO conversations VALUES (?, ?, ?, ?)",
            ("ann", snapshot.state_class, snapshot.fields, 0),
        )
        connection.execute("INSERT INTO batches VALUES (1, ?)", (pickle.dumps(steps),))
        # Typed ahead, kept as one pickled list; and the highest update id taken.
        connection.execute("INSERT INTO mailbox VALUES ('ann', ?)", (pickle.dumps(["a", "b"]),))
        connection.execute("INSERT INTO meta VALUES ('last_source', 41)")
        connection.commit()
    journal = SqliteJournal(path)
    try:
        [saved] = list(journal.unfinished())
        taken = journal.taken()
    finally:
        journal.close()
    assert saved.key == "ann"
    assert [step.value for step in saved.steps] == ["sleep"]
    assert saved.mailbox == ["a", "b"]  # a row each now, in order
    assert (41 in taken, 42 in taken) == (True, False)  # every id up to the highest was taken
    assert saved.deadline is None and saved.last_active is None  # format 2 kept no times
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        columns = {row[1] for row in connection.execute("PRAGMA table_info(batches)")}
        assert columns == {"id", "steps", "at"}
        assert connection.execute("SELECT count(*) FROM deadlines").fetchone()[0] == 0
        assert connection.execute("SELECT key, seq FROM waiting").fetchall() == [
            ("ann", 1), ("ann", 2),
        ]  # fmt: skip
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert "mailbox" not in tables
