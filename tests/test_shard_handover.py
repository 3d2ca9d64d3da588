"""A shard changing hands between ``--shared`` instances sends each reply once.

Outputs are journaled until Telegram took them. When an instance gives a
shard back (here: a second instance joins), a reply it has in flight must
be recorded before the shard goes, or its new owner sends it again. The
fake Bot API holds that reply until the handover is under way (a barrier),
so the old owner's send is surely in flight while the shards move.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.shards import SHARDS, shard_of
from flows.weather import CITY_PROMPT
from tests.support.bot_cluster import BotCluster
from tests.support.fake_telegram import FakeTelegram

EXITING = "Exiting..."
SETTLING = "waiting for 1 in flight"
ADOPTED = re.compile(r"adopted [1-9]\d* conversation")


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server


def moving_chat() -> int:
    """A private chat whose shard the first instance gives back when a second joins.

    With two members each aims at half the shards, and gives back its highest.
    """
    return next(chat for chat in range(7000, 8000) if shard_of(str(chat)) >= SHARDS // 2)


def test_a_reply_in_flight_when_its_shard_moves_is_sent_once(
    telegram: FakeTelegram, postgres_url: str, tmp_path: Path
) -> None:
    chat = moving_chat()
    with BotCluster(telegram, postgres_url, tmp_path, 2, interval=0.5) as cluster:
        cluster.start(0)  # it owns every shard
        held = telegram.hold("sendMessage", chat_id=chat)
        telegram.send_text(chat, "/start")
        assert held.arrived.wait(20), "the prompt was never sent"

        cluster.start(1)
        # The old owner waits for its send in flight before it lets go (before
        # the fix, the new owner adopted the chat at once and sent the prompt too).
        telegram.wait_until(
            lambda: SETTLING in cluster.output(0) or ADOPTED.search(cluster.output(1)),
            timeout=20, what="the handover",
        )  # fmt: skip
        held.release()
        telegram.wait_until(lambda: ADOPTED.search(cluster.output(1)), 20, "the adoption")
        telegram.wait_text(chat, CITY_PROMPT, 20)

        telegram.send_text(chat, "/cancel")  # answered by the new owner, after anything earlier
        telegram.wait_text(chat, EXITING, 20)
        assert telegram.texts(chat) == [CITY_PROMPT, EXITING]
        assert "Traceback" not in cluster.output(0) + cluster.output(1)
