"""Moving a bot's state from SQLite to PostgreSQL: ``python -m engine.sqlite_to_postgres``."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from engine import Input
from engine.commands import Location
from engine.journal import JournalError, SqliteJournal
from engine.postgres_journal import PostgresJournal
from engine.runner import Snapshot
from engine.sqlite_to_postgres import main
from tests.support.postgres_server import PostgresServer, closed_port
from tests.test_journal import CALLS, Round, _run_confirming

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    CALLS.clear()
    return tmp_path / "state.sqlite3"


def test_a_moved_bot_goes_on_where_it_was(
    state_file: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    frontend, journal, scheduler = _run_confirming(str(state_file))
    scheduler.begin("ann", source=1)
    scheduler.send("ann", "4", source=2)
    frontend.wait_for("ann", "bot: 1) quit")
    frontend.confirm_all()
    scheduler.send("ann", "continue", source=3)
    frontend.wait_for("ann", "bot: Number?")  # "round 1" and "Number?" never confirmed
    scheduler.stop()
    journal.close()

    assert main([str(state_file), postgres_url]) == 0
    assert capsys.readouterr().out.startswith(
        "copied 1 conversation(s), 2 unsent output(s) and the last update id (3)"
    )

    frontend, journal, scheduler = _run_confirming(postgres_url)
    try:
        assert isinstance(journal, PostgresJournal)
        assert scheduler.last_source == 3
        frontend.wait_for("ann", "bot: Number?")
        frontend.confirm_all()
        scheduler.send("ann", "5", source=3)  # redelivered by Telegram: skipped
        scheduler.send("ann", "6", source=4)
        lines = frontend.wait_for("ann", "bot: doubled: 12")
    finally:
        scheduler.stop()
        journal.close()
    assert lines[:4] == ["bot: round 1", "bot: Number?", "(restored)", "bot: doubled: 12"]
    assert CALLS == [4, 6]  # the first Call was not made again


def test_steps_and_waiting_messages_are_copied_as_they_are(
    state_file: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = SqliteJournal(state_file)
    journal.claim("tests.test_journal:Round")
    journal.stamp(1000.0)
    journal.entered("ann", Snapshot.of(Round(7)))
    journal.step("ann", Input("Number? "), "21", None)
    journal.step("ann", Input("Again? "), None, ValueError("bad"))
    journal.deadline("ann", 1060.0)
    journal.queued("ann", "first")
    journal.queued("ann", Location(51.5, -0.12))
    journal.entered("bob", Snapshot.of(Round(0)))
    journal.remember("7", b"kept for user 7")
    journal.took(40)
    journal.took(42)  # 41 has not come yet: it must still be taken after the move
    journal.commit(42)
    journal.close()

    assert main([str(state_file), postgres_url]) == 0
    capsys.readouterr()

    copied = PostgresJournal(postgres_url)
    try:
        saved = {each.key: each for each in copied.unfinished()}
        assert copied.recall("7") == b"kept for user 7"
        taken = copied.taken()
        assert (40 in taken, 41 in taken, 42 in taken) == (True, False, True)
        with pytest.raises(JournalError, match=r"belongs to the flow tests\.test_journal:Round"):
            copied.claim("flows.weather:WeatherFlow")
    finally:
        copied.close()
    assert sorted(saved) == ["ann", "bob"]
    ann = saved["ann"]
    assert ann.snapshot.state_class == "tests.test_journal:Round"
    assert pickle.loads(ann.snapshot.fields) == {"number": 7}
    assert (ann.deadline, ann.last_active) == (1060.0, 1000.0)
    assert [(s.fingerprint, s.value) for s in ann.steps] == [
        ("Input 'Number? '", "21"),
        ("Input 'Again? '", None),
    ]
    assert repr(ann.steps[1].error) == "ValueError('bad')"
    assert ann.mailbox == ["first", Location(51.5, -0.12)]
    assert saved["bob"].steps == [] and saved["bob"].mailbox == []


def test_a_database_that_already_holds_the_bots_state_is_refused(
    state_file: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    SqliteJournal(state_file).close()
    running = PostgresJournal(postgres_url)
    running.took(5)
    running.commit(5)  # the bot already ran on PostgreSQL
    running.close()
    assert main([str(state_file), postgres_url]) == 2
    error = capsys.readouterr().err
    assert error.endswith("bot 'default' already has state in this database; not overwriting it\n")
    assert error.count("\n") == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{missing}", "{url}"], "{missing}: no such state file"),
        (["{file}", "{file}"], "{file}: not a postgresql:// URL"),
        (["{file}", "postgresql://a:pw@127.0.0.1:{port}/x"], "cannot reach the server"),
        (["{damaged}", "{url}"], "damaged"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path,
    postgres_server: PostgresServer,
    arguments: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = {
        "missing": str(tmp_path / "missing.sqlite3"),
        "file": str(tmp_path / "state.sqlite3"),
        "damaged": str(tmp_path / "damaged.sqlite3"),
        "url": postgres_server.url("postgres"),
        "port": str(closed_port()),
    }
    SqliteJournal(names["file"]).close()
    Path(names["damaged"]).write_bytes(b"not a database" * 100)
    assert main([argument.format(**names) for argument in arguments]) == 2
    error = capsys.readouterr().err
    assert message.format(**names) in error
    assert error.startswith("error: ") and error.count("\n") == 1
    assert not Path(names["missing"]).exists()  # not created by asking


def test_runs_as_a_module(state_file: Path, postgres_url: str) -> None:
    SqliteJournal(state_file).close()
    result = subprocess.run(
        [sys.executable, "-m", "engine.sqlite_to_postgres", str(state_file), postgres_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("copied 0 conversation(s), 0 unsent output(s)")
    assert ":***@" in result.stdout  # the password is not printed
