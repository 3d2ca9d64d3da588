"""The bot under faults: Telegram down, a damaged state file, old buttons, hostile answers.

Each test runs the real program (``python -m frontends.telegram``) as a
subprocess against the fake Bot API and the fake Open-Meteo, as
``tests/test_telegram_restart.py`` does, and reuses its helpers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from flows.weather import CITY_PROMPT, NEXT_PROMPT
from tests import test_telegram_restart as restart
from tests.support.openmeteo_server import FakeOpenMeteo
from tests.test_telegram_restart import (
    EXITING,
    SPRINGFIELD,
    Bots,
    Telegram,
    check_chats,
    start_at_city,
)

# The fixtures of the kill -9 tests: the fakes, and bots run in a test's directory.
telegram = restart.telegram
places = restart.places
bots = restart.bots


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def failed_sends(telegram: Telegram, chat: int) -> int:
    return sum(
        r.fault is not None and str(r.params.get("chat_id")) == str(chat)
        for r in telegram.requests_to("sendMessage")
    )


# -- 1: a Telegram outage loses nothing ------------------------------------------------------------


def test_a_telegram_outage_delays_replies_but_loses_and_reorders_none(
    bots: Bots, telegram: Telegram, places: FakeOpenMeteo
) -> None:
    chats = list(range(1001, 1051))
    bots.start("--retry-cap", "1")
    start_at_city(telegram, *chats)

    telegram.down("sendMessage", 502)
    telegram.send_texts((chat, "Springfield") for chat in chats)
    # Nine failed attempts each: the first release gave a reply up after eight.
    telegram.wait_until(
        lambda: all(failed_sends(telegram, chat) >= 3 for chat in chats), 20, "3 failures each"
    )
    cpu_before, wall_before = cpu_seconds(bots.process.pid), time.monotonic()
    telegram.wait_until(
        lambda: all(failed_sends(telegram, chat) >= 9 for chat in chats), 30, "9 failures each"
    )
    cpu = cpu_seconds(bots.process.pid) - cpu_before
    wall = time.monotonic() - wall_before
    telegram.up("sendMessage")

    assert cpu < 0.25 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s of outage"
    check_chats(
        telegram,
        {chat: [CITY_PROMPT, *SPRINGFIELD, NEXT_PROMPT, EXITING] for chat in chats},
        timeout=30,
    )
    assert "NOT SENT" not in bots.output()
