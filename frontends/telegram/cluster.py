"""Several instances of one bot on one PostgreSQL database (``--shared``).

Any instance takes an update in from its webhook: it is inserted into the
``updates`` table (idempotent on its update id) and answered 200 once that
commits, and a ``NOTIFY`` wakes the instances. Each instance owns some
shards (:mod:`engine.shards`); its :class:`ShardFeed` takes the pending
updates of those shards, in update-id order, and hands them to its own
scheduler with the update id as source. The scheduler marks an update taken
in the same transaction as what it caused (``Journal.took``), fenced by
shard ownership, so an update is taken once however ownership moves.

A shard gained is rebuilt from the journal (``Scheduler.adopt``); a shard
given back is let go once its last batch is committed (``Scheduler.drop``).

In polling mode the instance holding the lease (:mod:`engine.shards`) polls
Telegram and puts what it gets into the same table (:class:`SharedPolling`),
confirming the offset only once that commits; the others wait for the lease.

Taken rows are pruned (:func:`prune_updates`, by the lease holder): those more
than :data:`KEEP_TAKEN` ids below the newest taken go, and the highest id
pruned becomes the bot's mark (``bots.taken_up_to``). An update at or below
the mark is refused as taken before, so a redelivery after pruning is still
taken once.

Any of the instance's connections failing is the database lost
(``Shards.lost``, logged once): the instance lets every conversation go,
refuses webhook updates (503, so Telegram sends them again) and says why on
``/healthz``, reconnects everything, and takes its share of shards again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import psycopg
from telebot import types

from engine.frontend import Key
from engine.journal import JournalError
from engine.postgres_journal import (
    NAMESPACE,
    PostgresJournal,
    _connect_options,
    _explain,
    redact,
)
from engine.scheduler import Adoption, Scheduler
from engine.shards import SHARDS, Shards, shard_of
from frontends.telegram.routing import conversation_key, is_group
from frontends.telegram.updates import Updates
from frontends.telegram.webhook import NotKept

log = logging.getLogger(__name__)

#: Seconds between two looks at the updates table when no notification came.
FEED_POLL = 0.25
#: Taken updates kept below the newest taken one, by id: Telegram's redeliveries
#: of a webhook update (and the updates in flight beside it) come within this
#: window; an update arriving later than that behind newer ones counts as taken.
KEEP_TAKEN = 10_000
#: Seconds between two prunings of the updates table (by the lease holder).
PRUNE_EVERY = 10.0
#: Seconds a shard given back waits for its sends in flight (one slower may be sent twice).
SETTLE_TIMEOUT = 5.0
_N = NAMESPACE
#: pyTelegramBotAPI's Update, whose ``de_json`` is not annotated.
_update_type: Any = types.Update


def channel(bot: str) -> str:
    """The NOTIFY channel of `bot`'s new updates."""
    return f"yielded_updates_{shard_of(bot, 1 << 30)}"


def update_key(item: dict[str, Any]) -> Key:
    """The conversation an update (raw JSON) belongs to, as the handlers key it."""
    for kind in ("message", "edited_message"):
        message = item.get(kind)
        if isinstance(message, dict) and isinstance(message.get("chat"), dict):
            chat = message["chat"]
            person = message.get("from") or {}
            if "id" in person:
                return conversation_key(chat.get("id"), person["id"], is_group(chat.get("type")))
            return str(chat.get("id"))
    press = item.get("callback_query")
    if isinstance(press, dict):
        chat = (press.get("message") or {}).get("chat") or {}
        person = press.get("from") or {}
        if "id" in chat and "id" in person:
            return conversation_key(chat["id"], person["id"], is_group(chat.get("type")))
    return f"update:{item.get('update_id')}"


#: Told that a connection to the database failed, with why (``Shards.lost``).
Lost = Callable[[str], None]


def _ignore(reason: str) -> None:
    pass


class UpdateStore:
    """Puts updates into the ``updates`` table, for any request thread."""

    def __init__(
        self, url: str, bot: str, lost: Lost = _ignore, down: Callable[[], bool] = bool
    ) -> None:
        self.url, self.bot, self.label = url, bot, redact(url)
        self.lost = lost
        self.down = down  # the database is lost: refuse at once, without trying to connect
        self._channel = channel(bot)
        self._lock = threading.Lock()
        self._connection = _connect(url)

    def put(self, update_id: int, item: dict[str, Any]) -> bool:
        """Keep the update (once, however often it comes) and wake its owner; whether it worked."""
        return self.put_many([(update_id, item)]) is not None

    def put_many(self, items: list[tuple[int, dict[str, Any]]]) -> int | None:
        """Keep `items` (update id, raw update) in one transaction; how many were new.

        None if they could not be kept (logged; the database lost is told to
        `lost`). An update already in the table, or at or below the pruning
        mark, is not new and is not kept again.
        """
        if not items:
            return 0
        if self.down():
            return None
        shards = [shard_of(update_key(item)) for _, item in items]
        with self._lock:
            try:
                if self._connection.closed:
                    self._connection = _connect(self.url)
                with self._connection.transaction():
                    # Shared: a pruning (exclusive) is either wholly before or after.
                    self._connection.execute(_PRUNING_LOCK.format(kind="_shared").encode(),
                                             (_prune_lock(self.bot),))  # fmt: skip
                    kept = self._connection.execute(_PUT_UPDATES.encode(), (
                        self.bot, [update_id for update_id, _ in items], shards,
                        [json.dumps(item) for _, item in items], self.bot,
                    )).fetchall()  # fmt: skip
                    for shard in sorted({int(row[0]) for row in kept}):
                        self._connection.execute(b"SELECT pg_notify(%s, %s)",
                                                 (self._channel, str(shard)))  # fmt: skip
            except (psycopg.Error, JournalError) as error:
                first, last = items[0][0], items[-1][0]
                which = str(first) if first == last else f"{first}..{last}"
                log.debug("%s: cannot keep update %s (%s)", self.label, which, error)
                if isinstance(error, psycopg.OperationalError) or self._connection.closed:
                    self._connection.close()
                    self.lost(_explain(error, self.url) if isinstance(error, psycopg.Error)
                              else str(error))  # fmt: skip
                else:
                    log.error("%s: cannot keep update %s (%s)", self.label, which, error)
                return None
        return len(kept)

    def disconnect(self) -> None:
        """Drop the connection (the database was lost); the next update reconnects."""
        with self._lock:
            self._connection.close()

    def close(self) -> None:
        with self._lock:
            self._connection.close()


#: Inserts the updates above the bot's mark that are not in the table yet;
#: returns the shard of each one inserted.
_PUT_UPDATES = (
    f"INSERT INTO {_N}.updates (bot, update_id, shard, payload) "
    "SELECT %s, u.id, u.shard, u.payload FROM unnest(%s::int8[], %s::int4[], %s::text[]) "
    "AS u(id, shard, payload) WHERE u.id > COALESCE("
    f"(SELECT taken_up_to FROM {_N}.bots WHERE bot = %s), -1) "
    "ON CONFLICT DO NOTHING RETURNING shard"
)
_PRUNING_LOCK = "SELECT pg_advisory_xact_lock{kind}(%s::int4, 0)"


def _prune_lock(bot: str) -> int:
    """The first key of the lock that keeps puts and prunings of `bot` apart."""
    return zlib.crc32(f"yielded:{bot}:prune".encode()) & 0x7FFFFFFF


def prune_updates(connection: psycopg.Connection[Any], bot: str, keep: int = KEEP_TAKEN) -> int:
    """Delete `bot`'s taken updates more than `keep` ids below the newest taken; how many.

    The highest id deleted becomes the bot's mark (``bots.taken_up_to``,
    never lowered): from then on an update at or below it is refused as taken.
    Pending updates stay, whatever their id.
    """
    with connection.transaction():
        connection.execute(_PRUNING_LOCK.format(kind="").encode(), (_prune_lock(bot),))
        connection.execute(
            f"UPDATE {_N}.bots SET taken_up_to = GREATEST(taken_up_to, newest.id - %s) "
            f"FROM (SELECT max(update_id) AS id FROM {_N}.updates WHERE bot = %s AND taken) "
            "AS newest WHERE bot = %s AND newest.id - %s >= 0".encode(),
            (keep, bot, bot, keep),
        )
        deleted = connection.execute(
            f"DELETE FROM {_N}.updates WHERE bot = %s AND taken AND update_id <= "
            f"(SELECT taken_up_to FROM {_N}.bots WHERE bot = %s)".encode(),
            (bot, bot),
        )
        return deleted.rowcount


class SharedIntake:
    """The webhook's intake when shared: an update is answered once it is in the table."""

    def __init__(self, store: UpdateStore, metrics: Any) -> None:
        self.store = store
        self.metrics = metrics

    def take(self, update_id: int, update: Any, item: Any = None) -> threading.Event | None:
        """Keep `item`; an event set once it is committed (:class:`NotKept` if it cannot be)."""
        new = self.store.put_many([(update_id, item)])
        if new is None:
            raise NotKept("the database cannot be reached")
        if new:
            self.metrics.update_taken("webhook")
        else:  # in the table already, or at or below the pruning mark
            self.metrics.updates_redelivered.inc()
        kept = threading.Event()
        kept.set()
        return kept


class SharedPolling:
    """The poller's keeper when shared: it polls under the lease and keeps updates in the table."""

    def __init__(self, store: UpdateStore, shards: Shards, metrics: Any) -> None:
        self.store = store
        self.shards = shards
        self.metrics = metrics

    def leading(self) -> bool:
        """Whether this instance holds the polling lease."""
        return self.shards.leader

    def keep(self, items: list[tuple[int, dict[str, Any]]]) -> bool:
        """Commit `items` to the updates table (once each); whether it worked."""
        new = self.store.put_many(items)
        if new is None:
            return False
        if new:
            self.metrics.update_taken("polling", new)
        if len(items) > new:  # kept before (a takeover polls from the oldest unconfirmed)
            self.metrics.updates_redelivered.inc(len(items) - new)
        return True


class ShardFeed(threading.Thread):
    """Hands the pending updates of the shards this instance owns to its handlers, in order.

    While `pruning()` says so (this instance holds the lease), it also prunes
    the updates table every `prune_every` seconds, keeping `keep` taken ids.
    """

    def __init__(
        self,
        url: str,
        bot: str,
        updates: Updates,
        *,
        pruning: Callable[[], bool] = lambda: False,
        keep: int = KEEP_TAKEN,
        prune_every: float = PRUNE_EVERY,
        lost: Lost = _ignore,
    ) -> None:
        super().__init__(name="shard-feed", daemon=True)
        self.url, self.bot, self.label = url, bot, redact(url)
        self.updates = updates
        self.lost = lost
        self.pruning = pruning
        self.keep = keep
        self.prune_every = prune_every
        self._pruned_at: float | None = None  # time.monotonic() of the last pruning
        self._owned: set[int] = set()
        self._handed: dict[int, int] = {}  # update id -> shard: handed over, not yet seen taken
        self._lock = threading.Lock()  # held while handing over: losing a shard waits
        self._stopping = threading.Event()
        self._connection: psycopg.Connection[Any] | None = None

    def gain(self, shards: frozenset[int]) -> None:
        with self._lock:
            self._owned |= shards

    def lose(self, shards: frozenset[int]) -> None:
        """Hand over nothing more of `shards` (returns once a hand-over under way is done)."""
        with self._lock:
            self._owned -= shards
            # Not taken by the time they are let go (a batch lost with the
            # database): handed over again if the shards come back here.
            self._handed = {u: shard for u, shard in self._handed.items() if shard not in shards}

    def lose_all(self) -> None:
        """Hand over nothing more (the database was lost)."""
        with self._lock:
            owned = frozenset(self._owned)
        self.lose(owned)

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = _connect(self.url)
                    self._connection.execute(f'LISTEN "{channel(self.bot)}"'.encode())
                self._take_pending()
                self._prune_when_due()
                for _ in self._connection.notifies(timeout=FEED_POLL, stop_after=1):
                    pass
            except (psycopg.Error, JournalError) as error:
                log.debug("%s: cannot read updates (%s); trying again", self.label, error)
                if self._connection is not None:
                    self._connection.close()
                self.lost(_explain(error, self.url) if isinstance(error, psycopg.Error)
                          else str(error))  # fmt: skip
                self._stopping.wait(FEED_POLL)

    def _take_pending(self) -> None:
        assert self._connection is not None
        with self._lock:
            if not self._owned:
                return
            rows = self._connection.execute(
                f"SELECT update_id, payload, shard FROM {_N}.updates WHERE bot = %s "
                "AND NOT taken AND shard = ANY(%s) ORDER BY update_id".encode(),
                (self.bot, sorted(self._owned)),
            ).fetchall()
            pending = {row[0] for row in rows}
            # The rest were taken: forget them.
            self._handed = {u: shard for u, shard in self._handed.items() if u in pending}
            for update_id, payload, shard in rows:
                if update_id not in self._handed:
                    self._handed[update_id] = shard
                    self._hand_over(update_id, payload)

    def _prune_when_due(self) -> None:
        now = time.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < self.prune_every:
            return
        if not self.pruning():
            return
        assert self._connection is not None
        self._pruned_at = now
        deleted = prune_updates(self._connection, self.bot, self.keep)
        if deleted:
            log.debug("pruned %d taken update(s)", deleted)

    def _hand_over(self, update_id: int, payload: str) -> None:
        try:
            self.updates.handle(_update_type.de_json(json.loads(payload)))
        except Exception:
            log.exception("error handling update %s", update_id)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)
        if self._connection is not None:
            self._connection.close()


class Cluster:
    """This instance's part: its shards, its feed, and the scheduler told of both."""

    def __init__(
        self,
        url: str,
        bot: str,
        journal: PostgresJournal,
        scheduler: Scheduler,
        updates: Updates,
        interval: float,
    ) -> None:
        self.journal = journal
        self.scheduler = scheduler
        self.updates = updates
        self.shards = Shards(url, bot=bot, shards=SHARDS, interval=interval,
                             changed=self._changed, disconnected=self._disconnected)  # fmt: skip
        self.store = UpdateStore(url, bot, self.shards.lost, lambda: self.shards.outage.down)
        self.feed = ShardFeed(url, bot, updates, pruning=self.leading, lost=self.shards.lost)
        journal.on_lost = self._journal_lost

    def leading(self) -> bool:
        """Whether this instance holds the lease (polls, in polling mode, and prunes)."""
        return self.shards.leader

    def polling(self, metrics: Any) -> SharedPolling:
        """The keeper of a poller that polls for the instances, under the lease."""
        return SharedPolling(self.store, self.shards, metrics)

    def owned(self) -> int:
        """How many shards this instance owns now."""
        return len(self.shards.owned)

    def start(self) -> None:
        """Start the feed, then join the instances (a JournalError if the database is gone)."""
        self.feed.start()
        self.journal.fence(self.shards.backend_pid, self.shards.shard_lock,
                           self.shards.write_lock)  # fmt: skip
        self.shards.start()

    def _changed(self, gained: frozenset[int], lost: frozenset[int]) -> None:
        if lost:
            self.feed.lose(lost)

            def leaving(key: Key) -> bool:
                return shard_of(key) in lost

            if not self.scheduler.drop(leaving):
                log.error("the scheduler did not let go of %d shard(s) in time", len(lost))
            # Sends in flight finish and are recorded before the shards go, the
            # rest are left to the new owner: else both would send them.
            self.updates.outbox.settle(leaving, SETTLE_TIMEOUT)
            self.scheduler.drop(leaving)  # commits those confirmations
        if gained:
            journal = self.journal

            def load() -> Adoption:
                return journal.unfinished(gained), journal.undelivered(gained)

            self.scheduler.adopt(load)
            self.feed.gain(gained)

    def _journal_lost(self, reason: str) -> None:
        """A batch was lost (on the scheduler's thread, before it lets every conversation go)."""
        self.feed.lose_all()  # nothing more handed over that the scheduler would take as new
        self.shards.lost(reason)

    def _disconnected(self) -> None:
        """Every shard is let go after the database was lost: no connection from before is kept."""
        self.journal.disconnect()
        self.store.disconnect()

    def problem(self) -> str | None:
        """Why this instance is not ready (``/healthz``), or None."""
        return self.shards.outage.problem()

    def stop(self) -> None:
        """Give the shards back (their conversations let go first), stop the feed."""
        self.shards.stop()
        self.feed.stop()
        self.store.close()


def _connect(url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=True, **_connect_options(url, redact(url)))
    except psycopg.Error as error:
        raise JournalError(f"{redact(url)}: {_explain(error, url)}") from None
