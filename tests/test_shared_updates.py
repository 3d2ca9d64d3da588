"""The updates table shared instances take updates from: kept bounded, each update taken once.

Real :class:`UpdateStore` and :class:`ShardFeed` on a real PostgreSQL: taken
updates are pruned down to a window below the newest taken, the highest id
pruned becomes the bot's mark, and an update Telegram sends again after its
row was pruned is refused, so it is never handed over twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest

from engine.postgres_journal import DEFAULT_BOT, PostgresJournal
from engine.shards import SHARDS
from frontends.telegram.cluster import ShardFeed, UpdateStore, prune_updates

T = TypeVar("T")


def _update(update_id: int, chat: int = 42) -> tuple[int, dict[str, Any]]:
    message = {
        "message_id": update_id, "date": 0, "text": "hello",
        "chat": {"id": chat, "type": "private", "first_name": "A"},
        "from": {"id": chat, "is_bot": False, "first_name": "A"},
    }  # fmt: skip
    return update_id, {"update_id": update_id, "message": message}


@pytest.fixture
def database(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    PostgresJournal(postgres_url, shared=True).close()  # the schema and the bot's row
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def store(postgres_url: str, database: psycopg.Connection[Any]) -> Iterator[UpdateStore]:
    kept = UpdateStore(postgres_url, DEFAULT_BOT)
    try:
        yield kept
    finally:
        kept.close()


def _ids(connection: psycopg.Connection[Any]) -> list[int]:
    rows = connection.execute("SELECT update_id FROM yielded.updates ORDER BY update_id")
    return [row[0] for row in rows.fetchall()]


def _mark(connection: psycopg.Connection[Any]) -> int | None:
    row = connection.execute("SELECT taken_up_to FROM yielded.bots WHERE bot = %s", (DEFAULT_BOT,))
    found = row.fetchone()
    assert found is not None
    return found[0]  # type: ignore[no-any-return]


def _take(connection: psycopg.Connection[Any], ids: list[int]) -> None:
    connection.execute("UPDATE yielded.updates SET taken = true WHERE update_id = ANY(%s)", (ids,))


def test_pruning_keeps_a_window_and_the_pending_and_refuses_what_it_pruned_when_sent_again(
    store: UpdateStore, database: psycopg.Connection[Any]
) -> None:
    assert store.put_many([_update(n) for n in range(1, 31)]) == 30
    _take(database, [n for n in range(1, 26) if n != 15])  # 15 still waits for its owner
    assert prune_updates(database, DEFAULT_BOT, keep=5) == 19  # taken, at most 25 - 5
    assert _ids(database) == [15, *range(21, 31)]
    assert _mark(database) == 20
    # Sent again (a webhook retry, a poll from the oldest unconfirmed): only 31 is new.
    assert store.put_many([_update(10), _update(15), _update(21), _update(31)]) == 1
    assert _ids(database) == [15, *range(21, 32)]
    # Nothing more to prune: the mark is never lowered, and a wide window prunes nothing.
    assert prune_updates(database, DEFAULT_BOT, keep=1000) == 0
    assert _mark(database) == 20


def test_pruning_nothing_taken_sets_no_mark(
    store: UpdateStore, database: psycopg.Connection[Any]
) -> None:
    assert prune_updates(database, DEFAULT_BOT, keep=0) == 0
    assert store.put_many([_update(1), _update(2)]) == 2
    assert prune_updates(database, DEFAULT_BOT, keep=0) == 0  # none taken yet
    assert _mark(database) is None
    assert _ids(database) == [1, 2]


class Handlers:
    """Records what the feed hands over, and marks it taken as the scheduler's commit would."""

    def __init__(self, url: str) -> None:
        self.handled: list[int] = []
        self._connection = psycopg.connect(url, autocommit=True)

    def handle(self, update: Any) -> None:
        _take(self._connection, [update.update_id])
        self.handled.append(update.update_id)

    def close(self) -> None:
        self._connection.close()


def _until(check: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    """Poll `check` until it gives something other than None (the feed runs on its thread)."""
    deadline = time.monotonic() + timeout
    while (result := check()) is None:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return result


def test_the_lease_holders_feed_prunes_and_an_update_sent_again_is_not_handed_over_twice(
    postgres_url: str, store: UpdateStore, database: psycopg.Connection[Any]
) -> None:
    handlers = Handlers(postgres_url)
    feed = ShardFeed(postgres_url, DEFAULT_BOT, handlers,  # type: ignore[arg-type]
                     pruning=lambda: True, keep=2, prune_every=0.0)  # fmt: skip
    feed.gain(frozenset(range(SHARDS)))
    feed.start()
    try:
        assert store.put_many([_update(n) for n in range(1, 11)]) == 10
        _until(lambda: _ids(database) == [9, 10] or None, "the taken updates to be pruned")
        assert store.put_many([_update(n) for n in range(1, 12)]) == 1  # 9, 10: in the table
        _until(lambda: 11 in handlers.handled or None, "update 11 to be handed over")
        assert handlers.handled == list(range(1, 12))
    finally:
        feed.stop()
        handlers.close()
