"""Shard ownership between instances on one PostgreSQL database (``engine.shards``).

Several :class:`Shards` on one real database, as several instances would
run: they split the shards fairly, exactly one holds the polling lease, and
when one's connection dies (``pg_terminate_backend``: what the server sees of
a ``kill -9``) the others own its shards within the rebalancing interval;
an instance whose connection dropped lets every shard go and rejoins.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from engine.journal import JournalError
from engine.shards import SHARDS, Shards, shard_of
from tests.support.postgres_server import closed_port

INTERVAL = 0.2


class Cluster:
    """Instances on one database, each with the shards it was told it runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.instances: list[Shards] = []
        self.running: list[set[int]] = []
        #: (shard, taker, holder): a shard taken while another instance still ran it.
        self.overlaps: list[tuple[int, int, int]] = []
        self._guard = threading.Lock()

    def start(self) -> Shards:
        index = len(self.instances)
        self.running.append(set())

        def changed(gained: frozenset[int], lost: frozenset[int]) -> None:
            with self._guard:
                self.running[index] -= lost
                for other, shards in enumerate(self.running):
                    if other != index:
                        self.overlaps.extend((shard, index, other) for shard in gained & shards)
                self.running[index] |= gained

        shards = Shards(self.url, interval=INTERVAL, changed=changed)
        self.instances.append(shards)
        return shards.start()

    def stop(self) -> None:
        for shards in self.instances:
            shards.stop()


@pytest.fixture
def cluster(postgres_url: str) -> Iterator[Cluster]:
    started = Cluster(postgres_url)
    try:
        yield started
    finally:
        started.stop()


def _until(condition: object, timeout: float = 10.0) -> float:
    """Seconds until `condition()` holds (polled: ownership lives in another server)."""
    began = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - began > timeout:
            raise AssertionError("timed out")
        time.sleep(0.01)
    return time.monotonic() - began


def test_a_key_always_falls_in_the_same_shard() -> None:
    assert shard_of("12345") == shard_of("12345") < SHARDS
    assert len({shard_of(str(user)) for user in range(10_000)}) == SHARDS


def test_instances_split_the_shards_and_one_holds_the_lease(cluster: Cluster) -> None:
    first = cluster.start()
    assert len(first.owned) == SHARDS and first.leader
    cluster.start()
    cluster.start()

    def balanced() -> bool:
        counts = sorted(len(shards.owned) for shards in cluster.instances)
        union = set().union(*(shards.owned for shards in cluster.instances))
        return len(union) == SHARDS and counts[0] >= 20 and counts[-1] <= 22

    _until(balanced)
    assert [shards.leader for shards in cluster.instances] == [True, False, False]
    assert cluster.overlaps == []  # a shard given back is stopped before another takes it


def test_a_dead_instances_shards_and_lease_move_within_the_interval(
    cluster: Cluster, postgres_url: str
) -> None:
    for _ in range(3):
        cluster.start()
    _until(lambda: all(len(shards.owned) >= 20 for shards in cluster.instances))
    victim, *survivors = cluster.instances
    assert victim.leader
    victim.url = f"postgresql://a:b@127.0.0.1:{closed_port()}/x"  # dead: it cannot come back
    _cut(victim, postgres_url)
    took = _until(lambda: len(survivors[0].owned | survivors[1].owned) == SHARDS)
    assert took < 2 * INTERVAL + 1.0  # one rebalance after the server dropped it
    _until(lambda: survivors[0].leader or survivors[1].leader)
    _until(lambda: not victim.owned)  # it noticed too, and stopped driving them
    assert sum(len(running) for running in cluster.running) == SHARDS
    # Between the survivors no shard ever ran twice. The victim may still have
    # "run" its shards for up to an interval: it could not commit (its session
    # is gone), which is what the journal must rely on (see the README).
    assert [overlap for overlap in cluster.overlaps if 0 not in overlap[1:]] == []


def _cut(shards: Shards, url: str) -> None:
    """Drop `shards`' connection from the server's side, as a restart or a network cut would."""
    with psycopg.connect(url, autocommit=True) as admin:
        assert shards._connection is not None
        admin.execute("SELECT pg_terminate_backend(%s)", (shards._connection.info.backend_pid,))


def test_an_instance_that_loses_its_connection_lets_everything_go_and_rejoins(
    cluster: Cluster, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.shards")
    first, second = cluster.start(), cluster.start()
    _until(lambda: len(first.owned) == len(second.owned) == SHARDS // 2)
    lets_go = threading.Event()
    told = first.changed
    assert told is not None

    def changed(gained: frozenset[int], lost: frozenset[int]) -> None:
        if lost and not (first.owned - lost):  # every shard it ran, at once
            lets_go.set()
        told(gained, lost)

    first.changed = changed
    _cut(first, postgres_url)
    assert lets_go.wait(10)
    _until(lambda: len(first.owned) == len(second.owned) == SHARDS // 2)
    assert sum(len(running) for running in cluster.running) == SHARDS
    lines = [record.getMessage() for record in caplog.records if record.name == "engine.shards"]
    assert sum("lost the database" in line for line in lines) == 1, lines
    assert sum("the database is back" in line for line in lines) == 1, lines
    assert first.outage.problem() is None


def test_an_unreachable_database_is_one_line() -> None:
    shards = Shards(f"postgresql://a:secret@127.0.0.1:{closed_port()}/x")
    with pytest.raises(JournalError, match="cannot reach the server") as refused:
        shards.start()
    assert "\n" not in str(refused.value) and "secret" not in str(refused.value)
