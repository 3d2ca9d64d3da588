"""What the scheduler tells a journal, and the journal that keeps nothing.

A conversation is deterministic given the values sent into its generator, so
a journal only has to keep, per conversation, its latest state snapshot and
the values sent in since; replaying them into a fresh generator rebuilds it.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.commands import Call, Command
from engine.states import State, snapshot

log = logging.getLogger(__name__)


def fingerprint(command: Command) -> str:
    """What must stay the same for a recorded value to answer `command` again.

    A ``Call`` is named by its function, not its arguments: an argument such
    as a session object has no stable text, and the function says enough.
    """
    if isinstance(command, Call):
        module = getattr(command.fn, "__module__", None) or "?"
        return f"Call {module}.{command.name}"
    return repr(command)


@dataclass(slots=True)
class Step:
    """A value (or an exception) sent into a generator in answer to a command."""

    fingerprint: str
    value: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class Saved:
    """An unfinished conversation as the journal kept it."""

    key: str
    state_class: str
    state_fields: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    mailbox: list[str] = field(default_factory=list)


class Journal:
    """The journal interface, and the in-memory engine's: it keeps nothing.

    The scheduler calls these on its thread, inside one transaction per batch
    of inbox events, and calls :meth:`commit` before anything from that batch
    leaves the engine (a message, a ``Call``).
    """

    def entered(self, key: str, state: State) -> None:
        """`key` began `state`: snapshot it; earlier steps are no longer needed."""

    def step(self, key: str, command: Command, value: Any, error: BaseException | None) -> None:
        """`value` (or `error`) is about to be sent in, answering `command`."""

    def queued(self, key: str, text: str) -> None:
        """A message arrived while `key` was busy; it waits in its mailbox."""

    def dequeued(self, key: str) -> None:
        """The oldest message in `key`'s mailbox was taken."""

    def ended(self, key: str) -> None:
        """`key` is over: forget it."""

    def commit(self, source: int | None) -> None:
        """Make the batch durable; `source` is the highest update id it took."""

    def last_source(self) -> int | None:
        """The highest update id ever committed (to skip redelivered updates)."""
        return None

    def unfinished(self) -> Iterator[Saved]:
        """Every conversation to rebuild after a restart."""
        return iter(())

    def close(self) -> None:
        """Release the file."""


class JournalError(Exception):
    """The state file cannot be used; the message names the file and why."""


#: The file format this code writes. A file with a higher number was written
#: by a newer version and is refused rather than misread.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (
    key TEXT PRIMARY KEY, state_class TEXT NOT NULL, state_fields BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS steps (
    key TEXT NOT NULL, seq INTEGER NOT NULL, fingerprint TEXT NOT NULL,
    value BLOB, error BLOB, PRIMARY KEY (key, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mailbox (
    key TEXT NOT NULL, seq INTEGER NOT NULL, text TEXT NOT NULL, PRIMARY KEY (key, seq)
) WITHOUT ROWID;
"""

_SAVE_STATE = "INSERT OR REPLACE INTO conversations VALUES (?, ?, ?)"
_DROP_STEPS = "DELETE FROM steps WHERE key = ?"
_ADD_STEP = "INSERT INTO steps VALUES (?, ?, ?, ?, ?)"
_ADD_MAIL = "INSERT INTO mailbox VALUES (?, ?, ?)"
_TAKE_MAIL = (
    "DELETE FROM mailbox WHERE key = ?1 AND seq = (SELECT MIN(seq) FROM mailbox WHERE key = ?1)"
)
_DROP_CONVERSATION = "DELETE FROM conversations WHERE key = ?"
_DROP_MAILBOX = "DELETE FROM mailbox WHERE key = ?"
_UNREADABLE = "(a value that could not be saved or read back)"


class SqliteJournal(Journal):
    """A journal in one SQLite file (WAL), owned by one process at a time.

    Writes are buffered and run in order at :meth:`commit`, in one
    transaction: the scheduler commits once per batch of inbox events, so a
    busy bot pays for one commit per batch, not one per message.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._ops: list[tuple[str, tuple[Any, ...]]] = []
        self._step_seq: dict[str, int] = {}
        self._mail_seq: dict[str, int] = {}
        self._connection = self._open()

    # -- opening, with a one-line reason for every way a file can be bad ----

    def _open(self) -> sqlite3.Connection:
        exists = os.path.exists(self.path)
        if exists and not _writable(self.path):
            raise JournalError(f"{self.path}: the state file is read-only")
        try:
            connection = sqlite3.connect(
                self.path, timeout=0.5, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise JournalError(f"{self.path}: cannot open the state file ({error})") from None
        try:
            self._prepare(connection)
        except sqlite3.DatabaseError as error:
            connection.close()
            raise JournalError(f"{self.path}: {_explain(error)}") from None
        except JournalError:
            connection.close()
            raise
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        # Exclusive locking: a second bot on the same file is refused at once
        # instead of both answering the same users.
        connection.execute("PRAGMA locking_mode = EXCLUSIVE")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path}: written by a newer version (format {version}, "
                f"this one reads up to {SCHEMA_VERSION}); not touching it"
            )
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if version == 0 and tables:
            raise JournalError(f"{self.path}: not a state file of this program; not touching it")
        if connection.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise JournalError(f"{self.path}: cannot switch the state file to WAL mode")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("COMMIT")  # the lock stays: locking_mode is EXCLUSIVE
        connection.executescript(_SCHEMA)  # executescript commits first
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("PRAGMA quick_check").fetchone()

    # -- recording ------------------------------------------------------------

    def entered(self, key: str, state: State) -> None:
        """Save the new state; steps of the previous ones are dropped."""
        class_path, fields = snapshot(state)
        self._ops.append((_SAVE_STATE, (key, class_path, pickle.dumps(fields, _PROTOCOL))))
        self._ops.append((_DROP_STEPS, (key,)))

    def step(self, key: str, command: Command, value: Any, error: BaseException | None) -> None:
        """Record the value about to be sent in."""
        seq = self._step_seq[key] = self._step_seq.get(key, 0) + 1
        print_ = fingerprint(command)
        try:
            blob = None if value is None else pickle.dumps(value, _PROTOCOL)
            error_blob = None if error is None else pickle.dumps(error, _PROTOCOL)
        except Exception as failure:
            log.warning("conversation %s: cannot save %r (%s)", key, command, failure)
            print_, blob, error_blob = _UNREADABLE, None, None
        self._ops.append((_ADD_STEP, (key, seq, print_, blob, error_blob)))

    def queued(self, key: str, text: str) -> None:
        """Keep a waiting message."""
        seq = self._mail_seq[key] = self._mail_seq.get(key, 0) + 1
        self._ops.append((_ADD_MAIL, (key, seq, text)))

    def dequeued(self, key: str) -> None:
        """Drop the oldest waiting message."""
        self._ops.append((_TAKE_MAIL, (key,)))

    def ended(self, key: str) -> None:
        """Forget the conversation."""
        self._step_seq.pop(key, None)
        self._mail_seq.pop(key, None)
        for statement in (_DROP_CONVERSATION, _DROP_STEPS, _DROP_MAILBOX):
            self._ops.append((statement, (key,)))

    def commit(self, source: int | None) -> None:
        """Run the buffered writes in one transaction and commit it."""
        if not self._ops and source is None:
            return
        ops, self._ops = self._ops, []
        if source is not None:
            ops.append(("INSERT OR REPLACE INTO meta VALUES ('last_source', ?)", (source,)))
        run = self._connection.executemany
        self._connection.execute("BEGIN")
        try:
            # Consecutive writes of one kind go in one executemany call.
            for statement, group in itertools.groupby(ops, key=lambda op: op[0]):
                run(statement, [params for _, params in group])
            self._connection.execute("COMMIT")
        except sqlite3.Error as error:
            self._connection.execute("ROLLBACK")
            raise JournalError(f"{self.path}: cannot write the state file ({error})") from None

    # -- reading back -----------------------------------------------------------

    def last_source(self) -> int | None:
        """The highest update id committed."""
        row = self._connection.execute(
            "SELECT value FROM meta WHERE name = 'last_source'"
        ).fetchone()
        return None if row is None else int(row[0])

    def unfinished(self) -> Iterator[Saved]:
        """Every saved conversation, with its steps and waiting messages in order."""
        query = self._connection.execute
        saved: dict[str, Saved] = {}
        for key, class_path, fields in query("SELECT * FROM conversations"):
            try:
                state_fields = pickle.loads(fields)
            except Exception:
                class_path, state_fields = _UNREADABLE, {}
            saved[key] = Saved(key, class_path, state_fields)
        for key, seq, print_, value, error in query("SELECT * FROM steps ORDER BY key, seq"):
            if key in saved:
                saved[key].steps.append(_read_step(print_, value, error))
                self._step_seq[key] = seq
        for key, seq, text in query("SELECT * FROM mailbox ORDER BY key, seq"):
            if key in saved:
                saved[key].mailbox.append(text)
                self._mail_seq[key] = seq
        return iter(saved.values())

    def close(self) -> None:
        """Write what is buffered and close the file."""
        try:
            self.commit(None)
        finally:
            self._connection.close()


_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _read_step(print_: str, value: bytes | None, error: bytes | None) -> Step:
    try:
        return Step(
            print_,
            None if value is None else pickle.loads(value),
            None if error is None else pickle.loads(error),
        )
    except Exception:  # a class that is gone or changed: the flow must start over
        return Step(_UNREADABLE)


def _writable(path: str) -> bool:
    # Checked by the permission bits too: root may write anything, but a file
    # someone made read-only should not be changed behind their back.
    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & 0o222)


def _explain(error: sqlite3.DatabaseError) -> str:
    text = str(error)
    if "locked" in text:
        return "the state file is in use by another running instance"
    if "not a database" in text or "malformed" in text:
        return "the state file is damaged (not a valid SQLite database); not touching it"
    if "readonly" in text:
        return "the state file is read-only"
    return f"cannot use the state file ({text})"
