"""What the scheduler tells a journal, and the journal that keeps nothing.

A conversation is deterministic given the values sent into its generator, so
a journal only has to keep, per conversation, its latest state snapshot and
the values sent in since; replaying them into a fresh generator rebuilds it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.commands import Command
from engine.frontend import Delivery
from engine.runner import Snapshot, Step, fingerprint
from engine.sources import UNCHANGED, Taken

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Saved:
    """An unfinished conversation as the journal kept it."""

    key: str
    snapshot: Snapshot
    steps: list[Step] = field(default_factory=list)
    mailbox: list[Any] = field(default_factory=list)  # answers: text or Answer values
    #: The wall-clock time its pending Sleep or question is due, if it has one.
    deadline: float | None = None
    #: The wall-clock time of its last recorded step or state (``None``: not known).
    last_active: float | None = None
    #: What the frontend noted for it (:meth:`Journal.note`), by name.
    notes: dict[str, Any] = field(default_factory=dict)


class Journal:
    """The journal interface, and the in-memory engine's: it keeps nothing.

    The scheduler calls these on its thread, inside one transaction per batch
    of inbox events, and calls :meth:`commit` before anything from that batch
    leaves the engine (a message, a ``Call``).
    """

    def entered(self, key: str, snapshot: Snapshot) -> None:
        """`key` began a new state: keep its `snapshot`; earlier steps are no longer needed."""

    def step(self, key: str, command: Command, value: Any, error: BaseException | None) -> None:
        """`value` (or `error`) is about to be sent in, answering `command`."""

    def queued(self, key: str, text: Any) -> None:
        """A message (text or an Answer) arrived while `key` was busy; it waits in its mailbox."""

    def dequeued(self, key: str) -> None:
        """The oldest message in `key`'s mailbox was taken."""

    def ended(self, key: str) -> None:
        """`key` is over: forget it."""

    def deadline(self, key: str, when: float) -> None:
        """`key` waits on a timer (a Sleep, a question's timeout) due at wall-clock `when`.

        Kept until `key` takes its next step, enters a state or ends, so after
        a restart the timer fires at its original moment.
        """

    def stamp(self, when: float) -> None:
        """The wall-clock time of the batch being recorded: the last activity it shows."""

    def position(self, key: str) -> int:
        """Where `key`'s conversation is: the same after a restart, changed by every step.

        Every state entered and every step recorded gives a higher number
        (never one an earlier conversation of `key` had), so a frontend can
        tell a question from an identical one asked before (button data).
        This base journal keeps nothing: always 0.
        """
        return 0

    def note(self, key: str, name: str, value: Any) -> None:
        """Keep `value` (plain data) as `key`'s `name`, with this batch, until `key` ends.

        For a frontend's own record of a conversation (where its question's
        buttons are, whom to answer in a group), given back after a restart
        in :attr:`Saved.notes`. ``None`` deletes it.
        """

    def outgoing(self, receipt: int, key: str, kind: Delivery, item: Any) -> None:
        """An output of `kind` is handed to the frontend; not yet confirmed."""

    def delivered(self, receipt: int) -> None:
        """The frontend confirmed that output."""

    def undelivered(self) -> list[tuple[int, str, Delivery, Any]]:
        """Outputs handed over but never confirmed, in order: to hand over again."""
        return []

    def recall(self, user: str) -> bytes | None:
        """What was remembered for `user` (pickled), or ``None``.

        This base journal keeps memory in the process only, so it lasts as
        long as the program does.
        """
        memory: dict[str, bytes] = getattr(self, "_memory", {})
        return memory.get(user)

    def remember(self, user: str, data: bytes | None) -> None:
        """Keep `data` (pickled) for `user` from this batch on; ``None`` forgets it."""
        if not hasattr(self, "_memory"):
            self._memory: dict[str, bytes] = {}
        if data is None:
            self._memory.pop(user, None)
        else:
            self._memory[user] = data

    def took(self, source: int) -> None:
        """An event from `source` (an update id) is taken in this batch: add it to :meth:`taken`.

        A journal that keeps anything writes it with the batch, so an update
        is taken once even when ids arrive out of order.
        """
        self.taken().take(source)

    def taken(self) -> Taken:
        """The update ids taken so far (see :mod:`engine.sources`); the scheduler asks it.

        This base journal keeps them in the process only.
        """
        kept: Taken | None = getattr(self, "_taken", None)
        if kept is None:
            kept = self._taken = Taken()
        return kept

    def dropped(self, key: str) -> None:
        """`key` now runs elsewhere (another instance): forget what is cached about it."""

    def commit(self, source: int | None) -> None:
        """Make the batch durable; `source` is the last update id it took (see :meth:`took`)."""

    def last_source(self) -> int | None:
        """The highest update id taken (``None``: none)."""
        return self.taken().highest

    def claim(self, flow: str) -> None:
        """Check the journal belongs to `flow` (a ``--flow`` spec), noting it if new.

        Raises :class:`JournalError` when it was written for another flow:
        its conversations would otherwise go on in the other flow's code.
        """

    def unfinished(self) -> Iterator[Saved]:
        """Every conversation to rebuild after a restart."""
        return iter(())

    def close(self) -> None:
        """Release the file."""


class JournalError(Exception):
    """The state file cannot be used; the message names the file and why."""


class JournalLost(JournalError):
    """This batch was not kept, but the journal goes on (a shared database, reconnecting).

    What the batch did is rolled back and its conversations are not this
    process's to drive any more: the scheduler lets every one go, without
    showing what the batch would have; their owner rebuilds them from what
    the journal holds, and the updates they took are handed over again.
    """


class KeptJournal(Journal):
    """What the SQLite and PostgreSQL journals keep alike, in the process, between commits.

    Mailboxes: each waiting message is one row, written once when it arrives
    and deleted once when it is taken or its conversation ends; the others
    are never rewritten (a burst of typed-ahead messages costs writes linear
    in what was typed). Rows are numbered by a journal-wide sequence, so a
    conversation's rows read back in order of their numbers are its mailbox
    in order. :meth:`_mailbox_changes` gives, once per batch, the rows to
    insert and those to delete; a message queued and taken within one batch
    is never written. Memory: what a batch remembered is read back before
    the store (:meth:`_stored_memory`) until the batch is committed.
    """

    def __init__(self) -> None:
        # Held while writing: a program closing the journal while a stuck
        # scheduler thread still commits waits for that write.
        self._closing = threading.Lock()
        # key -> the numbers of its waiting messages' rows, oldest first.
        self._waiting: dict[str, deque[int]] = {}
        self._waiting_seq = 0  # the last row number given (never given again while running)
        self._waiting_added: dict[int, tuple[str, int, bytes]] = {}  # this batch: number -> row
        self._waiting_removed: list[tuple[str, int]] = []  # this batch: (key, number) written
        # Memory written in this batch, not yet committed: read back before the store.
        self._memory_written: dict[str, bytes | None] = {}
        self._at: float | None = None  # this batch's wall-clock time (see stamp)

    def close(self) -> None:
        """Write what is buffered and let go of the store (a failure is logged, not raised)."""
        try:
            self.commit(None)
        except JournalError as error:
            log.error("%s", error)
        finally:
            with self._closing:
                self._disconnect()

    def _disconnect(self) -> None:
        """Close the connection to the store (the file, the database)."""
        raise NotImplementedError

    @staticmethod
    def _pickled(value: Any, warning: str, *args: Any) -> bytes | None:
        """`value` pickled to be kept; None if it cannot be, logged as `warning` % (args, why)."""
        try:
            return pickle.dumps(value, _PROTOCOL)
        except Exception as failure:
            log.warning(warning, *args, failure)
            return None

    def stamp(self, when: float) -> None:
        """Record `when` with this batch's steps and states."""
        self._at = when

    def queued(self, key: str, text: Any) -> None:
        """Keep a waiting message: one row of its own."""
        # One that cannot be kept is kept empty: read back, it cannot be restored,
        # so its conversation starts over after a restart, as with any unreadable value.
        warning = "conversation %s: cannot keep a waiting message (%s)"
        blob = self._pickled(text, warning, key) or b""
        self._waiting_seq += 1
        seq = self._waiting_seq
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = deque()
        waiting.append(seq)
        self._waiting_added[seq] = (key, seq, blob)

    def dequeued(self, key: str) -> None:
        """Drop the oldest waiting message's row."""
        waiting = self._waiting[key]
        self._unqueue(key, waiting.popleft())
        if not waiting:
            del self._waiting[key]

    def _unqueue(self, key: str, seq: int) -> None:
        if self._waiting_added.pop(seq, None) is None:  # else never written
            self._waiting_removed.append((key, seq))

    def _drop_mailbox(self, key: str) -> None:
        """`key` ended: its waiting messages go with it."""
        for seq in self._waiting.pop(key, ()):
            self._unqueue(key, seq)

    def _restore_waiting(self, saved: dict[str, Saved], key: str, seq: int, blob: bytes) -> None:
        """A waiting message read back (in order of `seq`); an unreadable one restarts `key`."""
        self._waiting_seq = max(self._waiting_seq, seq)
        conversation = saved.get(key)
        if conversation is None:  # its conversation is gone: the row is of no use
            self._waiting_removed.append((key, seq))
            return
        self._waiting.setdefault(key, deque()).append(seq)
        try:
            conversation.mailbox.append(pickle.loads(blob))
        except Exception as error:  # only this conversation is lost: it starts over
            log.warning("conversation %s: a waiting message cannot be read (%r)", key, error)
            conversation.snapshot = Snapshot(_UNREADABLE_STATE, b"")

    def _mailbox_changes(self) -> tuple[list[tuple[str, int, bytes]], list[tuple[str, int]]]:
        """This batch's waiting messages to insert (key, number, pickled) and to delete."""
        added, self._waiting_added = list(self._waiting_added.values()), {}
        removed, self._waiting_removed = self._waiting_removed, []
        return added, removed

    def recall(self, user: str) -> bytes | None:
        """What this batch or the store keeps for `user`."""
        if user in self._memory_written:
            return self._memory_written[user]
        return self._stored_memory(user)

    def remember(self, user: str, data: bytes | None) -> None:
        """Replace (or with ``None`` delete) `user`'s memory, with this batch."""
        self._memory_written[user] = data

    def _stored_memory(self, user: str) -> bytes | None:
        """What the store (as last committed) keeps for `user`."""
        raise NotImplementedError


#: The file format this code writes. A file with a higher number was written
#: by a newer version and is refused rather than misread.
SCHEMA_VERSION = 5

#: Flows' memory per user (``Remember``): one pickled dict per user id.
_MEMORY_TABLE = """
CREATE TABLE IF NOT EXISTS memory (user TEXT PRIMARY KEY, data BLOB NOT NULL);
"""

#: How a file of each older format is brought up to date, in order. Format 1
#: (the first release) named output kinds after frontend methods. Format 2
#: kept no times: format 3 adds when each state and batch was recorded (a
#: conversation's last activity), a table of timer deadlines and the flows'
#: memory per user (tables created by ``_SCHEMA``); rows from before have no
#: time (``NULL``: not known). Format 5 keeps each waiting message in a row
#: of its own and every update id taken within a window (see _to_format_5).
_MIGRATIONS: dict[int, str | Callable[[sqlite3.Connection], None]] = {
    1: """
        UPDATE outgoing SET kind = CASE kind
            WHEN 'deliver' THEN 'message' WHEN 'ask' THEN 'question'
            WHEN 'notify' THEN 'notice' ELSE kind END;
    """,
    2: """
        ALTER TABLE conversations ADD COLUMN at REAL;
        ALTER TABLE batches ADD COLUMN at REAL;
    """
    + _MEMORY_TABLE,  # format 3: times, timer deadlines and flows' memory per user
    3: "",  # format 4: frontends' notes per conversation (a table made by _SCHEMA)
    4: lambda connection: _to_format_5(connection),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conversations (
    key TEXT PRIMARY KEY, state_class TEXT NOT NULL, state_fields BLOB NOT NULL,
    since INTEGER NOT NULL, at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, steps BLOB NOT NULL, at REAL);
CREATE TABLE IF NOT EXISTS deadlines (key TEXT PRIMARY KEY, due REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS waiting (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, item BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS taken (source INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS notes (
    key TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (key, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outgoing (
    receipt INTEGER PRIMARY KEY, key TEXT NOT NULL, kind TEXT NOT NULL, item BLOB NOT NULL
);
""" + _MEMORY_TABLE

_SAVE_STATE = "INSERT OR REPLACE INTO conversations VALUES (?, ?, ?, ?, ?)"
_DROP_CONVERSATION = "DELETE FROM conversations WHERE key = ?"
_ADD_WAITING = "INSERT OR REPLACE INTO waiting VALUES (?, ?, ?)"
_DROP_WAITING = "DELETE FROM waiting WHERE seq = ?"
_ADD_BATCH = "INSERT INTO batches VALUES (?, ?, ?)"
_DROP_BATCH = "DELETE FROM batches WHERE id = ?"
_ADD_OUTGOING = "INSERT INTO outgoing VALUES (?, ?, ?, ?)"
_DROP_OUTGOING = "DELETE FROM outgoing WHERE receipt = ?"
_SAVE_MEMORY = "INSERT OR REPLACE INTO memory VALUES (?, ?)"
_DROP_MEMORY = "DELETE FROM memory WHERE user = ?"
_SET_DEADLINE = "INSERT OR REPLACE INTO deadlines VALUES (?, ?)"
_DROP_DEADLINE = "DELETE FROM deadlines WHERE key = ?"
_SAVE_NOTE = "INSERT OR REPLACE INTO notes VALUES (?, ?, ?)"
_DROP_NOTE = "DELETE FROM notes WHERE key = ? AND name = ?"
_DROP_NOTES = "DELETE FROM notes WHERE key = ?"
_SAVE_SEQ = "INSERT OR REPLACE INTO meta VALUES ('seq', ?)"
#: How many sequence numbers are reserved at once in `meta` (see commit).
_SEQ_BLOCK = 65_536
_ADD_TAKEN = "INSERT OR IGNORE INTO taken VALUES (?)"
_DROP_TAKEN = "DELETE FROM taken WHERE source = ?"
_CLEAR_TAKEN = "DELETE FROM taken"
_SAVE_TAKEN_UP_TO = "INSERT OR REPLACE INTO meta VALUES ('taken_up_to', ?)"
_DROP_TAKEN_UP_TO = "DELETE FROM meta WHERE name = 'taken_up_to'"
#: What a journal gives back for a value it could not save or read back (the
#: fingerprint of such a step, the class of such a state): its conversation starts over.
UNREADABLE = "(a value that could not be saved or read back)"
_UNREADABLE = UNREADABLE
#: Values SQLite's pickle-free path can keep as they are.
_PLAIN = (str, int, float, type(None))


class SqliteJournal(KeptJournal):
    """A journal in one SQLite file (WAL), owned by one process at a time.

    Why a log of batches rather than a row per step: a row costs SQLite a
    few microseconds to insert and again to delete, more than the engine
    spends on the step itself. So the steps of one scheduler batch are
    pickled together into one row of `batches`, each tagged with a journal-
    wide sequence number. A conversation's row holds its latest state
    snapshot and the sequence number it was taken at (`since`): its steps
    are the later ones. A batch row is deleted as soon as none of its steps
    is needed any more (every conversation in it moved on to a new state or
    ended), so a conversation looping for ever keeps the file small.

    Each state row and batch row also holds the wall-clock time it was
    written (see :meth:`stamp`): a conversation's last activity, for idle
    expiry after a restart. `deadlines` holds, per conversation waiting on a
    ``Sleep`` or a question's timeout, when it is due; the row goes with the
    conversation's next step.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self._ops: list[tuple[str, tuple[Any, ...]]] = []
        self._steps: list[tuple[Any, ...]] = []  # this batch's
        self._seq = 0  # the last step's sequence number, journal-wide
        self._seq_written = 0  # reserved up to here in `meta`: a number is never given
        # twice, even after its conversation's rows are gone (positions must not come back)
        self._batch = 1  # the id the current batch will get
        self._needed: dict[int, int] = {}  # batch id -> steps in it still needed
        self._held: dict[str, list[int]] = {}  # key -> batch ids holding its steps
        self._timed: set[str] = set()  # keys with a row in `deadlines`
        self._noted: set[str] = set()  # keys with rows in `notes`
        self._positions: dict[str, int] = {}  # key -> its latest state's or step's number
        self._checkpointed = False  # whether the -wal holds nothing the file lacks
        self._connection = self._open()
        self._taken = self._read_taken()

    # -- opening, with a one-line reason for every way a file can be bad ----

    def _open(self) -> sqlite3.Connection:
        exists = os.path.exists(self.path)
        if exists and not _writable(self.path):
            raise JournalError(f"{self.path}: the state file is read-only")
        if not exists:
            _create_private(self.path)
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
        self._check(connection)
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
        self._migrate(connection, version)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check(self, connection: sqlite3.Connection) -> None:
        """Refuse, before writing anything, a file SQLite's own check finds damaged."""
        found = [row[0] for row in connection.execute("PRAGMA quick_check(3)")]
        if found != ["ok"]:
            raise JournalError(
                f"{self.path}: the state file is damaged (SQLite's check: "
                f"{' '.join(found[0].split())}); "
                "not touching it"
            )

    def _migrate(self, connection: sqlite3.Connection, version: int) -> None:
        """Bring a file of an older format up to date, in one transaction."""
        if not 0 < version < SCHEMA_VERSION:
            return
        connection.execute("BEGIN")
        for older in range(version, SCHEMA_VERSION):
            step = _MIGRATIONS[older]
            if callable(step):
                step(connection)
                continue
            for statement in step.split(";"):
                if statement.strip():
                    connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
        log.info("%s: upgraded the state file from format %d to %d", self.path, version,
                 SCHEMA_VERSION)

    # -- recording ------------------------------------------------------------

    def entered(self, key: str, snapshot: Snapshot) -> None:
        """Save the new state; the steps before it are no longer needed."""
        self._release(key)
        if key in self._timed:
            self._drop_deadline(key)
        # A number of its own: a state entered is a new position even with no step.
        self._seq += 1
        self._positions[key] = self._seq
        self._ops.append(
            (_SAVE_STATE, (key, snapshot.state_class, snapshot.fields, self._seq, self._at))
        )

    def step(self, key: str, command: Command, value: Any, error: BaseException | None) -> None:
        """Record the value about to be sent in."""
        self._seq += 1
        self._positions[key] = self._seq
        if key in self._timed:  # the timer it waited on is done with
            self._drop_deadline(key)
        if error is None and type(value) in _PLAIN:  # most answers: kept as they are
            self._steps.append((key, self._seq, fingerprint(command), value, None))
        else:
            self._steps.append(self._pickled_step(key, command, value, error))
        held = self._held.get(key)
        if held is None:
            self._held[key] = [self._batch]
        else:
            held.append(self._batch)
        self._needed[self._batch] = self._needed.get(self._batch, 0) + 1

    def _pickled_step(
        self, key: str, command: Command, value: Any, error: BaseException | None
    ) -> tuple[Any, ...]:
        try:
            kept = _Pickled(pickle.dumps(value, _PROTOCOL))
            kept_error = None if error is None else _Pickled(pickle.dumps(error, _PROTOCOL))
        except Exception as failure:
            log.warning("conversation %s: cannot save %r (%s)", key, command, failure)
            return (key, self._seq, _UNREADABLE, None, None)
        return (key, self._seq, fingerprint(command), kept, kept_error)

    def ended(self, key: str) -> None:
        """Forget the conversation."""
        self._release(key)
        if key in self._timed:
            self._drop_deadline(key)
        self._ops.append((_DROP_CONVERSATION, (key,)))
        self._drop_mailbox(key)
        self._positions.pop(key, None)
        if key in self._noted:
            self._noted.discard(key)
            self._ops.append((_DROP_NOTES, (key,)))

    def position(self, key: str) -> int:
        """The sequence number of `key`'s latest state or step (journal-wide, so never reused)."""
        return self._positions.get(key, 0)

    def note(self, key: str, name: str, value: Any) -> None:
        """Keep the frontend's `value` for `key` until it ends."""
        if value is None:
            self._ops.append((_DROP_NOTE, (key, name)))
            return
        blob = self._pickled(value, "conversation %s: cannot keep the note %s (%s)", key, name)
        if blob is None:
            return
        self._noted.add(key)
        self._ops.append((_SAVE_NOTE, (key, name, blob)))

    def deadline(self, key: str, when: float) -> None:
        """Keep the deadline until `key` moves on."""
        self._timed.add(key)
        self._ops.append((_SET_DEADLINE, (key, when)))

    def _drop_deadline(self, key: str) -> None:
        self._timed.discard(key)
        self._ops.append((_DROP_DEADLINE, (key,)))

    def outgoing(self, receipt: int, key: str, kind: Delivery, item: Any) -> None:
        """Keep the output until it is confirmed."""
        blob = self._pickled(item, "conversation %s: cannot keep %r until sent (%s)", key, item)
        if blob is None:
            return
        self._ops.append((_ADD_OUTGOING, (receipt, key, kind.value, blob)))

    def delivered(self, receipt: int) -> None:
        """Forget the output."""
        self._ops.append((_DROP_OUTGOING, (receipt,)))

    def undelivered(self) -> list[tuple[int, str, Delivery, Any]]:
        """Outputs never confirmed, oldest first (one that cannot be read is dropped)."""
        outputs = []
        for receipt, key, kind, blob in self._connection.execute(
            "SELECT * FROM outgoing ORDER BY receipt"
        ):
            try:
                outputs.append((receipt, key, Delivery(kind), pickle.loads(blob)))
            except Exception as error:
                log.warning("conversation %s: an unsent output cannot be read (%r)", key, error)
                self._ops.append((_DROP_OUTGOING, (receipt,)))
        return outputs

    def _stored_memory(self, user: str) -> bytes | None:
        """What the file keeps for `user`."""
        row = self._connection.execute(
            "SELECT data FROM memory WHERE user = ?", (user,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def remember(self, user: str, data: bytes | None) -> None:
        """Replace (or with ``None`` delete) `user`'s memory, with this batch."""
        super().remember(user, data)
        if data is None:
            self._ops.append((_DROP_MEMORY, (user,)))
        else:
            self._ops.append((_SAVE_MEMORY, (user, data)))

    def commit(self, source: int | None) -> None:
        """Write this batch in one transaction and commit it."""
        ops, self._ops = self._ops, []
        self._memory_written.clear()
        added, removed = self._mailbox_changes()
        ops.extend((_DROP_WAITING, (seq,)) for _, seq in removed)
        ops.extend((_ADD_WAITING, (seq, key, item)) for key, seq, item in added)
        self._taken_changes(ops)
        if self._needed.get(self._batch):
            steps = pickle.dumps(self._steps, _PROTOCOL)
            ops.append((_ADD_BATCH, (self._batch, steps, self._at)))
            self._batch += 1
        else:  # every step of it is already obsolete: nothing to keep
            self._needed.pop(self._batch, None)
        self._steps = []
        if self._seq > self._seq_written:
            # Numbers are reserved a block at a time: the row is written once
            # per block, not at every batch (its page in every commit cost
            # ~100 µs a batch). After a restart numbering goes on from the
            # block's end, so no number is given twice.
            self._seq_written = self._seq + _SEQ_BLOCK
            ops.append((_SAVE_SEQ, (self._seq_written,)))
        if ops:
            self._write(ops)
            self._checkpointed = False
        elif not self._checkpointed:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy what the ``-wal`` holds into the state file itself, once idle.

        A batch with nothing to write means the bot is idle (the scheduler
        commits an empty batch after a second without events). Until now the
        ``-wal`` file held every commit since SQLite's own last checkpoint (up
        to about 4 MB): losing or damaging it lost all of that. From here it
        holds nothing the state file lacks. PASSIVE: it never waits.
        """
        with self._closing:
            try:
                self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as error:  # not fatal: SQLite checkpoints by itself too
                log.warning("%s: cannot checkpoint the -wal file (%s)", self.path, error)
                return
        self._checkpointed = True

    def _taken_changes(self, ops: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Add to `ops` what changed in the update ids taken (see engine.sources)."""
        changes = self._taken.changes()
        if changes is None:
            return
        if changes.cleared:
            ops.append((_CLEAR_TAKEN, ()))
        ops.extend((_DROP_TAKEN, (source,)) for source in changes.removed)
        ops.extend((_ADD_TAKEN, (source,)) for source in changes.added)
        if changes.low is None:
            ops.append((_DROP_TAKEN_UP_TO, ()))
        elif changes.low is not UNCHANGED:
            ops.append((_SAVE_TAKEN_UP_TO, (changes.low,)))

    def _release(self, key: str) -> None:
        """`key`'s steps so far are obsolete; drop batches no longer needed by anyone."""
        for batch in self._held.pop(key, ()):
            self._needed[batch] -= 1
            if self._needed[batch] == 0 and batch != self._batch:
                del self._needed[batch]
                self._ops.append((_DROP_BATCH, (batch,)))

    def _write(self, ops: list[tuple[str, tuple[Any, ...]]]) -> None:
        # The lock only matters at the end: a program closing the journal while
        # a stuck scheduler thread still commits.
        with self._closing:
            try:
                self._connection.execute("BEGIN")
                # Consecutive writes of one kind go in one executemany call.
                for statement, group in itertools.groupby(ops, key=lambda op: op[0]):
                    self._connection.executemany(statement, [params for _, params in group])
                self._connection.execute("COMMIT")
            except sqlite3.Error as error:
                with contextlib.suppress(sqlite3.Error):
                    self._connection.execute("ROLLBACK")
                raise JournalError(f"{self.path}: cannot write the state file ({error})") from None

    def claim(self, flow: str) -> None:
        """Refuse a file written for another flow; note the flow in a new one."""
        row = self._connection.execute("SELECT value FROM meta WHERE name = 'flow'").fetchone()
        if row is None:
            self._write([("INSERT INTO meta VALUES ('flow', ?)", (flow,))])
        elif row[0] != flow:
            raise JournalError(
                f"{self.path}: the state file belongs to the flow {row[0]}, not {flow}; "
                f"run with --flow {row[0]}, or use another state file"
            )

    # -- reading back -----------------------------------------------------------

    def _read_taken(self) -> Taken:
        """The update ids taken, as the file keeps them."""
        query = self._connection.execute
        row = query("SELECT value FROM meta WHERE name = 'taken_up_to'").fetchone()
        return Taken(
            None if row is None else int(row[0]), [int(source) for (source,) in query(
                "SELECT source FROM taken")],
        )

    def unfinished(self) -> Iterator[Saved]:
        """Every saved conversation, with its steps, waiting messages and deadline."""
        query = self._connection.execute
        saved: dict[str, Saved] = {}
        since: dict[str, int] = {}
        for (seq,) in query("SELECT value FROM meta WHERE name = 'seq'"):
            self._seq = self._seq_written = int(seq)
        # The class name read as bytes: a damaged one must not stop everyone's start.
        for key, class_path, fields, seq, at in query(
            "SELECT key, CAST(state_class AS BLOB), state_fields, since, at FROM conversations"
        ):
            saved[key] = Saved(key, _snapshot(key, class_path, fields), last_active=at)
            since[key] = self._positions[key] = seq
            self._seq = max(self._seq, seq)
        for batch, blob, at in query("SELECT id, steps, at FROM batches ORDER BY id"):
            self._batch = batch + 1
            self._needed[batch] = 0
            for key, seq, print_, value, error in pickle.loads(blob):
                self._seq = max(self._seq, seq)
                if key in saved and seq > since[key]:
                    conversation = saved[key]
                    conversation.steps.append(_read_step(print_, value, error))
                    self._positions[key] = seq  # steps come in order
                    if at is not None:  # batches only get later
                        conversation.last_active = at
                    self._held.setdefault(key, []).append(batch)
                    self._needed[batch] += 1
            if not self._needed[batch]:
                del self._needed[batch]
                self._ops.append((_DROP_BATCH, (batch,)))
        for seq, key, item in query("SELECT seq, key, item FROM waiting ORDER BY seq"):
            self._restore_waiting(saved, key, seq, item)
        for key, due in query("SELECT key, due FROM deadlines"):
            if key in saved:
                saved[key].deadline = due
                self._timed.add(key)
            else:
                self._ops.append((_DROP_DEADLINE, (key,)))
        self._read_notes(saved)
        return iter(saved.values())

    def _read_notes(self, saved: dict[str, Saved]) -> None:
        """Give each conversation its notes back; one that cannot be read is dropped."""
        for key, name, blob in self._connection.execute("SELECT key, name, value FROM notes"):
            if key not in saved:
                self._ops.append((_DROP_NOTES, (key,)))
                continue
            self._noted.add(key)
            try:
                saved[key].notes[name] = pickle.loads(blob)
            except Exception as error:  # only a frontend's convenience is lost
                log.warning("conversation %s: its note %s cannot be read (%r)", key, name, error)

    def _disconnect(self) -> None:
        self._connection.close()


class _Pickled(bytes):
    """A value kept pickled, told apart from a plain one when read back."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Pickled, (bytes(self),))


_PROTOCOL = pickle.HIGHEST_PROTOCOL


#: The class name of a state that cannot be read: restoring it fails, so the
#: scheduler tells that user the conversation starts over, as after a change of flow.
_UNREADABLE_STATE = "(unreadable state)"


def _snapshot(key: str, class_path: Any, fields: Any) -> Snapshot:
    """A conversation's saved state as read back; a damaged one cannot be restored."""
    try:
        name = bytes(class_path).decode("utf-8")
    except (TypeError, UnicodeDecodeError):
        name = ""
    if not name.isprintable() or not name:
        log.warning("conversation %s: its state's class name is damaged", key)
        return Snapshot(_UNREADABLE_STATE, b"")
    return Snapshot(name, fields if isinstance(fields, bytes) else b"")


def _read_step(print_: str, value: Any, error: Any) -> Step:
    try:
        if isinstance(value, _Pickled):
            value = pickle.loads(value)
        if isinstance(error, _Pickled):
            error = pickle.loads(error)
    except Exception:  # a class that is gone or changed: the flow must start over
        return Step(_UNREADABLE)
    return Step(print_, value, error)


def _to_format_5(connection: sqlite3.Connection) -> None:
    """Format 4 to 5: each waiting message in a row of its own; the update ids' low-water mark.

    Format 4 kept a conversation's whole mailbox pickled in one row (rewritten
    at every change) and only the highest update id taken, every id up to it
    counting as taken: that mark is where format 5's window starts.
    """
    seq = 0
    rows = []
    for key, blob in connection.execute("SELECT key, texts FROM mailbox ORDER BY key"):
        try:
            items = [pickle.dumps(item, _PROTOCOL) for item in pickle.loads(blob)]
        except Exception:  # kept unreadable: that conversation starts over, as before
            items = [b""]
        for item in items:
            seq += 1
            rows.append((seq, key, item))
    connection.executemany(_ADD_WAITING, rows)
    connection.execute("DROP TABLE mailbox")
    connection.execute("UPDATE meta SET name = 'taken_up_to' WHERE name = 'last_source'")


def _create_private(path: str) -> None:
    """Create the empty state file readable by its owner only (0600, whatever the umask).

    It holds chat ids and what users typed. SQLite gives the ``-wal`` and
    ``-shm`` files it makes beside it the database file's permissions.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:  # made meanwhile: SQLite opens it as it is
        pass
    except OSError as error:
        raise JournalError(f"{path}: cannot create the state file ({error.strerror})") from None


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
