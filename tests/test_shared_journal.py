"""The PostgreSQL journal shared by several instances of one bot (``shared=True``).

Real :class:`PostgresJournal` and :class:`Shards` on one real database, as
two instances would run them: each reads back only the shards it owns,
receipts never collide, a write for a shard the instance no longer holds is
refused, and the shard's new owner finds everything the old one committed;
a batch lost with the database is rolled back, and the journal reconnects.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from engine.frontend import Delivery
from engine.journal import JournalError, JournalLost
from engine.postgres_journal import PostgresJournal
from engine.runner import Snapshot
from engine.shards import SHARDS, Shards, shard_of
from tests.support.postgres_server import PostgresServer

NEVER = 3600.0  # the rebalancing thread stays idle: each test rebalances by hand


class Instance:
    """One instance's journal, fenced by its shards."""

    def __init__(self, url: str) -> None:
        self.shards = Shards(url, interval=NEVER).start()
        self.journal = PostgresJournal(url, shared=True)
        self.journal.fence(self.shards.backend_pid, self.shards.shard_lock,
                           self.shards.write_lock)  # fmt: skip

    def key_owned(self) -> str:
        return next(str(n) for n in range(10_000) if self.shards.owns(str(n)))

    def close(self) -> None:
        self.journal.close()
        self.shards.stop()


@pytest.fixture
def pair(postgres_url: str) -> Iterator[tuple[Instance, Instance]]:
    first = Instance(postgres_url)
    second = Instance(postgres_url)
    first.shards.rebalance()  # gives back half
    second.shards.rebalance()  # takes it
    try:
        yield first, second
    finally:
        second.close()
        first.close()


def _save(journal: PostgresJournal, key: str, receipt: int) -> None:
    journal.entered(key, Snapshot("tests.flows_for_tests.Nowhere", b"fields"))
    journal.outgoing(receipt, key, Delivery.MESSAGE, f"hello {key}")
    journal.commit(None)


def test_each_instance_reads_back_only_its_shards(pair: tuple[Instance, Instance]) -> None:
    first, second = pair
    assert first.shards.owned and second.shards.owned
    assert not first.shards.owned & second.shards.owned
    mine, theirs = first.key_owned(), second.key_owned()
    _save(first.journal, mine, 1)
    _save(second.journal, theirs, 1)  # the same receipt number: no collision
    assert [saved.key for saved in first.journal.unfinished(first.shards.owned)] == [mine]
    assert [saved.key for saved in second.journal.unfinished(second.shards.owned)] == [theirs]
    receipts = [row[0] for row in first.journal.undelivered(first.shards.owned)]
    receipts += [row[0] for row in second.journal.undelivered(second.shards.owned)]
    assert len(set(receipts)) == 2
    # Not told which shards, a shared journal rebuilds nothing (the scheduler's start).
    assert list(first.journal.unfinished()) == [] and first.journal.undelivered() == []


def test_a_write_for_a_shard_no_longer_held_is_refused_and_the_new_owner_has_the_rest(
    pair: tuple[Instance, Instance], postgres_url: str
) -> None:
    first, second = pair
    key = first.key_owned()
    _save(first.journal, key, 1)
    pid = first.shards.backend_pid()
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # what the server sees of a cut
        # Its timeout: the backend ends (and its locks go) after this returns, not before.
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
    first.journal.entered(key, Snapshot("tests.flows_for_tests.Nowhere", b"later"))
    with pytest.raises(JournalError, match="no longer owns shard"):
        first.journal.commit(None)
    gained, _ = second.shards.rebalance()
    assert shard_of(key) in gained
    [saved] = [s for s in second.journal.unfinished(gained) if s.key == key]
    assert saved.snapshot.fields == b"fields"  # the refused batch left nothing
    assert [row[1] for row in second.journal.undelivered(gained)] == [key]


def test_a_single_instance_and_shared_ones_exclude_each_other(postgres_url: str) -> None:
    shared = PostgresJournal(postgres_url, shared=True)
    try:
        PostgresJournal(postgres_url, shared=True).close()  # shared ones share
        with pytest.raises(JournalError, match="in use by another running instance"):
            PostgresJournal(postgres_url)
    finally:
        shared.close()
    single = PostgresJournal(postgres_url)
    try:
        with pytest.raises(JournalError, match="in use by a single instance"):
            PostgresJournal(postgres_url, shared=True)
    finally:
        single.close()


def test_an_update_taken_is_marked_in_the_same_transaction(postgres_url: str) -> None:
    journal = PostgresJournal(postgres_url, shared=True)
    try:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(
                "INSERT INTO yielded.updates (bot, update_id, shard, payload) "
                "VALUES ('default', 7, 0, '{}'), ('default', 8, 0, '{}')"
            )
            journal.took(7)
            journal.commit(7)
            pending = connection.execute(
                "SELECT update_id FROM yielded.updates WHERE NOT taken"
            ).fetchall()
        assert pending == [(8,)]
        assert journal.last_source() is None  # no per-bot maximum when shared
    finally:
        journal.close()


def test_a_batch_lost_with_the_database_is_rolled_back_and_the_journal_reconnects(
    restartable_postgres: PostgresServer,
) -> None:
    url = restartable_postgres.create_database()
    journal = PostgresJournal(url, shared=True)
    told: list[str] = []
    journal.on_lost = told.append
    try:
        _save(journal, "kept", 1)
        restartable_postgres.halt()
        journal.delivered(1)  # sent: must not be sent again by whoever rebuilds it
        journal.entered("kept", Snapshot("tests.flows_for_tests.Nowhere", b"later"))
        with pytest.raises(JournalLost, match="lost the database"):
            journal.commit(None)
        assert len(told) == 1
        restartable_postgres.resume()
        everything = range(SHARDS)
        [saved] = journal.unfinished(everything)  # reconnected; the lost batch left nothing
        assert saved.snapshot.fields == b"fields"
        assert journal.undelivered(everything) == []  # confirmed, written with the next batch
        journal.commit(None)
    finally:
        journal.close()
    again = PostgresJournal(url, shared=True)
    try:
        assert again.undelivered(range(SHARDS)) == []
    finally:
        again.close()
