"""Several ``weather-bot --shared`` instances on one PostgreSQL, one killed mid-load.

Three real bot processes behind a round-robin proxy (webhook mode: the
fake Telegram posts each update to the proxy, which picks an instance; one
refusing connections is skipped, one dying mid-request is answered 502 so
the update comes again). Users go through whole dialogues while one
instance is killed with SIGKILL: every dialogue completes, every chat gets
exactly its texts in order, and a survivor drives the dead one's users
within the rebalancing interval.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from flows.weather import CITY_PROMPT, NEXT_PROMPT, TERMINATING
from tests.support.bot_cluster import BotCluster
from tests.support.fake_telegram import FakeTelegram
from tests.support.openmeteo_server import FakeOpenMeteo

NOT_STARTED = "Not started, call /start first"
WIND = "Overcast, wind 4.8 km/h from the north"
USERS = 60
FIRST_CHAT = 5000
ADOPTED = re.compile(r"adopted (\d+) conversation")


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


@pytest.fixture
def places(openmeteo: FakeOpenMeteo) -> FakeOpenMeteo:
    openmeteo.add_place("Springfield", 39.8, -89.6, country="United States")
    openmeteo.set_forecast(39.8, -89.6, temperature=21.5)
    openmeteo.add_place("Shelbyville", 35.5, -86.5, country="United States")
    openmeteo.set_forecast(35.5, -86.5, temperature=9.0)
    return openmeteo


def _all_confirmed(url: str) -> bool:
    """Whether every reply sent so far is recorded as taken by Telegram."""
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM yielded.outgoing").fetchone()
    return row is not None and row[0] == 0


def _step(telegram: FakeTelegram, chats: list[int], index: int, timeout: float = 30.0) -> None:
    telegram.send_texts((chat, DIALOGUE[index]) for chat in chats)
    for chat in chats:
        telegram.wait_messages(chat, AFTER[index], timeout)


def test_three_instances_one_killed_mid_load_every_dialogue_completes_once_in_order(
    telegram: FakeTelegram, places: FakeOpenMeteo, postgres_url: str, tmp_path: Path
) -> None:
    chats = list(range(FIRST_CHAT, FIRST_CHAT + USERS))
    with BotCluster(telegram, postgres_url, tmp_path, 3, interval=0.5) as cluster:
        cluster.start_all()
        _step(telegram, chats, 0)
        _step(telegram, chats, 1)
        # Replies Telegram took a moment before a kill -9 are sent again (at least
        # once): the kill comes once those of the last step are recorded.
        telegram.wait_until(lambda: _all_confirmed(postgres_url), 10, "replies recorded")
        # Mid-load: the third step's updates are being taken when instance 0 dies.
        telegram.send_texts((chat, DIALOGUE[2]) for chat in chats)
        killed_at = cluster.kill(0)
        for chat in chats:
            telegram.wait_messages(chat, AFTER[2], 30)
        recovered = time.monotonic() - killed_at
        _step(telegram, chats, 3)
        _step(telegram, chats, 4)
        # A closing /cancel: its answer comes after anything still on its way.
        telegram.send_texts((chat, "/cancel") for chat in chats)
        for chat in chats:
            telegram.wait_text(chat, NOT_STARTED, 30)
        # Nothing lost, nothing out of order, nothing sent twice: a shard given
        # back (as instances join, or to a survivor) has its sends in flight
        # recorded first, and the rest are sent by its new owner alone.
        for chat in chats:
            assert telegram.texts(chat) == [*EXPECTED, NOT_STARTED], chat
        survivors = [cluster.output(1), cluster.output(2)]
        adopted = [int(n) for output in survivors for n in ADOPTED.findall(output)]
        assert sum(adopted) > 0  # the dead instance's users, rebuilt by the survivors
        assert all("Traceback" not in output for output in survivors)
    print(f"failover: every user of the killed instance answered {recovered:.2f} s after kill -9")
    assert recovered < 10


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
