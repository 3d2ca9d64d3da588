"""The journal in a PostgreSQL database: what the SQLite journal keeps, on a server.

Keeps what :class:`engine.journal.SqliteJournal` keeps (format 5: state
snapshots, steps, waiting messages (a row each), timer deadlines, each state's
and step's wall-clock time, the flows' memory per user, the flow a bot belongs
to, the outbox, update ids taken), with the same guarantees: each scheduler
batch is one transaction; the update ids it took are committed with it (see
:mod:`engine.sources`), so a redelivered update is taken once, in any order;
outputs are kept until the frontend confirms them; the journal stays bounded
(a conversation's steps are deleted as soon as it enters a new state or
ends); a database written by a newer version is refused; and every way of
failing at start (bad URL, refused login, missing permissions, unreachable
server, another instance using it) is one line naming the database (its
password masked) and why. A database of an older schema (from 1, the first
PostgreSQL journal, on) is upgraded in place.

The tables live in their own schema, ``yielded``, so the database can be
shared with other programs. Every row carries the bot it belongs to (the
`bot` argument), so several bots can share one database and update ids are
unique per bot. A conversation is keyed by ``(bot, key)`` and its steps by
``(bot, key, seq)``, ``seq`` counting from its latest snapshot: all of one
conversation's rows are found from its key alone, so conversations can later
be split into shards by a hash of the key and handed between instances. For
now one instance owns a bot: a second one is refused (an advisory lock that
the server releases if the first instance's connection dies).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import conninfo, errors

from engine.commands import Command
from engine.frontend import Delivery
from engine.journal import UNREADABLE, JournalError, JournalLost, KeptJournal, Saved
from engine.runner import Snapshot, Step, fingerprint
from engine.sources import UNCHANGED, Taken

log = logging.getLogger(__name__)

#: The schema version this code writes (the SQLite journal's format number:
#: both keep the same things). A database with a higher number was written by
#: a newer version and is refused rather than misread.
SCHEMA_VERSION = 5
#: The PostgreSQL schema (namespace) holding the journal's tables.
NAMESPACE = "yielded"
#: The bot a journal belongs to unless told otherwise.
DEFAULT_BOT = "default"
#: Seconds to wait for the server at start, unless the URL sets connect_timeout.
CONNECT_TIMEOUT = 10

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_N = NAMESPACE

_MEMORY_AND_TIMERS = f"""
CREATE TABLE IF NOT EXISTS {_N}.deadlines (
    bot TEXT NOT NULL, key TEXT NOT NULL, due DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (bot, key)
);
CREATE TABLE IF NOT EXISTS {_N}.memory (
    bot TEXT NOT NULL, "user" TEXT NOT NULL, data BYTEA NOT NULL,
    PRIMARY KEY (bot, "user")
);
"""

#: Frontends' notes per conversation (Journal.note), from schema 4.
_NOTES = f"""
CREATE TABLE IF NOT EXISTS {_N}.notes (
    bot TEXT NOT NULL, key TEXT NOT NULL, name TEXT NOT NULL, value BYTEA NOT NULL,
    PRIMARY KEY (bot, key, name)
);
"""

#: Schema 5: each waiting message in a row of its own, numbered in order
#: (see KeptJournal), and the update ids taken above `bots.taken_up_to`
#: (see engine.sources). Single instances only: shared ones take each update
#: once through the updates table.
_WAITING_AND_TAKEN = f"""
CREATE TABLE IF NOT EXISTS {_N}.waiting (
    bot TEXT NOT NULL, key TEXT NOT NULL, seq BIGINT NOT NULL, item BYTEA NOT NULL,
    PRIMARY KEY (bot, key, seq)
);
CREATE TABLE IF NOT EXISTS {_N}.taken (
    bot TEXT NOT NULL, update_id BIGINT NOT NULL, PRIMARY KEY (bot, update_id)
);
"""

#: Schema 4: what several instances of one bot need (see :mod:`engine.shards`):
#: each conversation's and output's shard, so an instance reads back only the
#: shards it owns; the updates taken in by any instance, waiting for their
#: shard's owner; receipts unique across instances.
_SHARED = f"""
CREATE TABLE IF NOT EXISTS {_N}.updates (
    bot TEXT NOT NULL, update_id BIGINT NOT NULL, shard INTEGER NOT NULL,
    payload TEXT NOT NULL, taken BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (bot, update_id)
);
CREATE INDEX IF NOT EXISTS updates_pending ON {_N}.updates (bot, shard, update_id) WHERE NOT taken;
CREATE SEQUENCE IF NOT EXISTS {_N}.instances;
"""

_SCHEMA = f"""
CREATE SCHEMA IF NOT EXISTS {_N};
CREATE TABLE IF NOT EXISTS {_N}.meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {_N}.bots (
    bot TEXT PRIMARY KEY, taken_up_to BIGINT, flow TEXT, serial BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS {_N}.conversations (
    bot TEXT NOT NULL, key TEXT NOT NULL,
    state_class TEXT NOT NULL, state_fields BYTEA NOT NULL, at DOUBLE PRECISION,
    since BIGINT NOT NULL DEFAULT 0,
    shard INTEGER,
    PRIMARY KEY (bot, key)
);
CREATE TABLE IF NOT EXISTS {_N}.steps (
    bot TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, answer BYTEA NOT NULL, at DOUBLE PRECISION,
    PRIMARY KEY (bot, key, seq)
);
CREATE TABLE IF NOT EXISTS {_N}.outgoing (
    bot TEXT NOT NULL, receipt BIGINT NOT NULL,
    key TEXT NOT NULL, kind TEXT NOT NULL, item BYTEA NOT NULL, shard INTEGER,
    PRIMARY KEY (bot, receipt)
);
""" + _MEMORY_AND_TIMERS + _NOTES + _SHARED + _WAITING_AND_TAKEN

#: How a database of schema 1 (the first PostgreSQL journal, before timers and
#: memory) is brought to 3: times, deadlines, memory, the flow per bot, and
#: mailboxes that hold any answer (pickled), not only text. The texts are
#: converted in Python (see _convert_mailboxes), between these two scripts.
_UPGRADE_FROM_1 = f"""
ALTER TABLE {_N}.bots ADD COLUMN flow TEXT;
ALTER TABLE {_N}.conversations ADD COLUMN at DOUBLE PRECISION;
ALTER TABLE {_N}.steps ADD COLUMN at DOUBLE PRECISION;
ALTER TABLE {_N}.mailbox ADD COLUMN items BYTEA;
""" + _MEMORY_AND_TIMERS
_UPGRADE_FROM_1_END = f"ALTER TABLE {_N}.mailbox DROP COLUMN texts, ALTER COLUMN items SET NOT NULL"
#: Schema 3 to 4: each state's position (see Journal.position), the highest
#: position given per bot, frontends' notes; and what several instances of one
#: bot need: shard columns (filled in Python: see _fill_shards) and the shared
#: tables.
_UPGRADE_FROM_3 = f"""
ALTER TABLE {_N}.bots ADD COLUMN serial BIGINT NOT NULL DEFAULT 0;
ALTER TABLE {_N}.conversations ADD COLUMN since BIGINT NOT NULL DEFAULT 0;
ALTER TABLE {_N}.conversations ADD COLUMN shard INTEGER;
ALTER TABLE {_N}.outgoing ADD COLUMN shard INTEGER;
""" + _NOTES + _SHARED
#: Schema 4 to 5: mailboxes, one pickled list per conversation, become a row
#: per message (converted in Python: see _split_mailboxes); the highest update
#: id taken (every id up to it counted as taken) is where the window starts.
_UPGRADE_FROM_4 = _WAITING_AND_TAKEN + f"""
ALTER TABLE {_N}.bots RENAME COLUMN last_source TO taken_up_to;
"""

_DROP_STEPS = f"DELETE FROM {_N}.steps WHERE bot = %s AND key = ANY(%s)"
_DROP_CONVERSATIONS = f"DELETE FROM {_N}.conversations WHERE bot = %s AND key = ANY(%s)"
# Rows go in as one array per column, unnested by the server: one statement
# per table and batch, which costs a fraction of a statement per row.
_SAVE_STATES = (
    f"INSERT INTO {_N}.conversations "
    "(bot, key, state_class, state_fields, at, since, shard) SELECT %s, * FROM "
    "unnest(%s::text[], %s::text[], %s::bytea[], %s::float8[], %s::int8[], %s::int[]) "
    "ON CONFLICT (bot, key) DO UPDATE SET state_class = EXCLUDED.state_class, "
    "state_fields = EXCLUDED.state_fields, at = EXCLUDED.at, since = EXCLUDED.since, "
    "shard = EXCLUDED.shard"
)
_SAVE_SERIAL = f"UPDATE {_N}.bots SET serial = GREATEST(serial, %s) WHERE bot = %s"
_DROP_ALL_NOTES = f"DELETE FROM {_N}.notes WHERE bot = %s AND key = ANY(%s)"
_DROP_NOTES = (
    f"DELETE FROM {_N}.notes WHERE bot = %s "
    "AND (key, name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
)
_SAVE_NOTES = (
    f"INSERT INTO {_N}.notes SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::bytea[]) "
    "ON CONFLICT (bot, key, name) DO UPDATE SET value = EXCLUDED.value"
)
_ADD_STEPS = (
    f"INSERT INTO {_N}.steps "
    "SELECT %s, * FROM unnest(%s::text[], %s::int[], %s::text[], %s::bytea[], %s::float8[])"
)
_ADD_WAITING = (
    f"INSERT INTO {_N}.waiting SELECT %s, * FROM unnest(%s::text[], %s::int8[], %s::bytea[]) "
    "ON CONFLICT (bot, key, seq) DO UPDATE SET item = EXCLUDED.item"
)
_DROP_WAITING = (
    f"DELETE FROM {_N}.waiting WHERE bot = %s "
    "AND (key, seq) IN (SELECT * FROM unnest(%s::text[], %s::int8[]))"
)
_DROP_DEADLINES = f"DELETE FROM {_N}.deadlines WHERE bot = %s AND key = ANY(%s)"
_SET_DEADLINES = (
    f"INSERT INTO {_N}.deadlines SELECT %s, * FROM unnest(%s::text[], %s::float8[]) "
    "ON CONFLICT (bot, key) DO UPDATE SET due = EXCLUDED.due"
)
_DROP_MEMORY = f'DELETE FROM {_N}.memory WHERE bot = %s AND "user" = ANY(%s)'
_SAVE_MEMORY = (
    f"INSERT INTO {_N}.memory SELECT %s, * FROM unnest(%s::text[], %s::bytea[]) "
    'ON CONFLICT (bot, "user") DO UPDATE SET data = EXCLUDED.data'
)
_ADD_OUTGOING = (
    f"INSERT INTO {_N}.outgoing "
    "SELECT %s, * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bytea[], %s::int[])"
)
_DROP_OUTGOING = f"DELETE FROM {_N}.outgoing WHERE bot = %s AND receipt = ANY(%s)"
_SAVE_TAKEN_UP_TO = f"UPDATE {_N}.bots SET taken_up_to = %s WHERE bot = %s"
_CLEAR_TAKEN = f"DELETE FROM {_N}.taken WHERE bot = %s"
_DROP_TAKEN = f"DELETE FROM {_N}.taken WHERE bot = %s AND update_id = ANY(%s)"
_ADD_TAKEN = (
    f"INSERT INTO {_N}.taken SELECT %s, unnest(%s::int8[]) ON CONFLICT DO NOTHING"
)


class PostgresJournal(KeptJournal):
    """A journal in a PostgreSQL database at `url`, for one `bot` (see the module docstring).

    Raises :class:`JournalError` (one line) if the database cannot be used.
    """

    def __init__(self, url: str, *, bot: str = DEFAULT_BOT, shared: bool = False) -> None:
        super().__init__()
        self.url = url
        self.bot = bot
        #: Several instances of the bot share the database (see :meth:`fence`).
        self.shared = shared
        # Shared: receipts are this instance's number times 2**32 plus the scheduler's.
        self._receipt_base = 0
        self._fence: tuple[Callable[[], int | None], int, int] | None = None
        self._took: list[int] = []  # update ids taken in this batch (shared)
        self.label = redact(url)
        # This batch, as the scheduler reports it; written by commit().
        self._snapshots: dict[str, Snapshot | None] = {}  # None: ended
        self._new_steps: dict[str, list[tuple[Any, ...]]] = {}
        self._clear_steps: set[str] = set()
        self._deadlines: dict[str, float | None] = {}  # None: dropped
        self._outputs: dict[int, tuple[Any, ...]] = {}
        self._delivered: list[int] = []
        self._at_of_state: dict[str, float | None] = {}  # when each snapshot was taken
        # What the database holds, as far as this (the only) writer knows.
        self._stored_steps: set[str] = set()
        self._counts: dict[str, int] = {}  # key -> steps since its snapshot
        # Positions (see Journal.position): a key's is its state's `since` plus
        # its steps since; `serial` is the highest given, so never given twice.
        self._since: dict[str, int] = {}
        self._serial = 0
        self._serial_written = 0
        self._notes: dict[tuple[str, str], bytes | None] = {}  # this batch's; None: dropped
        self._noted: set[str] = set()  # keys with rows in `notes`
        self._unnoted: set[str] = set()  # this batch: keys whose notes all go
        self._timed: set[str] = set()  # keys with a row in `deadlines`
        #: Shared: told (with the reason) when a batch is lost to a failed connection or fence.
        self.on_lost: Callable[[str], None] | None = None
        self._closing_for_good = False  # close(), not a lost connection's disconnect()
        self._connection = self._open()
        self._taken = self._read_taken()

    # -- opening, with a one-line reason for every way it can fail ----------

    def _open(self) -> psycopg.Connection[Any]:
        options = _connect_options(self.url, self.label)
        try:
            connection = psycopg.connect(self.url, autocommit=True, **options)
        except psycopg.Error as error:
            raise JournalError(f"{self.label}: {_explain(error, self.url)}") from None
        try:
            self._prepare(connection)
        except psycopg.Error as error:
            connection.close()
            raise JournalError(f"{self.label}: {_explain(error, self.url)}") from None
        except JournalError:
            connection.close()
            raise
        return connection

    def _prepare(self, connection: psycopg.Connection[Any]) -> None:
        # Two instances starting at once must not both create the tables.
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_N,))
            version = _stored_version(connection)
            if version is not None and version > SCHEMA_VERSION:
                raise JournalError(
                    f"{self.label}: written by a newer version (schema {version}, "
                    f"this one reads up to {SCHEMA_VERSION}); not touching it"
                )
            if version is None:
                connection.execute(_SCHEMA.encode())
                connection.execute(
                    f"INSERT INTO {_N}.meta VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),)
                )
            elif version < SCHEMA_VERSION:
                _upgrade(connection, version)
                log.info("%s: upgraded the journal from schema %d to %d", self.label, version,
                         SCHEMA_VERSION)
            connection.execute(
                f"INSERT INTO {_N}.bots (bot) VALUES (%s) ON CONFLICT DO NOTHING",
                (self.bot,),
            )
        self._hold_bot(connection)
        if self.shared:
            number = connection.execute(f"SELECT nextval('{_N}.instances')".encode()).fetchone()
            assert number is not None
            self._receipt_base = int(number[0]) << RECEIPT_BITS

    def _hold_bot(self, connection: psycopg.Connection[Any]) -> None:
        # Held for the connection's life: a second instance of the bot is refused
        # instead of both answering the same users; a dead one's is released.
        # Shared instances hold it shared: they exclude a single one, not each other.
        kind = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
        owned = connection.execute(
            f"SELECT {kind}(hashtextextended(%s, 0))".encode(), (f"{_N}:bot:{self.bot}",)
        ).fetchone()
        if not (owned and owned[0]):
            how = "a single instance" if self.shared else "another running instance"
            raise JournalError(f"{self.label}: bot {self.bot!r} is in use by {how}")

    def disconnect(self) -> None:
        """Shared, from any thread: drop the connection; the next read or write reconnects.

        For when the database was lost: a connection from before would fail at
        its first use after the server is back, and lose that batch too.
        """
        with self._closing:
            self._disconnect()

    def _reconnected(self) -> psycopg.Connection[Any]:
        """Shared: the connection, made again if it was lost (the bot's lock taken again)."""
        if self._connection.closed:
            connection = psycopg.connect(
                self.url, autocommit=True, **_connect_options(self.url, self.label)
            )
            try:
                self._hold_bot(connection)
            except JournalError:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _lost(
        self, reason: str, message: str, statements: list[tuple[str, list[tuple[Any, ...]]]]
    ) -> JournalLost:
        """Shared: this batch is lost (rolled back); what the scheduler is told, after on_lost.

        Confirmations in it are kept for the next batch: those outputs were
        sent, and must not be sent again by whoever rebuilds their conversations.
        """
        delivered = [receipt for statement, rows in statements if statement is _DROP_OUTGOING
                     for receipt in rows[0][1]]  # fmt: skip
        self._reset_batch()
        self._delivered = delivered
        if self.on_lost is not None:
            self.on_lost(reason)
        return JournalLost(f"{self.label}: {message}")

    def fence(self, holder: Callable[[], int | None], shard_lock: int, write_lock: int) -> None:
        """Shared: commit only while the session `holder()` (a backend pid) holds the shards.

        Each commit takes a shared transaction lock per shard it writes and
        checks that `holder`'s session still holds that shard's advisory lock
        (first key `shard_lock`); a new owner takes the transaction lock (first
        key `write_lock`) exclusively before reading a shard, so a
        batch of the old owner either commits before the new owner reads, or
        is refused (a :class:`JournalError`: the instance stops).
        """
        self._fence = (holder, shard_lock, write_lock)

    def took(self, source: int) -> None:
        """Keep `source` as taken (see :meth:`Journal.taken`), with this batch.

        Shared: it is marked taken in the updates table instead, in the same
        transaction (ids are unique there; there is no window).
        """
        if self.shared:
            self._took.append(source)
        else:
            self._taken.take(source)

    def dropped(self, key: str) -> None:
        """`key` is driven by another instance now: forget what is cached about it."""
        self._counts.pop(key, None)
        self._stored_steps.discard(key)
        self._timed.discard(key)
        self._waiting.pop(key, None)  # rows this batch adds or deletes are still written

    def _global(self, receipt: int) -> int:
        """The receipt as stored: unique across instances when shared."""
        return receipt if receipt >> RECEIPT_BITS else self._receipt_base + receipt

    # -- recording ------------------------------------------------------------

    def entered(self, key: str, snapshot: Snapshot) -> None:
        """Save the new state; the steps before it are no longer needed."""
        self._release(key)
        self._serial = max(self._serial, self.position(key)) + 1
        self._since[key] = self._serial
        self._counts[key] = 0
        self._snapshots[key] = snapshot
        self._at_of_state[key] = self._at

    def step(self, key: str, command: Command, value: Any, error: BaseException | None) -> None:
        """Record the value about to be sent in."""
        if key in self._timed:  # the timer it waited on is done with
            self._drop_deadline(key)
        seq = self._counts[key] = self._counts.get(key, 0) + 1
        try:
            row = (key, seq, fingerprint(command), pickle.dumps((value, error), _PROTOCOL),
                   self._at)
        except Exception as failure:
            log.warning("conversation %s: cannot save %r (%s)", key, command, failure)
            row = (key, seq, UNREADABLE, _NOTHING, self._at)
        steps = self._new_steps.get(key)
        if steps is None:
            self._new_steps[key] = [row]
        else:
            steps.append(row)

    def ended(self, key: str) -> None:
        """Forget the conversation."""
        self._serial = max(self._serial, self.position(key))  # never given again
        self._release(key)
        self._counts.pop(key, None)
        self._since.pop(key, None)
        self._snapshots[key] = None
        self._drop_mailbox(key)
        if key in self._noted:
            self._noted.discard(key)
            self._unnoted.add(key)
            for pending in [n for n in self._notes if n[0] == key]:
                del self._notes[pending]

    def position(self, key: str) -> int:
        """Its state's number plus its steps since (see :meth:`Journal.position`)."""
        return self._since.get(key, 0) + self._counts.get(key, 0)

    def note(self, key: str, name: str, value: Any) -> None:
        """Keep the frontend's `value` for `key` until it ends."""
        if value is None:
            self._notes[(key, name)] = None
            return
        blob = self._pickled(value, "conversation %s: cannot keep the note %s (%s)", key, name)
        if blob is None:
            return
        self._notes[(key, name)] = blob
        self._noted.add(key)

    def deadline(self, key: str, when: float) -> None:
        """Keep the deadline until `key` moves on."""
        self._timed.add(key)
        self._deadlines[key] = when

    def _drop_deadline(self, key: str) -> None:
        self._timed.discard(key)
        self._deadlines[key] = None

    def outgoing(self, receipt: int, key: str, kind: Delivery, item: Any) -> None:
        """Keep the output until it is confirmed."""
        blob = self._pickled(item, "conversation %s: cannot keep %r until sent (%s)", key, item)
        if blob is None:
            return
        receipt = self._global(receipt)
        self._outputs[receipt] = (receipt, key, kind.value, blob, _shard(key))

    def delivered(self, receipt: int) -> None:
        """Forget the output."""
        receipt = self._global(receipt)
        if self._outputs.pop(receipt, None) is None:  # else it was never written
            self._delivered.append(receipt)

    def _release(self, key: str) -> None:
        """`key`'s steps so far are obsolete: unwritten ones are dropped, written ones deleted.

        Its timer goes too: a new state or an end is past whatever it waited on.
        """
        self._new_steps.pop(key, None)
        if key in self._stored_steps:
            self._stored_steps.discard(key)
            self._clear_steps.add(key)
        if key in self._timed:
            self._drop_deadline(key)

    def _stored_memory(self, user: str) -> bytes | None:
        """What the database keeps for `user`."""
        rows = self._read(
            f'SELECT data FROM {_N}.memory WHERE bot = %s AND "user" = %s', (self.bot, user)
        )
        return bytes(rows[0][0]) if rows else None

    # -- writing a batch ----------------------------------------------------------

    def commit(self, source: int | None) -> None:
        """Write this batch in one transaction and commit it."""
        statements = self._batch_statements(source)
        self._reset_batch()
        if statements:
            self._write(statements)

    def _batch_statements(self, source: int | None) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The batch as (statement, rows) pairs, in an order that keeps it right.

        Deletions go first: a key's stored steps are deleted before its new
        ones (all taken after its latest snapshot) are inserted.
        """
        bot = self.bot
        ended = [key for key, kept in self._snapshots.items() if kept is None]
        saved = [
            (
                key, kept.state_class, kept.fields, self._at_of_state.get(key), self._since[key],
                _shard(key),
            )
            for key, kept in self._snapshots.items()
            if kept is not None
        ]
        dropped_notes = [note for note, value in self._notes.items() if value is None]
        notes = [(*note, value) for note, value in self._notes.items() if value is not None]
        serial = []
        if self._serial > self._serial_written:
            serial, self._serial_written = [(self._serial, bot)], self._serial
        steps = [row for rows in self._new_steps.values() for row in rows]
        waiting, unqueued = self._mailbox_changes()
        undated = [key for key, due in self._deadlines.items() if due is None]
        dated = [(key, due) for key, due in self._deadlines.items() if due is not None]
        forgotten = [user for user, data in self._memory_written.items() if data is None]
        memory = [(user, data) for user, data in self._memory_written.items() if data is not None]
        plan: list[tuple[str, list[tuple[Any, ...]]]] = [
            (_DROP_STEPS, [(bot, sorted(self._clear_steps))] if self._clear_steps else []),
            (_DROP_CONVERSATIONS, [(bot, ended)] if ended else []),
            (_SAVE_STATES, _columns(bot, saved)),
            (_ADD_STEPS, _columns(bot, steps)),
            (_DROP_WAITING, _columns(bot, unqueued)),
            (_ADD_WAITING, _columns(bot, waiting)),
            (_DROP_DEADLINES, [(bot, undated)] if undated else []),
            (_SET_DEADLINES, _columns(bot, dated)),
            (_DROP_MEMORY, [(bot, forgotten)] if forgotten else []),
            (_SAVE_MEMORY, _columns(bot, memory)),
            (_ADD_OUTGOING, _columns(bot, list(self._outputs.values()))),
            (_DROP_OUTGOING, [(bot, self._delivered)] if self._delivered else []),
            (_SAVE_SERIAL, serial),
            (_DROP_ALL_NOTES, [(bot, sorted(self._unnoted))] if self._unnoted else []),
            (_DROP_NOTES, _columns(bot, dropped_notes)),
            (_SAVE_NOTES, _columns(bot, notes)),
        ]
        if self.shared:
            # Update ids are unique by the updates table, not by a per-bot maximum
            # (which every instance would contend for).
            plan.append((_MARK_TAKEN, [(bot, self._took)] if self._took else []))
            if self._fence is not None:
                fenced = sorted({_shard(key) for key in (
                    *self._snapshots, *self._new_steps, *self._clear_steps,
                    *(row[0] for row in unqueued), *(row[0] for row in waiting), *self._deadlines,
                    *(row[1] for row in self._outputs.values()),
                )})  # fmt: skip
                if fenced:
                    holder, shard_lock, write_lock = self._fence
                    row = (write_lock, fenced, holder(), shard_lock, fenced, fenced)
                    plan.insert(0, (_FENCE, [row]))
        else:
            plan.extend(self._taken_changes())
        self._stored_steps.update(self._new_steps)
        return [(statement, rows) for statement, rows in plan if rows]

    def _taken_changes(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """What changed in the update ids taken (see engine.sources), as plan entries."""
        changes = self._taken.changes()
        if changes is None:
            return []
        bot = self.bot
        return [
            (_CLEAR_TAKEN, [(bot,)] if changes.cleared else []),
            (_DROP_TAKEN, [(bot, changes.removed)] if changes.removed else []),
            (_ADD_TAKEN, [(bot, changes.added)] if changes.added else []),
            (_SAVE_TAKEN_UP_TO, [] if changes.low is UNCHANGED else [(changes.low, bot)]),
        ]

    def _reset_batch(self) -> None:
        self._snapshots = {}
        self._at_of_state = {}
        self._new_steps = {}
        self._clear_steps = set()
        self._deadlines = {}
        self._memory_written.clear()
        self._outputs = {}
        self._delivered = []
        self._notes = {}
        self._unnoted = set()
        self._took = []

    def _write(self, statements: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        # The lock only matters at the end: a program closing the journal while
        # a stuck scheduler thread still commits.
        with self._closing:
            try:
                connection = self._reconnected() if self.shared else self._connection
                with connection.transaction(), connection.cursor() as cursor:
                    for statement, rows in statements:
                        if len(rows) == 1:
                            cursor.execute(statement, rows[0])
                        else:
                            cursor.executemany(statement, rows)
                        if statement is _FENCE:
                            self._check_fence(cursor.fetchone())
            except psycopg.Error as error:
                why = _explain(error, self.url)
                if self.shared and _is_lost(error, self._connection):
                    raise self._lost(why, f"lost the database ({why})", statements) from None
                raise JournalError(f"{self.label}: cannot write the journal ({why})") from None
            except _Fenced as fenced:  # only shared journals are fenced
                raise self._lost(str(fenced), str(fenced), statements) from None

    def _check_fence(self, row: tuple[Any, ...] | None) -> None:
        """Refuse the batch (rolled back) if a shard it writes is owned no more."""
        if row is None or not row[0]:
            raise _Fenced(
                "this instance no longer owns shard(s) it was writing; "
                "another instance drives them now"
            )

    def claim(self, flow: str) -> None:
        """Refuse a bot whose journal was written for another flow; note the flow if new."""
        rows = self._read(f"SELECT flow FROM {_N}.bots WHERE bot = %s", (self.bot,))
        kept = rows[0][0] if rows else None
        if kept is None:
            self._write([(f"UPDATE {_N}.bots SET flow = %s WHERE bot = %s", [(flow, self.bot)])])
        elif kept != flow:
            raise JournalError(
                f"{self.label}: bot {self.bot!r} belongs to the flow {kept}, not {flow}; "
                f"run with --flow {kept}, or use another database or bot"
            )

    # -- reading back -----------------------------------------------------------

    def _read_taken(self) -> Taken:
        """The update ids taken, as the database keeps them (shared: none, see :meth:`took`)."""
        if self.shared:
            return Taken()
        row = self._read(f"SELECT taken_up_to FROM {_N}.bots WHERE bot = %s", (self.bot,))
        low = None if not row or row[0][0] is None else int(row[0][0])
        rows = self._read(f"SELECT update_id FROM {_N}.taken WHERE bot = %s", (self.bot,))
        return Taken(low, [int(source) for (source,) in rows])

    def undelivered(
        self, shards: Iterable[int] | None = None
    ) -> list[tuple[int, str, Delivery, Any]]:
        """Outputs never confirmed, oldest first (one that cannot be read is dropped).

        Shared: only those of `shards` (none if not given).
        """
        outputs: list[tuple[int, str, Delivery, Any]] = []
        if self.shared and shards is None:
            return outputs
        where, params = self._in_shards(shards)
        confirmed = set(self._delivered)  # sent, and not yet written so (a batch was lost)
        for receipt, key, kind, blob in self._read(
            f"SELECT receipt, key, kind, item FROM {_N}.outgoing WHERE bot = %s{where} "
            "ORDER BY receipt",
            params,
        ):
            if receipt in confirmed:
                continue
            try:
                outputs.append((receipt, key, Delivery(kind), pickle.loads(blob)))
            except Exception as error:
                log.warning("conversation %s: an unsent output cannot be read (%r)", key, error)
                self._delivered.append(receipt)
        return outputs

    def _in_shards(self, shards: Iterable[int] | None) -> tuple[str, tuple[Any, ...]]:
        """A WHERE clause's tail and parameters: this bot's rows, of `shards` if given."""
        if shards is None:
            return "", (self.bot,)
        return " AND shard = ANY(%s)", (self.bot, sorted(shards))

    def unfinished(self, shards: Iterable[int] | None = None) -> Iterator[Saved]:
        """Every saved conversation of this bot, with its steps, waiting messages and deadline.

        Shared: only those of `shards` (none if not given), read as the new
        owner of those shards.
        """
        saved: dict[str, Saved] = {}
        if self.shared and shards is None:
            return iter(())
        where, params = self._in_shards(shards)
        for key, class_path, fields, at, since in self._read(
            f"SELECT key, state_class, state_fields, at, since FROM {_N}.conversations "
            f"WHERE bot = %s{where}",
            params,
        ):
            saved[key] = Saved(key, Snapshot(class_path, bytes(fields)), last_active=at)
            self._counts[key] = 0
            self._since[key] = since
        if shards is not None:
            return self._rest_of(saved, (self.bot, list(saved)), " AND key = ANY(%s)")
        return self._rest_of(saved, (self.bot,), "")

    def _rest_of(
        self, saved: dict[str, Saved], bot: tuple[Any, ...], where: str
    ) -> Iterator[Saved]:
        """Steps, mailboxes and deadlines of the `saved` conversations."""
        for key, _seq, print_, answer, at in self._read(
            f"SELECT key, seq, fingerprint, answer, at FROM {_N}.steps "
            f"WHERE bot = %s{where} ORDER BY key, seq",
            bot,
        ):
            self._stored_steps.add(key)
            conversation = saved.get(key)
            if conversation is None:  # a conversation that is gone: its steps are of no use
                self._clear_steps.add(key)
                continue
            conversation.steps.append(_read_step(print_, answer))
            if at is not None:  # steps only get later
                conversation.last_active = at
            self._counts[key] += 1
        for key, seq, item in self._read(
            f"SELECT key, seq, item FROM {_N}.waiting WHERE bot = %s{where} ORDER BY key, seq", bot
        ):
            self._restore_waiting(saved, key, seq, bytes(item))
        for key, due in self._read(
            f"SELECT key, due FROM {_N}.deadlines WHERE bot = %s{where}", bot
        ):
            if key in saved:
                saved[key].deadline = due
                self._timed.add(key)
            else:
                self._deadlines[key] = None
        self._read_notes(saved, bot, where)
        serial = self._read(f"SELECT serial FROM {_N}.bots WHERE bot = %s", (self.bot,))
        self._serial = self._serial_written = max(
            [serial[0][0] if serial else 0, *(self.position(key) for key in saved)]
        )
        return iter(saved.values())

    def _read_notes(self, saved: dict[str, Saved], bot: tuple[Any, ...], where: str) -> None:
        """Give each conversation its notes back; one that cannot be read is dropped."""
        for key, name, blob in self._read(
            f"SELECT key, name, value FROM {_N}.notes WHERE bot = %s{where}", bot
        ):
            self._noted.add(key)
            if key not in saved:
                self._unnoted.add(key)
                continue
            try:
                saved[key].notes[name] = pickle.loads(blob)
            except Exception as error:  # only a frontend's convenience is lost
                log.warning("conversation %s: its note %s cannot be read (%r)", key, name, error)

    def _read(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._closing:
            try:
                connection = self._reconnected() if self.shared else self._connection
                return connection.execute(query.encode(), params).fetchall()
            except psycopg.Error as error:
                why = _explain(error, self.url)
                if self.shared and _is_lost(error, self._connection):
                    raise self._lost(why, f"lost the database ({why})", []) from None
                raise JournalError(f"{self.label}: cannot read the journal ({why})") from None

    # -- copying in (engine.sqlite_to_postgres) --------------------------------

    def import_state(
        self,
        conversations: Iterable[Saved],
        outputs: Iterable[tuple[int, str, Delivery, Any]],
        taken: Taken,
        *,
        memory: Iterable[tuple[str, bytes]] = (),
        flow: str | None = None,
    ) -> int:
        """Write conversations, unsent outputs, memory, the flow and the update ids taken.

        All in one transaction. Refused (a :class:`JournalError`) if this bot
        already has anything in the database: copying over live state would
        lose or mix conversations. Returns how many conversations were written.
        """
        if self.holds_state():
            raise JournalError(
                f"{self.label}: bot {self.bot!r} already has conversations or update ids "
                "in this database; not overwriting them"
            )
        count = 0
        for saved in conversations:
            key = saved.key
            self._snapshots[key] = saved.snapshot
            self._at_of_state[key] = saved.last_active
            self._new_steps[key] = [
                (key, seq, step.fingerprint,
                 pickle.dumps((step.value, step.error), _PROTOCOL), saved.last_active)
                for seq, step in enumerate(saved.steps, 1)
            ]
            self._counts[key] = len(saved.steps)
            self._serial += 1
            self._since[key] = self._serial
            for name, value in saved.notes.items():
                self.note(key, name, value)
            for item in saved.mailbox:
                self.queued(key, item)
            if saved.deadline is not None:
                self.deadline(key, saved.deadline)
            count += 1
        for receipt, key, kind, item in outputs:
            self.outgoing(receipt, key, kind, item)
        for user, data in memory:
            self.remember(user, data)
        if not self.shared:
            self._taken = taken.copy()
        self.commit(taken.highest)
        if flow is not None:
            self.claim(flow)
        return count

    def holds_state(self) -> bool:
        """Whether this bot has conversations, unsent outputs, memory or a last update id here."""
        return self.last_source() is not None or any(
            self._read(f"SELECT 1 FROM {_N}.{table} WHERE bot = %s LIMIT 1", (self.bot,))
            for table in ("conversations", "outgoing", "memory")
        )

    def close(self) -> None:
        """Write what is buffered, give the bot's lock back, and close the connection."""
        self._closing_for_good = True
        super().close()

    def _disconnect(self) -> None:
        if self._closing_for_good and not self._connection.closed:
            # Given back now, not when the server notices the session ended:
            # that comes moments later (more on a busy machine), and an instance
            # started right after this one stopped was refused as "in use" meanwhile.
            # A lost connection fails here: the server lets go of that one anyway.
            with contextlib.suppress(psycopg.Error):
                self._connection.execute("SELECT pg_advisory_unlock_all()")
        self._connection.close()


class _Fenced(Exception):
    """A shared journal's batch was refused: its instance no longer owns a shard it writes."""


def _is_lost(error: psycopg.Error, connection: psycopg.Connection[Any]) -> bool:
    """Whether `error` is the connection failing (the server gone), not the statement."""
    return isinstance(error, psycopg.OperationalError) or connection.closed


_NOTHING = pickle.dumps((None, None), _PROTOCOL)
#: Shared: an instance's receipts are its number shifted left by this, plus its own count.
RECEIPT_BITS = 32
_MARK_TAKEN = f"UPDATE {_N}.updates SET taken = true WHERE bot = %s AND update_id = ANY(%s)"
# Waits for nothing unless a new owner is reading the shard (see fence), then
# checks the holder still holds every shard written: true, or the batch is refused.
_FENCE = (
    "SELECT (SELECT count(*) FROM (SELECT pg_advisory_xact_lock_shared(%s::int4, s) "
    "FROM unnest(%s::int4[]) AS s) AS waited) >= 0 AND (SELECT count(*) FROM pg_locks "
    "WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND pid = %s "
    "AND classid = %s::int4::oid AND objid = ANY(%s::int4[]::oid[]) AND objsubid = 2)"
    " = cardinality(%s::int4[])"
)


def _shard(key: str) -> int:
    """`key`'s shard (imported late: engine.shards imports this module)."""
    from engine.shards import shard_of

    return shard_of(key)


def _columns(bot: str, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`rows` as the parameters of one unnest statement: `bot`, then a list per column."""
    if not rows:
        return []
    return [(bot, *(list(column) for column in zip(*rows, strict=True)))]


def _read_step(print_: str, answer: bytes) -> Step:
    try:
        value, error = pickle.loads(answer)
    except Exception:  # a class that is gone or changed: the flow must start over
        return Step(UNREADABLE)
    return Step(print_, value, error)


def _stored_version(connection: psycopg.Connection[Any]) -> int | None:
    """The schema version in the database, or None if it holds no journal yet."""
    row = connection.execute("SELECT to_regclass(%s)", (f"{_N}.meta",)).fetchone()
    if row is None or row[0] is None:
        return None
    found = connection.execute(
        f"SELECT value FROM {_N}.meta WHERE name = 'schema_version'"
    ).fetchone()
    return None if found is None else int(found[0])


def _upgrade(connection: psycopg.Connection[Any], version: int) -> None:
    """Bring a database of an older schema up to date (inside the caller's transaction)."""
    if version == 1:
        connection.execute(_UPGRADE_FROM_1.encode())
        rows = connection.execute(f"SELECT bot, key, texts FROM {_N}.mailbox").fetchall()
        connection.cursor().executemany(
            f"UPDATE {_N}.mailbox SET items = %s WHERE bot = %s AND key = %s",
            [(pickle.dumps(list(texts), _PROTOCOL), bot, key) for bot, key, texts in rows],
        )
        connection.execute(_UPGRADE_FROM_1_END.encode())
    if version <= 3:
        connection.execute(_UPGRADE_FROM_3.encode())
        for table in ("conversations", "outgoing"):
            keys = connection.execute(f"SELECT DISTINCT key FROM {_N}.{table}".encode()).fetchall()
            connection.cursor().executemany(
                f"UPDATE {_N}.{table} SET shard = %s WHERE key = %s".encode(),
                [(_shard(key), key) for (key,) in keys],
            )
    if version <= 4:
        connection.execute(_UPGRADE_FROM_4.encode())
        _split_mailboxes(connection)
    connection.execute(
        f"UPDATE {_N}.meta SET value = %s WHERE name = 'schema_version'", (str(SCHEMA_VERSION),)
    )


def _split_mailboxes(connection: psycopg.Connection[Any]) -> None:
    """Schema 4 to 5: each conversation's pickled list of waiting messages becomes a row each."""
    rows: list[tuple[str, str, int, bytes]] = []
    for bot, key, blob in connection.execute(f"SELECT bot, key, items FROM {_N}.mailbox"):
        try:
            items = [pickle.dumps(item, _PROTOCOL) for item in pickle.loads(blob)]
        except Exception:  # kept unreadable: that conversation starts over, as before
            items = [b""]
        rows.extend((bot, key, seq, item) for seq, item in enumerate(items, 1))
    connection.cursor().executemany(f"INSERT INTO {_N}.waiting VALUES (%s, %s, %s, %s)", rows)
    connection.execute(f"DROP TABLE {_N}.mailbox")


# -- URLs and errors, on one line and without the password ----------------------


def redact(url: str) -> str:
    """`url` with its password (if any) replaced by ``***``, to show in messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:  # not even a URL: mask anything between ':' and '@'
        return re.sub(r"(//[^:/@]*):[^@]*@", r"\1:***@", url)


def _connect_options(url: str, label: str) -> dict[str, Any]:
    """Check the URL before connecting; a connect timeout unless it sets one."""
    try:
        parsed = conninfo.conninfo_to_dict(url)
    except psycopg.Error as error:
        why = _explain(error, url)
        raise JournalError(f"{label}: not a valid PostgreSQL URL ({why})") from None
    for port in str(parsed.get("port", "")).split(","):
        if port and not port.isdigit():
            why = f"port {port!r} is not a number"
            raise JournalError(f"{label}: not a valid PostgreSQL URL ({why})")
    return {} if "connect_timeout" in parsed else {"connect_timeout": CONNECT_TIMEOUT}


def _explain(error: psycopg.Error, url: str) -> str:
    """The reason in `error`, on one line, in an operator's words where they are known."""
    lines = str(error).replace(url, redact(url)).splitlines()  # libpq may quote the URL
    text = ". ".join(" ".join(line.split()).rstrip(".") for line in lines if line.strip())
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    text = re.sub(r"^connection failed: ", "", text)
    text = re.sub(r'^connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed: ', "", text)
    text = text.replace("FATAL: ", "").strip()
    if isinstance(error, errors.InsufficientPrivilege):
        return f"missing permissions ({text})"
    if "password authentication failed" in text or "no password supplied" in text:
        return f"login refused ({text})"
    if "Connection refused" in text or "timeout expired" in text or "resolve host" in text:
        return f"cannot reach the server ({text})"
    return text


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        found = re.search(r"//[^:/@]*:([^@]*)@", url)
        return found.group(1) if found else None
