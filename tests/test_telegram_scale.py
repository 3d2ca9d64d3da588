"""Several ``weather-bot --shared`` instances on one PostgreSQL: instances killed, the database
restarted, schemas older and newer.

Three real bot processes behind a round-robin proxy (webhook mode: the
fake Telegram posts each update to the proxy, which picks an instance; one
refusing connections is skipped, one dying mid-request is answered 502 so
the update comes again). Users go through whole dialogues while instances
are killed with SIGKILL and started again, or while the database server is
stopped and started again: every dialogue completes, every chat gets
exactly its texts in order.

Outputs are at least once, as with one instance: replies sent but not yet
confirmed when their instance dies, or when their shard moves, are sent
again by the new owner, so a chat may get a run of replies twice in a row
(the first part of the run, then all of it). Only a few chats may, and they
are counted: what a killed instance had sent and not yet confirmed (its
senders' sends in flight, the confirmations of its batch being committed),
and a handover's (:data:`HANDOVER_REPEATS`, until the old owner confirms its
sends in flight before letting a shard go).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest

from flows.weather import CITY_PROMPT, NEXT_PROMPT, TERMINATING
from tests.support.bot_cluster import BotCluster
from tests.support.fake_telegram import FakeTelegram
from tests.support.openmeteo_server import FakeOpenMeteo
from tests.support.postgres_server import PostgresServer

NOT_STARTED = "Not started, call /start first"
WIND = "Overcast, wind 4.8 km/h from the north"
USERS = 200
RESTART_USERS = 40
FIRST_CHAT = 5000
ADOPTED = re.compile(r"adopted (\d+) conversation")
#: Chats that may get a run of replies twice in a row (see the module docstring):
#: per instance killed, twice the default --senders; per test, for handovers.
REPEATS_PER_KILL = 8
HANDOVER_REPEATS = 2
T = TypeVar("T")


def weather(where: str, latitude: float, longitude: float, temperature: float) -> list[str]:
    return [
        f"Found {where} at latitude {latitude} and longitude {longitude}",
        f"Current temperature is {temperature} °C",
        WIND,
    ]


#: Each user's dialogue: what they send, and how many texts they have after the answer.
DIALOGUE = ["/start", "Springfield", "continue", "Shelbyville", "quit"]
EXPECTED = [
    CITY_PROMPT,
    *weather("Springfield (United States)", 39.8, -89.6, 21.5), NEXT_PROMPT,
    CITY_PROMPT,
    *weather("Shelbyville (United States)", 35.5, -86.5, 9.0), NEXT_PROMPT,
    TERMINATING,
]  # fmt: skip
AFTER = [1, 5, 6, 10, 11]


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server


def _once_each(texts: list[str]) -> list[str]:
    """`texts` with a run of messages repeated right after itself kept once.

    What at-least-once looks like in a chat: the new owner sends again every
    reply not confirmed, some of which the old one had sent (a, b, a, b, c).
    """
    kept: list[str] = []
    n = 0
    while n < len(texts):
        run = next((k for k in range(1, 5) if kept[-k:] == texts[n : n + k] and len(kept) >= k), 0)
        if run:
            n += run
        else:
            kept.append(texts[n])
            n += 1
    return kept


def _step(telegram: FakeTelegram, chats: list[int], index: int, timeout: float = 30.0) -> None:
    telegram.send_texts((chat, DIALOGUE[index]) for chat in chats)
    _answered(telegram, chats, index, timeout)


def _answered(telegram: FakeTelegram, chats: list[int], index: int, timeout: float = 30.0) -> None:
    for chat in chats:
        telegram.wait_messages(chat, AFTER[index], timeout)


def _wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Ask ``check()`` every 50 ms until it is truthy; return it (for what the bot says)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
    return result


def _finish(telegram: FakeTelegram, chats: list[int], allowed: int) -> list[int]:
    """Close every dialogue with /cancel and check each chat's texts; the chats with a repeat.

    The /cancel's answer comes after anything still on its way. Nothing
    lost, nothing out of order, no answer given twice: only a run of replies
    repeated right after itself (at least once, see the module docstring),
    in at most `allowed` chats.
    """
    telegram.send_texts((chat, "/cancel") for chat in chats)
    for chat in chats:
        telegram.wait_text(chat, NOT_STARTED, 30)
    for chat in chats:
        assert _once_each(telegram.texts(chat)) == [*EXPECTED, NOT_STARTED], (
            chat, telegram.texts(chat))
    repeated = [chat for chat in chats if len(telegram.texts(chat)) > len(EXPECTED) + 1]
    repeats = {chat: _repeats(telegram.texts(chat)) for chat in repeated}
    assert len(repeated) <= allowed, repeats
    if repeats:
        print("\nreplies repeated:", Counter(text for texts in repeats.values() for text in texts))
    return repeated


def _repeats(texts: list[str]) -> list[str]:
    """The texts a chat got more often than its dialogue has them."""
    return list((Counter(texts) - Counter([*EXPECTED, NOT_STARTED])).elements())


def test_200_users_two_instances_killed_and_restarted_every_dialogue_completes_once_in_order(
    telegram: FakeTelegram, places: FakeOpenMeteo, postgres_url: str, tmp_path: Path
) -> None:
    chats = list(range(FIRST_CHAT, FIRST_CHAT + USERS))
    failovers: list[float] = []
    with BotCluster(telegram, postgres_url, tmp_path, 3, interval=0.5) as cluster:
        cluster.start_all()
        _step(telegram, chats, 0)
        _step(telegram, chats, 1)
        # Mid-load: a step's updates are being taken when an instance dies;
        # the next step, another one; then only instance 2 is left.
        for step, killed in ((2, 0), (3, 1)):
            telegram.send_texts((chat, DIALOGUE[step]) for chat in chats)
            killed_at = cluster.kill(killed)
            _answered(telegram, chats, step)
            failovers.append(time.monotonic() - killed_at)
            adopted = ADOPTED.findall(cluster.output(2))
            assert adopted and int(adopted[-1]) > 0  # the dead one's users, rebuilt
        # Both come back mid-load: shards move back to them as they are answering.
        cluster.start_all(0, 1)
        telegram.send_texts((chat, DIALOGUE[4]) for chat in chats)
        _answered(telegram, chats, 4)
        repeated = _finish(telegram, chats, 2 * REPEATS_PER_KILL + HANDOVER_REPEATS)
        for index in (0, 1):
            _wait_for(lambda i=index: ADOPTED.search(cluster.output(i)),  # type: ignore[misc]
                      f"instance {index} to own shards again")  # fmt: skip
        assert all("Traceback" not in cluster.output(index) for index in range(3))
    print(f"\nfailover after kill -9 (every user of the step answered): "
          f"{failovers[0]:.2f} s of 3 instances, {failovers[1]:.2f} s of 2; "
          f"{len(repeated)} chat(s) with replies repeated")  # fmt: skip


def _unready(cluster: BotCluster, index: int) -> tuple[int, str] | None:
    """Instance `index`'s ``/healthz`` (status, body) if it says it is not ready, else None."""
    status, body = cluster.health(index)
    return None if status == 200 else (status, body)


def test_database_restarting_under_load_instances_reconnect_and_nothing_is_lost(
    telegram: FakeTelegram,
    places: FakeOpenMeteo,
    restartable_postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    url = restartable_postgres.create_database()
    chats = list(range(FIRST_CHAT, FIRST_CHAT + RESTART_USERS))
    early, late = chats[: RESTART_USERS // 2], chats[RESTART_USERS // 2 :]
    with BotCluster(telegram, url, tmp_path, 3, interval=0.5) as cluster:
        cluster.start_all()
        _step(telegram, chats, 0)
        _step(telegram, chats, 1)
        # Mid-load: half the users' answers are being taken when the server stops.
        telegram.send_texts((chat, DIALOGUE[2]) for chat in early)
        restartable_postgres.halt()
        down_at = len(telegram.deliveries)
        for index in range(3):
            status, body = _wait_for(lambda i=index: _unready(cluster, i),  # type: ignore[misc]
                                     f"instance {index} to say it is not ready")  # fmt: skip
            assert status == 503 and "database lost" in body, body
        # The other half write while the server is down: refused, so Telegram sends them again.
        telegram.send_texts((chat, DIALOGUE[2]) for chat in late)
        _wait_for(lambda: any(status == 503 for _, status in telegram.deliveries[down_at:]),
                  "an update refused while the database is down")  # fmt: skip
        restartable_postgres.resume()
        _answered(telegram, chats, 2)
        _step(telegram, chats, 3)
        _step(telegram, chats, 4)
        repeated = _finish(telegram, chats, HANDOVER_REPEATS)  # sends are confirmed: none lost
        for index in range(3):
            _wait_for(lambda i=index: cluster.health(i)[0] == 200,  # type: ignore[misc]
                      f"instance {index} to be ready again")  # fmt: skip
            output = cluster.output(index)
            assert cluster.processes[index] is not None and cluster.processes[index].poll() is None
            assert "Traceback" not in output, output
            # One line when the outage starts, one when it ends: not one per request.
            assert output.count("lost the database") == 1, output
            assert output.count("the database is back") == 1, output
    print(f"\ndatabase restart: {len(repeated)} chat(s) with replies repeated")


def _refusal(telegram: FakeTelegram, url: str, tmp_path: Path) -> list[str]:
    """What two instances started on `url` print before exiting (both must exit 2)."""
    with BotCluster(telegram, url, tmp_path, 2) as cluster:
        first, second = cluster.start(0, ready=False), cluster.start(1, ready=False)
        assert first.wait(30) == second.wait(30) == 2
        return [cluster.output(0).strip(), cluster.output(1).strip()]


def test_instances_on_a_newer_schema_refuse_in_one_line(
    telegram: FakeTelegram, postgres_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(
            "CREATE SCHEMA yielded; CREATE TABLE yielded.meta (name TEXT PRIMARY KEY, value TEXT);"
            "INSERT INTO yielded.meta VALUES ('schema_version', '99')"
        )
    for output in _refusal(telegram, postgres_url, tmp_path):
        assert output.count("\n") == 0, output
        assert "written by a newer version (schema 99, this one reads up to 5)" in output


def test_instances_on_an_older_schema_upgrade_it_and_both_run(
    telegram: FakeTelegram, places: FakeOpenMeteo, postgres_url: str, tmp_path: Path
) -> None:
    from engine.postgres_journal import SCHEMA_VERSION, PostgresJournal

    PostgresJournal(postgres_url).close()  # the current schema; made schema 3 again:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(
            "ALTER TABLE yielded.conversations DROP COLUMN shard;"
            "ALTER TABLE yielded.outgoing DROP COLUMN shard; DROP TABLE yielded.updates;"
            "DROP SEQUENCE yielded.instances; DROP TABLE yielded.notes;"
            "ALTER TABLE yielded.conversations DROP COLUMN since;"
            "ALTER TABLE yielded.bots DROP COLUMN serial;"
            "DROP TABLE yielded.waiting; DROP TABLE yielded.taken;"
            "CREATE TABLE yielded.mailbox (bot TEXT NOT NULL, key TEXT NOT NULL,"
            " items BYTEA NOT NULL, PRIMARY KEY (bot, key));"
            "ALTER TABLE yielded.bots RENAME COLUMN taken_up_to TO last_source;"
            "UPDATE yielded.meta SET value = '3' WHERE name = 'schema_version'"
        )
    with BotCluster(telegram, postgres_url, tmp_path, 2) as cluster:
        cluster.start(0, ready=False)
        cluster.start(1, ready=False)
        for index in (0, 1):
            telegram.wait_until(lambda i=index: "webhook mode" in cluster.output(i),  # type: ignore[misc]
                                timeout=30, what=f"instance {index}")  # fmt: skip
        chats = list(range(FIRST_CHAT, FIRST_CHAT + 10))
        _step(telegram, chats, 0)
        assert all(process is not None and process.poll() is None
                   for process in cluster.processes)  # fmt: skip
    with psycopg.connect(postgres_url) as connection:
        version = connection.execute(
            "SELECT value FROM yielded.meta WHERE name = 'schema_version'"
        ).fetchone()
    assert version == (str(SCHEMA_VERSION),)
