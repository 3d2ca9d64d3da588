"""The journals: conversations survive a restart of the scheduler.

These tests run the real scheduler on a real state file, or a real
PostgreSQL database, stop it in the middle of conversations (as a crash would
leave them: nothing is ended), and start a new scheduler on the same state.
Tests taking `state` run on both backends; those taking `state_file` are
about SQLite files only.
"""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine import Call, Choose, Input, Print, Sleep, State
from engine.frontend import Delivery, Notice
from engine.journal import Journal, JournalError, SqliteJournal
from engine.journals import open_journal
from engine.postgres_journal import SCHEMA_VERSION, PostgresJournal, redact
from engine.runner import Snapshot
from engine.scheduler import MAILBOX_LIMIT, Scheduler
from engine.states import Steps
from engine.testing import RecordingFrontend
from tests.support.engine import Confirming
from tests.support.postgres_server import PostgresServer, closed_port

CALLS: list[int] = []


def double(number: int) -> int:
    """A side effect the tests count: it must not run again on replay."""
    CALLS.append(number)
    return number * 2


@dataclass
class Round(State):
    """Ask a number, double it in a Call, then continue or quit."""

    number: int = 0

    def run(self) -> Steps:
        yield Print(f"round {self.number}")
        text = yield Input("Number? ")
        doubled = yield Call(double, int(text))
        yield Print(f"doubled: {doubled}")
        if (yield Choose("Again?", ["continue", "quit"])) == "continue":
            return Round(self.number + 1)
        yield Print("bye")
        return None


@dataclass
class Napping(State):
    """Sleeps between two questions."""

    def run(self) -> Steps:
        yield Input("First? ")
        yield Sleep(0.2)
        yield Print("woke up")
        yield Input("Second? ")
        return None


class Running:
    """A scheduler on a state file, stopped without ending its conversations."""

    def __init__(
        self, state: str | Path, flow: Any = Round, mailbox_limit: int = MAILBOX_LIMIT
    ) -> None:
        self.frontend = RecordingFrontend()
        self.journal = open_journal(str(state))
        self.scheduler = Scheduler(
            self.frontend, flow, journal=self.journal, mailbox_limit=mailbox_limit
        )
        self.scheduler.start()

    def crash(self) -> None:
        self.scheduler.stop()
        self.journal.close()


@pytest.fixture
def state_file(tmp_path: Path) -> Iterator[Path]:
    CALLS.clear()
    yield tmp_path / "state.sqlite3"


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a journal keeps its state: a SQLite file, or a fresh PostgreSQL database."""
    CALLS.clear()
    if request.param == "sqlite":
        return str(tmp_path / "state.sqlite3")
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_a_question_pending_at_a_restart_is_simply_answered(state: str) -> None:
    first = Running(state)
    first.scheduler.begin("ann", source=1)
    first.scheduler.send("ann", "21", source=2)
    first.frontend.wait_for("ann", "bot: 1) quit")
    first.crash()

    second = Running(state)
    try:
        second.scheduler.send("ann", "quit", source=3)
        lines = second.frontend.wait_for("ann", "ended")
    finally:
        second.crash()
    assert lines == ["(restored)", "bot: bye", "ended"]  # nothing shown twice
    assert CALLS == [21]  # the Call was not run again


def test_an_update_already_taken_is_not_taken_again(state: str) -> None:
    first = Running(state)
    first.scheduler.begin("ann", source=10)
    first.scheduler.send("ann", "1", source=11)
    first.frontend.wait_for("ann", "bot: 1) quit")
    first.crash()

    second = Running(state)
    try:
        assert second.scheduler.last_source == 11
        second.scheduler.send("ann", "1", source=11)  # Telegram delivers it again
        second.scheduler.send("ann", "continue", source=12)
        lines = second.frontend.wait_for("ann", "bot: Number?")
    finally:
        second.crash()
    assert lines == ["(restored)", "bot: round 1", "bot: Number?"]


def test_a_pending_call_runs_again_after_a_restart(state: str) -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck(number: int) -> int:
        entered.set()
        release.wait(5)
        return number

    @dataclass
    class Waits(State):
        def run(self) -> Steps:
            text = yield Input("Number? ")
            value = yield Call(stuck, int(text))
            yield Print(f"got {value}")
            return None

    _register(Waits)
    first = Running(state, Waits)
    first.scheduler.begin("ann")
    first.scheduler.send("ann", "7")
    assert entered.wait(5)
    first.crash()  # the call is still running: abandoned
    release.set()

    second = Running(state, Waits)
    try:
        lines = second.frontend.wait_for("ann", "ended")
    finally:
        second.crash()
    assert lines == ["bot: got 7", "ended"]


def test_a_pending_sleep_is_slept_after_a_restart(state: str) -> None:
    first = Running(state, Napping)
    first.scheduler.begin("ann")
    first.scheduler.send("ann", "one")
    first.crash()

    second = Running(state, Napping)
    try:
        lines = second.frontend.wait_for("ann", "bot: Second?")
    finally:
        second.crash()
    assert lines == ["bot: woke up", "bot: Second?"]


def test_messages_waiting_in_a_mailbox_survive_a_restart(state: str) -> None:
    release = threading.Event()

    def slow(text: str) -> str:
        release.wait(5)
        return text

    @dataclass
    class Echo(State):
        def run(self) -> Steps:
            text = yield Input("Say: ")
            yield Print((yield Call(slow, text)))
            yield Print(f"then {(yield Input())}")
            yield Print(f"and {(yield Input())}")
            return None

    _register(Echo)
    first = Running(state, Echo)
    first.scheduler.begin("ann")
    for text in ["a", "b", "c"]:  # b and c wait while the call runs
        first.scheduler.send("ann", text)
    first.frontend.wait_until(lambda: first.scheduler.running() == 1)
    first.crash()
    release.set()

    second = Running(state, Echo)
    try:
        lines = second.frontend.wait_for("ann", "ended")
    finally:
        second.crash()
    assert lines == ["bot: a", "bot: then b", "bot: and c", "ended"]


def test_a_conversation_that_loops_keeps_a_small_journal(state: str) -> None:
    running = Running(state)
    scheduler = running.scheduler
    try:
        scheduler.begin("ann")
        for number in range(1000):  # typed ahead 40 rounds at a time, within the mailbox limit
            scheduler.send("ann", str(number))
            scheduler.send("ann", "continue")
            if number % 40 == 39:
                running.frontend.wait_for("ann", f"bot: round {number + 1}", timeout=30)
        running.frontend.wait_for("ann", "bot: round 1000", timeout=30)
        rows = _count_rows(running.journal)
    finally:
        running.crash()
    assert rows == {"conversations": 1, "steps": 0, "mailbox": 0}
    if not state.startswith("postgresql:"):
        assert Path(state).stat().st_size < 64 * 1024


def test_ended_conversations_are_removed(state: str) -> None:
    running = Running(state)
    try:
        running.scheduler.begin("ann")
        running.scheduler.send("ann", "1")
        running.scheduler.send("ann", "quit")
        running.scheduler.begin("bob")
        running.scheduler.cancel("bob")
        running.frontend.wait_for("ann", "ended")
        running.frontend.wait_for("bob", "ended")
        rows = _count_rows(running.journal)
    finally:
        running.crash()
    assert rows == {"conversations": 0, "steps": 0, "mailbox": 0}


# -- changed code ------------------------------------------------------------


@dataclass
class Before(State):
    def run(self) -> Steps:
        yield Input("Your name? ")
        yield Input("Your city? ")
        return None


@dataclass
class After(State):
    def run(self) -> Steps:
        yield Choose("Tea or coffee?", ["tea", "coffee"])  # asked where a name was
        return None


def test_a_changed_flow_starts_over_and_says_so(state: str) -> None:
    first = Running(state, Before)
    first.scheduler.begin("ann")
    first.scheduler.send("ann", "Ann")
    first.frontend.wait_for("ann", "bot: Your city?")
    first.crash()

    Before.run = After.run  # type: ignore[method-assign]  # the code is edited
    try:
        second = Running(state, After)
        try:
            lines = second.frontend.wait_for("ann", "bot: Tea or coffee?")
            second.scheduler.send("ann", "Ann")  # not fed to the new question
            lines = second.frontend.wait_for("ann", "bot: Try again")
        finally:
            second.crash()
    finally:
        Before.run = _BEFORE_RUN  # type: ignore[method-assign]
    assert lines[0] == "bot: This conversation could not go on after an update, so it starts over."


_BEFORE_RUN = Before.run


def test_a_removed_state_class_starts_over(state: str) -> None:
    @dataclass
    class Doomed(State):
        def run(self) -> Steps:
            yield Input("Still there? ")
            return None

    _register(Doomed)
    first = Running(state, Doomed)
    first.scheduler.begin("ann")
    first.frontend.wait_for("ann", "bot: Still there?")
    first.crash()
    del sys.modules[__name__].__dict__["Doomed"]  # the class is deleted from the code

    second = Running(state, Round)
    try:
        lines = second.frontend.wait_for("ann", "bot: Number?")
    finally:
        second.crash()
    assert lines == [
        "bot: This conversation could not go on after an update, so it starts over.",
        "bot: round 0",
        "bot: Number?",
    ]


# -- bad state files -----------------------------------------------------------


def test_a_damaged_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match=f"^{path}: .*damaged"):
        SqliteJournal(path)
    assert path.read_bytes() == b"this is not a database" * 100


def test_a_file_in_use_by_another_instance_is_refused(state_file: Path) -> None:
    first = SqliteJournal(state_file)
    try:
        with pytest.raises(JournalError, match="in use by another running instance"):
            SqliteJournal(state_file)
    finally:
        first.close()


def test_a_read_only_file_is_refused(state_file: Path) -> None:
    SqliteJournal(state_file).close()
    before = state_file.read_bytes()
    os.chmod(state_file, 0o444)
    with pytest.raises(JournalError, match="read-only"):
        SqliteJournal(state_file)
    assert state_file.read_bytes() == before


def test_a_file_from_a_newer_version_is_refused(state_file: Path) -> None:
    SqliteJournal(state_file).close()
    with closing(sqlite3.connect(state_file)) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(JournalError, match="newer version"):
        SqliteJournal(state_file)


def test_another_programs_database_is_refused(state_file: Path) -> None:
    with closing(sqlite3.connect(state_file)) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER)")
        connection.commit()
    with pytest.raises(JournalError, match="not a state file"):
        SqliteJournal(state_file)
    with closing(sqlite3.connect(state_file)) as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == [("invoices",)]


# -- bad PostgreSQL databases ---------------------------------------------------------


def _refusal(url: str, **options: Any) -> str:
    """The one-line JournalError opening `url` gives."""
    with pytest.raises(JournalError) as refused:
        PostgresJournal(url, **options)
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_a_malformed_url_is_refused_without_showing_its_password() -> None:
    message = _refusal("postgresql://ann:s3cret@db.example:notaport/bot")
    assert message == (
        "postgresql://ann:***@db.example:notaport/bot: not a valid PostgreSQL URL "
        "(port 'notaport' is not a number)"
    )
    message = _refusal("postgresql://ann:s3cret@[db.example/bot")  # libpq quotes the URL
    assert "not a valid PostgreSQL URL" in message
    assert "s3cret" not in message


def test_a_wrong_password_is_refused(postgres_server: PostgresServer, postgres_url: str) -> None:
    database = postgres_url.rpartition("/")[2]
    url = postgres_server.url(database, password="not-the-password")
    message = _refusal(url)
    assert message.startswith(f"{redact(url)}: login refused (password authentication failed")
    assert "not-the-password" not in message


def test_an_unreachable_server_is_refused_at_once() -> None:
    url = f"postgresql://ann:pw@127.0.0.1:{closed_port()}/bot"
    assert "cannot reach the server (Connection refused" in _refusal(url)


def test_a_missing_database_is_refused(postgres_server: PostgresServer) -> None:
    message = _refusal(postgres_server.url("no_such_database"))
    assert message.endswith('database "no_such_database" does not exist')


def test_a_user_without_permissions_is_refused(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    database = postgres_url.rpartition("/")[2]
    postgres_server.execute(f"CREATE ROLE {database}_reader LOGIN PASSWORD 'pw'")
    reader = postgres_server.url(database, user=f"{database}_reader", password="pw")
    # On an empty database: it may not create the journal's schema.
    assert "missing permissions (permission denied for database" in _refusal(reader)
    # On one set up by its owner: it may not use the tables.
    PostgresJournal(postgres_url).close()
    assert "missing permissions (permission denied for schema yielded)" in _refusal(reader)


def test_a_database_from_a_newer_version_is_refused_and_left_alone(postgres_url: str) -> None:
    PostgresJournal(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("UPDATE yielded.meta SET value = '99' WHERE name = 'schema_version'")
    newer = f"written by a newer version (schema 99, this one reads up to {SCHEMA_VERSION})"
    assert newer in _refusal(postgres_url)
    with psycopg.connect(postgres_url) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'yielded'"
        ).fetchone()
    assert tables == (11,)  # none added, none dropped


def test_a_bot_in_use_by_another_instance_is_refused_until_it_stops(postgres_url: str) -> None:
    first = PostgresJournal(postgres_url)
    try:
        assert "bot 'default' is in use by another running instance" in _refusal(postgres_url)
        PostgresJournal(postgres_url, bot="another").close()  # other bots share the database
    finally:
        first.close()
    PostgresJournal(postgres_url).close()


def test_bots_sharing_a_database_keep_their_own_update_ids(postgres_url: str) -> None:
    for bot, source in (("first", 10), ("second", 20)):
        journal = PostgresJournal(postgres_url, bot=bot)
        journal.took(source)
        journal.commit(source)
        journal.close()
    for bot, source in (("first", 10), ("second", 20)):
        journal = PostgresJournal(postgres_url, bot=bot)
        try:
            assert journal.last_source() == source
        finally:
            journal.close()


def test_open_journal_picks_the_backend_from_the_spec(tmp_path: Path, postgres_url: str) -> None:
    assert isinstance(open_journal(str(tmp_path / "state.sqlite3")), SqliteJournal)
    postgres_style = "postgres://" + postgres_url.removeprefix("postgresql://")
    for url in (postgres_url, postgres_style):
        journal = open_journal(url)
        try:
            assert isinstance(journal, PostgresJournal)
        finally:
            journal.close()


def test_a_result_that_cannot_be_saved_restarts_that_conversation(state: str) -> None:
    @dataclass
    class Lock(State):
        def run(self) -> Steps:
            lock = yield Call(threading.Lock)  # a lock cannot be pickled
            yield Input(f"Got {type(lock).__name__}. Name? ")
            return None

    _register(Lock)
    first = Running(state, Lock)
    first.scheduler.begin("ann")
    first.frontend.wait_for("ann", "bot: Got lock. Name?")
    first.crash()

    second = Running(state, Lock)
    try:
        lines = second.frontend.wait_for("ann", "bot: Got lock. Name?")
    finally:
        second.crash()
    assert lines[0] == "bot: This conversation could not go on after an update, so it starts over."


def _register(cls: type) -> None:
    """Make a state class defined in a test importable by name, as a real one is."""
    cls.__qualname__ = cls.__name__
    setattr(sys.modules[__name__], cls.__name__, cls)


def _count_rows(journal: Journal) -> dict[str, int]:
    """Rows per table; "steps" are the rows holding steps (SQLite keeps them in batches)."""
    tables = {"conversations": "conversations", "steps": "batches", "mailbox": "waiting"}
    if isinstance(journal, PostgresJournal):
        tables = {name: f"yielded.{table}" for name, table in tables.items()}
        tables["steps"] = "yielded.steps"
    return {name: _count(journal, table) for name, table in tables.items()}


def _count(journal: Journal, table: str) -> int:
    assert isinstance(journal, (SqliteJournal, PostgresJournal))
    row = journal._connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_steps_kept_for_a_waiting_user_survive_while_others_move_on(state: str) -> None:
    first = Running(state, mailbox_limit=100 + 1)  # bob's script is typed ahead
    first.scheduler.begin("ann")
    first.scheduler.send("ann", "500")  # ann's steps wait in early batches
    first.frontend.wait_for("ann", "bot: 1) quit")
    first.scheduler.begin("bob")
    for number in range(50):
        first.scheduler.send("bob", str(number))
        first.scheduler.send("bob", "continue")
    first.frontend.wait_for("bob", "bot: round 50")
    batches = _count_rows(first.journal)["steps"]
    first.crash()
    # Only the batches holding ann's two steps: her answer, and the Call's
    # result, which came back in a later batch. Bob's 100 steps are gone.
    assert batches == 2

    second = Running(state)
    try:
        second.scheduler.send("ann", "quit")
        lines = second.frontend.wait_for("ann", "ended")
    finally:
        second.crash()
    assert lines == ["(restored)", "bot: bye", "ended"]
    assert CALLS.count(500) == 1


# -- outputs confirmed by the frontend ------------------------------------------




def _run_confirming(state: str) -> tuple[Confirming, Journal, Scheduler]:
    frontend = Confirming()
    journal = open_journal(state)
    scheduler = Scheduler(frontend, Round, journal=journal)
    scheduler.start()
    return frontend, journal, scheduler


def test_outputs_not_confirmed_before_a_crash_go_out_again(state: str) -> None:
    frontend, journal, scheduler = _run_confirming(state)
    scheduler.begin("ann")
    scheduler.send("ann", "4")
    frontend.wait_for("ann", "bot: 1) quit")
    frontend.confirm_all()  # everything so far is out...
    scheduler.send("ann", "continue")
    frontend.wait_for("ann", "bot: Number?")  # ...but not "round 1" and "Number?"
    scheduler.stop()
    journal.close()

    frontend, journal, scheduler = _run_confirming(state)
    try:
        lines = frontend.wait_for("ann", "bot: Number?")
        frontend.confirm_all()
        scheduler.send("ann", "5")
        lines = frontend.wait_for("ann", "bot: doubled: 10")
    finally:
        scheduler.stop()
        journal.close()
    # What was not out goes out first, then the conversation goes on.
    assert lines[:4] == ["bot: round 1", "bot: Number?", "(restored)", "bot: doubled: 10"]


def test_confirmed_outputs_do_not_go_out_again(state: str) -> None:
    frontend, journal, scheduler = _run_confirming(state)
    scheduler.begin("ann")
    frontend.wait_for("ann", "bot: Number?")
    frontend.confirm_all()
    scheduler.send("ann", "4")  # a batch that also takes the confirmations
    frontend.wait_for("ann", "bot: 1) quit")
    frontend.confirm_all()
    deadline = time.monotonic() + 5
    while _count_outgoing(journal) and time.monotonic() < deadline:
        time.sleep(0.01)  # the confirmations are journaled in the next batch
    assert _count_outgoing(journal) == 0
    scheduler.stop()
    journal.close()

    frontend, journal, scheduler = _run_confirming(state)
    try:
        scheduler.send("ann", "quit")
        lines = frontend.wait_for("ann", "ended")
    finally:
        scheduler.stop()
        journal.close()
    assert lines == ["(restored)", "bot: bye", "ended"]


def _count_outgoing(journal: Journal) -> int:
    postgres = isinstance(journal, PostgresJournal)
    return _count(journal, "yielded.outgoing" if postgres else "outgoing")


# -- what both journals keep since format 3: the flow, memory, schema 1 upgraded ----


def test_a_journal_belongs_to_the_flow_that_wrote_it(state: str) -> None:
    journal = open_journal(state)
    try:
        journal.claim("flows.weather:WeatherFlow")
        journal.claim("flows.weather:WeatherFlow")  # the same flow again: fine
    finally:
        journal.close()
    reopened = open_journal(state)
    try:
        with pytest.raises(JournalError) as refused:
            reopened.claim("tests.flows_for_tests:Echo")
    finally:
        reopened.close()
    assert "belongs to the flow flows.weather:WeatherFlow, not tests.flows_for_tests:Echo" in (
        str(refused.value)
    )
    assert "\n" not in str(refused.value)


def test_memory_is_read_back_within_its_batch_and_after_a_restart(state: str) -> None:
    journal = open_journal(state)
    try:
        journal.remember("7", b"kept")
        assert journal.recall("7") == b"kept"  # before the commit
        journal.commit(None)
        journal.remember("8", b"other")
        journal.remember("8", None)  # forgotten within the batch
        journal.commit(None)
    finally:
        journal.close()
    journal = open_journal(state)
    try:
        assert (journal.recall("7"), journal.recall("8")) == (b"kept", None)
        journal.remember("7", None)
        journal.commit(None)
        assert journal.recall("7") is None
    finally:
        journal.close()


def test_a_note_or_an_output_that_cannot_be_kept_is_logged_and_left_out(
    state: str, caplog: pytest.LogCaptureFixture
) -> None:
    unpicklable = threading.Lock()
    journal = open_journal(state)
    try:
        with caplog.at_level(logging.WARNING, logger="engine"):
            journal.note("ann", "where", unpicklable)
            journal.outgoing(1, "ann", Delivery.MESSAGE, unpicklable)
            journal.outgoing(2, "ann", Delivery.MESSAGE, Print("kept"))
        journal.commit(None)
    finally:
        journal.close()
    journal = open_journal(state)
    try:
        assert [(receipt, item) for receipt, _, _, item in journal.undelivered()] == [
            (2, Print("kept"))
        ]
    finally:
        journal.close()
    warnings = [record.getMessage() for record in caplog.records]
    assert "conversation ann: cannot keep the note where" in warnings[0]
    assert "conversation ann: cannot keep <unlocked _thread.lock" in warnings[1]
    assert "until sent" in warnings[1] and len(warnings) == 2


#: The tables of the first PostgreSQL journal (schema 1), as it created them.
_POSTGRES_SCHEMA_1 = """
CREATE SCHEMA yielded;
CREATE TABLE yielded.meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE yielded.bots (bot TEXT PRIMARY KEY, last_source BIGINT);
CREATE TABLE yielded.conversations (bot TEXT NOT NULL, key TEXT NOT NULL,
    state_class TEXT NOT NULL, state_fields BYTEA NOT NULL, PRIMARY KEY (bot, key));
CREATE TABLE yielded.steps (bot TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, answer BYTEA NOT NULL, PRIMARY KEY (bot, key, seq));
CREATE TABLE yielded.mailbox (bot TEXT NOT NULL, key TEXT NOT NULL, texts TEXT[] NOT NULL,
    PRIMARY KEY (bot, key));
CREATE TABLE yielded.outgoing (bot TEXT NOT NULL, receipt BIGINT NOT NULL, key TEXT NOT NULL,
    kind TEXT NOT NULL, item BYTEA NOT NULL, PRIMARY KEY (bot, receipt));
INSERT INTO yielded.meta VALUES ('schema_version', '1');
INSERT INTO yielded.bots VALUES ('default', 12);
"""


def test_a_schema_1_database_is_upgraded_and_its_conversations_resume(postgres_url: str) -> None:
    CALLS.clear()
    fields = pickle.dumps({"number": 3})
    answer = pickle.dumps(("21", None))
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(_POSTGRES_SCHEMA_1.encode())
        connection.execute(
            "INSERT INTO yielded.conversations VALUES ('default', 'ann', %s, %s)",
            ("tests.test_journal:Round", fields),
        )
        connection.execute(
            "INSERT INTO yielded.steps VALUES ('default', 'ann', 1, %s, %s)",
            ("Input 'Number? '", answer),
        )
        connection.execute(
            "INSERT INTO yielded.mailbox VALUES ('default', 'ann', ARRAY['continue'])"
        )
    running = Running(postgres_url)
    try:
        assert running.scheduler.last_source == 12
        lines = running.frontend.wait_for("ann", "bot: Number?")
    finally:
        running.crash()
    # The answer 21 replays (the Call runs: it was never recorded), then the
    # waiting "continue" answers "Again?".
    assert lines == ["bot: doubled: 42", "bot: round 4", "bot: Number?"]
    assert CALLS == [21]
    with psycopg.connect(postgres_url) as connection:
        version = connection.execute(
            "SELECT value FROM yielded.meta WHERE name = 'schema_version'"
        ).fetchone()
    assert version == (str(SCHEMA_VERSION),)


def test_positions_and_notes_are_the_same_after_a_restart_and_go_with_the_conversation(
    state: str,
) -> None:
    journal = open_journal(state)
    journal.entered("ann", Snapshot("tests.test_journal.Round", b"x"))
    journal.step("ann", Input("Number? "), "2", None)
    journal.entered("bob", Snapshot("tests.test_journal.Round", b"x"))
    journal.note("ann", "buttons", ("abc", 7))
    journal.note("ann", "route", (3, "Ann"))
    journal.note("ann", "gone", 1)
    journal.commit(None)
    journal.note("ann", "gone", None)
    journal.commit(None)
    ann, bob = journal.position("ann"), journal.position("bob")
    assert 0 not in (ann, bob)
    journal.close()

    again = open_journal(state)
    saved = {conversation.key: conversation for conversation in again.unfinished()}
    assert saved["ann"].notes == {"buttons": ("abc", 7), "route": (3, "Ann")}
    assert saved["bob"].notes == {}
    assert (again.position("ann"), again.position("bob")) == (ann, bob)
    # Every step and every state entered moves a conversation on; never back.
    again.step("ann", Choose("Again?", ["continue", "quit"]), "continue", None)
    moved = again.position("ann")
    again.entered("ann", Snapshot("tests.test_journal.Round", b"y"))
    assert ann < moved < again.position("ann")
    last = again.position("ann")
    again.ended("ann")
    again.entered("ann", Snapshot("tests.test_journal.Round", b"x"))  # begun anew
    assert again.position("ann") > last
    again.commit(None)
    again.ended("ann")
    again.commit(None)
    again.close()

    third = open_journal(state)
    assert [conversation.key for conversation in third.unfinished()] == ["bob"]
    third.entered("ann", Snapshot("tests.test_journal.Round", b"x"))  # after the restart
    assert third.position("ann") > last
    third.close()


# -- update ids out of order; messages typed ahead ---------------------------------


@dataclass
class Echoing(State):
    """Says back every message, for ever."""

    def run(self) -> Steps:
        while True:
            text = yield Input("Next?")
            yield Print(f"got {text}")


def test_updates_taken_out_of_order_are_each_taken_once_across_a_restart(state: str) -> None:
    first = Running(state, Echoing)
    first.scheduler.begin("ann", source=10)
    first.scheduler.send("ann", "b", source=12)  # another chat's 11 is still on its way
    first.scheduler.send("ann", "a", source=11)
    first.scheduler.send("ann", "b again", source=12)  # Telegram's retry
    first.scheduler.send("ann", "d", source=14)  # 13 is on its way when the bot stops
    first.frontend.wait_for("ann", "bot: got d")
    first.crash()

    second = Running(state, Echoing)
    try:
        for source, text in ((10, "start again"), (11, "a again"), (12, "b again"), (14, "d")):
            second.scheduler.send("ann", text, source=source)  # all redelivered after the restart
        second.scheduler.send("ann", "c", source=13)
        second.scheduler.send("ann", "e", source=15)
        lines = second.frontend.wait_for("ann", "bot: got e")
    finally:
        second.crash()
    assert first.frontend.lines("ann") == [
        "bot: Next?", "bot: got b", "bot: Next?", "bot: got a", "bot: Next?", "bot: got d",
        "bot: Next?",
    ]  # fmt: skip
    assert lines == ["(restored)", "bot: got c", "bot: Next?", "bot: got e", "bot: Next?"]


@dataclass
class Busy(State):
    """Asks once, then sleeps an hour while its user types ahead, then answers each message."""

    def run(self) -> Steps:
        yield Input("Go?")
        yield Sleep(3600)
        while True:
            text = yield Input("Next?")
            yield Print(f"got {text.split()[0]}")


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _bytes_in(value: Any) -> int:
    """The bytes of the blobs (pickled values) a journal write carries."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(_bytes_in(item) for item in value)
    return 0


def _counting_writes(journal: Journal) -> list[int]:
    """Count the bytes `journal` hands its database in each write (a list of one total)."""
    assert isinstance(journal, (SqliteJournal, PostgresJournal))
    written = [0]
    write = journal._write

    def counted(ops: Any) -> None:
        written[0] += _bytes_in(ops)
        write(ops)

    journal._write = counted  # type: ignore[method-assign]
    return written


def _on_clocks(state: str, wall: float) -> tuple[Scheduler, RecordingFrontend, Journal]:
    """A scheduler driven batch by batch with run_once, on fake clocks."""
    frontend = RecordingFrontend()
    journal = open_journal(state)
    scheduler = Scheduler(
        frontend, Busy, journal=journal, workers=0, clock=_Clock(wall), wall_clock=_Clock(wall)
    )
    assert scheduler.open()
    return scheduler, frontend, journal


def test_typed_ahead_messages_are_journaled_once_each_capped_and_kept_in_order(
    state: str,
) -> None:
    _register(Busy)
    scheduler, frontend, journal = _on_clocks(state, 1000.0)
    written = _counting_writes(journal)
    try:
        scheduler.begin("ann")
        scheduler.send("ann", "go")
        scheduler.run_once(0)
        assert frontend.lines("ann") == ["bot: Go?"]  # and now it sleeps
        before = written[0]
        texts = [f"m{number:03} " + "x" * 4000 for number in range(300)]
        for text in texts:  # a burst: each message a batch of its own, as on a busy bot
            scheduler.send("ann", text)
            scheduler.run_once(0)
        typed = written[0] - before
    finally:
        journal.close()
    kept = sum(len(text) for text in texts[: scheduler.mailbox_limit])
    # Each kept message written once (plus a little per batch); dropped ones not at all.
    assert kept < typed < kept * 1.1
    assert frontend.lines("ann") == ["bot: Go?", f"bot: {Notice.TOO_MANY_WAITING.value}"]

    # After a restart the hour is over: the kept messages are answered, in order.
    scheduler, frontend, journal = _on_clocks(state, 1000.0 + 3601)
    try:
        scheduler.run_once(0)
    finally:
        journal.close()
    answers = [line for line in frontend.lines("ann") if line.startswith("bot: got")]
    assert answers == [f"bot: got m{number:03}" for number in range(100)]


def test_once_idle_the_state_file_alone_holds_every_conversation(state_file: Path) -> None:
    # Losing the -wal file then loses nothing: a copy of the state file
    # without it (a careless backup, a -wal cut by a disk fault) is whole.
    journal = SqliteJournal(state_file)
    scheduler = Scheduler(RecordingFrontend(), Round, journal=journal, workers=0)
    try:
        scheduler.begin("ann")
        scheduler.send("ann", "21")
        while scheduler.has_events():
            scheduler.run_once(wait=0)
        scheduler.run_once(wait=0)  # nothing came: idle
        copy = state_file.with_name("copy.sqlite3")
        copy.write_bytes(state_file.read_bytes())
    finally:
        journal.close()
    alone = SqliteJournal(copy)
    try:
        assert [saved.key for saved in alone.unfinished()] == ["ann"]
    finally:
        alone.close()
