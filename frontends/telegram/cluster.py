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
Polling mode (one instance polling under the lease) is not built yet.

Any of the instance's connections failing is the database lost
(``Shards.lost``, logged once): the instance lets every conversation go,
refuses webhook updates (503, so Telegram sends them again) and says why on
``/healthz``, reconnects everything, and takes its share of shards again.
"""

from __future__ import annotations

import json
import logging
import threading
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
        shard = shard_of(update_key(item))
        if self.down():
            return False
        with self._lock:
            try:
                if self._connection.closed:
                    self._connection = _connect(self.url)
                with self._connection.transaction():
                    self._connection.execute(
                        f"INSERT INTO {_N}.updates (bot, update_id, shard, payload) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING".encode(),
                        (self.bot, update_id, shard, json.dumps(item)),
                    )
                    self._connection.execute(b"SELECT pg_notify(%s, %s)",
                                             (self._channel, str(shard)))  # fmt: skip
            except (psycopg.Error, JournalError) as error:
                log.debug("%s: cannot keep update %s (%s)", self.label, update_id, error)
                if isinstance(error, psycopg.OperationalError) or self._connection.closed:
                    self._connection.close()
                    self.lost(_explain(error, self.url) if isinstance(error, psycopg.Error)
                              else str(error))  # fmt: skip
                else:
                    log.error("%s: cannot keep update %s (%s)", self.label, update_id, error)
                return False
        return True

    def disconnect(self) -> None:
        """Drop the connection (the database was lost); the next update reconnects."""
        with self._lock:
            self._connection.close()

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class SharedIntake:
    """The webhook's intake when shared: an update is answered once it is in the table."""

    def __init__(self, store: UpdateStore, metrics: Any) -> None:
        self.store = store
        self.metrics = metrics

    def take(self, update_id: int, update: Any, item: Any = None) -> threading.Event | None:
        """Keep `item`; an event set once it is committed (:class:`NotKept` if it cannot be)."""
        if not self.store.put(update_id, item):
            raise NotKept("the database cannot be reached")
        self.metrics.update_taken("webhook")
        kept = threading.Event()
        kept.set()
        return kept


class ShardFeed(threading.Thread):
    """Hands the pending updates of the shards this instance owns to its handlers, in order."""

    def __init__(self, url: str, bot: str, updates: Updates, lost: Lost = _ignore) -> None:
        super().__init__(name="shard-feed", daemon=True)
        self.url, self.bot, self.label = url, bot, redact(url)
        self.updates = updates
        self.lost = lost
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
        self.shards = Shards(url, bot=bot, shards=SHARDS, interval=interval,
                             changed=self._changed, disconnected=self._disconnected)  # fmt: skip
        self.store = UpdateStore(url, bot, self.shards.lost, lambda: self.shards.outage.down)
        self.feed = ShardFeed(url, bot, updates, self.shards.lost)
        journal.on_lost = self._journal_lost

    def start(self) -> None:
        """Start the feed, then join the instances (a JournalError if the database is gone)."""
        self.feed.start()
        self.journal.fence(self.shards.backend_pid, self.shards.shard_lock,
                           self.shards.write_lock)  # fmt: skip
        self.shards.start()

    def _changed(self, gained: frozenset[int], lost: frozenset[int]) -> None:
        if lost:
            self.feed.lose(lost)
            if not self.scheduler.drop(lambda key: shard_of(key) in lost):
                log.error("the scheduler did not let go of %d shard(s) in time", len(lost))
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
