"""Which instance drives which conversations, when several share one PostgreSQL database.

Conversations hash into a fixed number of shards (:func:`shard_of`). An
instance owns a shard while it holds a PostgreSQL session-level advisory lock
on it; the server releases the lock when the instance's connection dies (a
``kill -9``, a crash, a network cut noticed by TCP keepalives), so ownership
needs no consensus code of ours. Each instance also holds a *member* lock,
which is how the instances count each other, and at most one holds the
*lease* (the instance that polls Telegram in polling mode).

Every `interval` seconds each instance rebalances: with ``m`` members, it
aims at ``ceil(shards / m)`` shards, gives back what it holds above that
(telling its owner first, so it stops running them before the lock goes) and
takes free shards up to it (telling its owner after, so it rebuilds them from
the journal). A shard whose owner died is free at once, so it is taken by a
survivor within one interval of the server noticing the death: at once for
``kill -9`` on a reachable machine, within the keepalive time
(:data:`KEEPALIVE`, about 6 s) for a network cut.

When the database is lost (a restart, a network cut, or any of the
instance's connections failing: :meth:`Shards.lost`), the instance lets every
shard go (its owner told first), closes the connection (so the locks go with
it) and reconnects as soon as the server answers, then rejoins: it waits one
interval for the other instances to come back too, and takes its share again.
:class:`Outage` logs one line when it starts and one when it is over.

This module is the ownership layer only: see the README's "Running at scale"
for what is and is not built on it yet.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import psycopg

from engine.journal import JournalError
from engine.postgres_journal import DEFAULT_BOT, _connect_options, _explain, redact

log = logging.getLogger(__name__)

#: Shards per bot: fixed for the life of a database (a key's shard must not move).
SHARDS = 64
#: Seconds between two rebalances (and the failover time after the server notices a death).
INTERVAL = 2.0
#: Server-side TCP keepalive (idle, interval, count): a silent peer is dropped in ~6 s.
KEEPALIVE = (3, 1, 3)

_LOCK = "SELECT pg_advisory_lock(%s::int4, %s::int4)"
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s::int4, %s::int4)"
_UNLOCK = "SELECT pg_advisory_unlock(%s::int4, %s::int4)"

#: Seconds between two attempts to reconnect while the database is lost.
RECONNECT = 0.25

#: Told of shards gained or lost: ``changed(gained, lost)``.
Changed = Callable[[frozenset[int], frozenset[int]], None]


class Outage:
    """Whether the instance has lost the database: one log line when lost, one when back."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._since = 0.0

    def failed(self, reason: str) -> bool:
        """A connection failed for `reason`; whether that starts an outage (then it is logged)."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason, self._since = reason, time.monotonic()
        log.error("%s: lost the database (%s); letting every conversation go until it is back",
                  self.label, reason)  # fmt: skip
        return True

    def back(self) -> None:
        """Connected again: the outage is over."""
        with self._lock:
            if self._reason is None:
                return
            self._reason, lasted = None, time.monotonic() - self._since
        log.info("%s: the database is back after %.1f s; rejoining", self.label, lasted)

    @property
    def down(self) -> bool:
        """Whether the database is lost now."""
        return self._reason is not None

    def problem(self) -> str | None:
        """Why the instance is not ready (for ``/healthz``), or None."""
        reason, since = self._reason, self._since
        if reason is None:
            return None
        return f"database lost {time.monotonic() - since:.0f}s ago ({reason})"


def shard_of(key: str, shards: int = SHARDS) -> int:
    """The shard `key`'s conversation belongs to: the same in every process and version."""
    return zlib.crc32(key.encode("utf-8")) % shards


def _namespace(bot: str, kind: str) -> int:
    """The first key of a two-key advisory lock: one per bot and kind of lock (31 bits)."""
    return zlib.crc32(f"yielded:{bot}:{kind}".encode()) & 0x7FFFFFFF


class Shards:
    """This instance's share of `bot`'s shards, kept balanced by a named thread.

    ``start()`` connects (a :class:`JournalError` in one line if it cannot),
    joins the members and rebalances once before returning; ``stop()`` gives
    every shard and the lease back and disconnects. `changed` is called on the
    rebalancing thread, before lost shards' locks are released and after
    gained shards' locks are taken.
    """

    def __init__(
        self,
        url: str,
        *,
        bot: str = DEFAULT_BOT,
        shards: int = SHARDS,
        interval: float = INTERVAL,
        changed: Changed | None = None,
        disconnected: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.label = redact(url)
        self.shards = shards
        self.interval = interval
        self.changed = changed
        #: Called once every shard is let go after the database was lost, before reconnecting.
        self.disconnected = disconnected
        self.outage = Outage(self.label)
        self.owned: frozenset[int] = frozenset()
        self.leader = False
        self._member_ns = _namespace(bot, "member")
        self._shard_ns = _namespace(bot, "shard")
        self._lease_ns = _namespace(bot, "lease")
        #: First key of the transaction locks fencing journal writes per shard.
        self.write_lock = _namespace(bot, "write")
        self._member_id = random.getrandbits(31)
        self._lease_wanted = True  # False once given up for good (stopping)
        self._connection: psycopg.Connection[Any] | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set to rebalance (or rejoin) before the interval is up
        self._rejoin = threading.Event()  # set when the database is lost (see lost)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="shards", daemon=True)

    # -- starting and stopping ---------------------------------------------------

    def start(self) -> Shards:
        """Connect, join, take a fair share now, then keep it balanced in the background."""
        try:
            self._join()
            self.rebalance()
        except psycopg.Error as error:
            raise JournalError(f"{self.label}: {_explain(error, self.url)}") from None
        self._thread.start()
        return self

    def _join(self) -> None:
        """Connect and hold the member lock (psycopg.Error if the server cannot be reached)."""
        options = _connect_options(self.url, self.label)
        self._connection = psycopg.connect(self.url, autocommit=True, **options)
        idle, interval, count = KEEPALIVE
        self._connection.execute(
            f"SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; "
            f"SET tcp_keepalives_count = {count}".encode()
        )
        self._sql(_LOCK, self._member_ns, self._member_id)

    def stop(self) -> None:
        """Give everything back (the owner is told first) and disconnect; joins the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 10)
        with self._lock:
            if self._connection is None:
                return
            lost, self.owned, self.leader = self.owned, frozenset(), False
            if lost and self.changed is not None:
                self.changed(frozenset(), lost)
            try:
                self._connection.close()  # the server releases every lock of the session
            finally:
                self._connection = None

    # -- balancing -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                if self._rejoin.is_set():
                    self._reconnect()
                    if self._stopping.is_set():
                        break
                self.rebalance()
            except psycopg.Error as error:
                # The connection is gone: so are the locks. Stop driving anything.
                self.lost(_explain(error, self.url))

    def lost(self, reason: str) -> None:
        """A connection of this instance to the database failed: let go of everything, rejoin.

        From any thread; logged once per outage. Does nothing more while an
        outage is already being dealt with.
        """
        if self.outage.failed(reason):
            self._rejoin.set()
            self._wake.set()

    def _reconnect(self) -> None:
        """Let every shard go (the owner is told first), drop the connection, connect again."""
        self._abandon()
        with self._lock:
            if self._connection is not None:
                self._connection.close()  # the locks go with it, if the server is there
                self._connection = None
        if self.disconnected is not None:
            self.disconnected()
        while not self._stopping.is_set():
            try:
                with self._lock:
                    self._join()
                break
            except psycopg.Error:
                with self._lock:
                    if self._connection is not None:
                        self._connection.close()
                        self._connection = None
                self._stopping.wait(RECONNECT)
        else:
            return
        self._rejoin.clear()
        self.outage.back()
        # The others reconnect about now too: counted after a while, the
        # shares are right the first time instead of moving back and forth.
        self._stopping.wait(self.interval)

    def _abandon(self) -> None:
        with self._lock:
            lost, self.owned, self.leader = self.owned, frozenset(), False
            if lost and self.changed is not None:
                self.changed(frozenset(), lost)

    def rebalance(self) -> tuple[frozenset[int], frozenset[int]]:
        """Give back shards above a fair share, take free ones up to it; (gained, lost)."""
        with self._lock:
            members = max(1, self._count_members())
            target = math.ceil(self.shards / members)
            lost = frozenset(sorted(self.owned, reverse=True)[: max(0, len(self.owned) - target)])
            if lost:
                if self.changed is not None:
                    self.changed(frozenset(), lost)  # stop running them before the lock goes
                for shard in lost:
                    self._sql(_UNLOCK, self._shard_ns, shard)
                self.owned -= lost
            gained = self._take_free(target - len(self.owned))
            if gained:
                self._wait_for_writers(gained)
                self.owned |= gained
                if self.changed is not None:
                    self.changed(gained, frozenset())
            self._hold_lease()
        if gained or lost:
            log.info("shards: %d members; took %d, gave back %d; now own %d of %d%s", members,
                     len(gained), len(lost), len(self.owned), self.shards,
                     " and the polling lease" if self.leader else "")
        return gained, lost

    def _take_free(self, wanted: int) -> frozenset[int]:
        if wanted <= 0:
            return frozenset()
        held = {row[0] for row in self._rows(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = %s::int4::oid AND objsubid = 2 AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            self._shard_ns,
        )}
        free = [shard for shard in range(self.shards) if shard not in held]
        random.shuffle(free)  # instances rebalancing at once mostly try different shards
        taken: set[int] = set()
        for shard in free:
            if len(taken) == wanted:
                break
            if self._rows(_TRY_LOCK, self._shard_ns, shard)[0][0]:
                taken.add(shard)
        return frozenset(taken)

    def _wait_for_writers(self, gained: frozenset[int]) -> None:
        """Wait until a batch the previous owner is committing for `gained` is done.

        Its commit holds this lock shared (see PostgresJournal.fence); any
        later one finds the shard's lock held by us, and is refused.
        """
        assert self._connection is not None
        with self._connection.transaction():
            self._connection.execute(
                b"SELECT count(pg_advisory_xact_lock(%s::int4, s)) FROM unnest(%s::int4[]) AS s",
                (self.write_lock, sorted(gained)),
            )

    @property
    def shard_lock(self) -> int:
        """First key of the session locks that are the shards (for PostgresJournal.fence)."""
        return self._shard_ns

    def backend_pid(self) -> int | None:
        """The server process of the connection holding the shards, or None if none."""
        connection = self._connection
        return None if connection is None or connection.closed else connection.info.backend_pid

    def _hold_lease(self) -> None:
        if not self.leader and self._lease_wanted:
            self.leader = bool(self._rows(_TRY_LOCK, self._lease_ns, 0)[0][0])

    def release_lease(self) -> None:
        """Give the lease up for good (stopping): another instance takes it at its next rebalance.

        Only once the poller's last poll is over: the next holder polls at once.
        """
        with self._lock:
            self._lease_wanted = False
            if not self.leader or self._connection is None:
                return
            self.leader = False
            try:
                self._sql(_UNLOCK, self._lease_ns, 0)
            except psycopg.Error as error:  # the session is gone, and the lock with it
                log.warning("%s: could not give the lease back (%s); the server frees it "
                            "with the connection", self.label, _explain(error, self.url))

    def _count_members(self) -> int:
        return int(self._rows(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = %s::int4::oid AND objsubid = 2 AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            self._member_ns,
        )[0][0])

    def owns(self, key: str) -> bool:
        """Whether this instance drives `key`'s conversation now."""
        return shard_of(key, self.shards) in self.owned

    def _sql(self, query: str, *params: Any) -> None:
        self._rows(query, *params)

    def _rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        assert self._connection is not None
        return self._connection.execute(query.encode(), params).fetchall()
