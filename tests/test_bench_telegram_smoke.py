"""The Telegram benchmark's machinery at a tiny size: counts, never times.

Three users, one city each, against both bots (ours and the plain
pyTelegramBotAPI one): every user finishes, every awaited reply is seen,
every transcript is the dialogue's, and nothing is left running.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter
from pathlib import Path

from bench import telegram_bench as bench
from tests.support.openmeteo_server import GeneratedCity

USERS, ROUNDS = 3, 1
UPDATES = USERS * (2 * ROUNDS + 1)  # /start, a city, quit
#: Name a city, Found..., temperature, conditions, What next?, Terminating.
MESSAGES = USERS * 6


def child_processes() -> list[int]:
    """Processes whose parent is this one (a bot left running, or unreaped)."""
    me, children = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == me:
            children.append(int(entry.name))
    return children


def test_three_users_through_both_bots(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())

    runs = bench.run_all(USERS, ROUNDS, 1, tmp_path)

    assert set(runs) == {"ours", "plain", "webhook", "grown"}
    for bot, results in runs.items():
        (result,) = results
        assert bench.check(result) == [], bot
        assert (result.users, result.finished, result.updates) == (USERS, USERS, UPDATES)
        assert len(result.latencies) == UPDATES, bot  # every awaited reply seen
        assert result.wrong == [], bot
        greetings = USERS if bot == "grown" else 0
        assert result.calls["sendMessage"] == MESSAGES + greetings, bot
        assert result.calls["editMessageReplyMarkup"] == USERS, bot  # "What next?" answered
        assert result.lookups == 2 * USERS * ROUNDS, bot
        assert result.peak_kb > 0
        assert result.log_problems == [], bot
    lines = list(bench.report(runs))
    assert sum(line.count("PASS") + line.count("FAIL") for line in lines) == 5
    assert any(line.startswith("updates handled") for line in lines)

    assert child_processes() == []
    deadline = time.monotonic() + 2
    while set(threading.enumerate()) - threads_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(threading.enumerate()) - threads_before == set()


def test_a_miscount_is_caught() -> None:
    good = bench.Result(
        bot="ours", users=2, rounds=1, updates=6, finished=2, wrong=[], seconds=1.0,
        latencies=[0.1] * 6, cpu=0.01, cpu_system=0.0, peak_kb=1, calls=Counter(),
        lookups=4, log_problems=[],
    )  # fmt: skip
    assert bench.check(good) == []
    assert bench.check(dataclasses.replace(good, finished=1)) == ["1 of 2 users finished"]
    assert "5 awaited replies" in bench.check(dataclasses.replace(good, latencies=[0.1] * 5))[0]
    assert "wrong transcript" in bench.check(dataclasses.replace(good, wrong=["7: []"]))[0]


def test_transcripts_and_percentiles() -> None:
    city = GeneratedCity("City0002", 0.002, 0.002, 0.02)
    user = bench.User(chat_id=7, cities=[city, city])
    sent = [text for text, _ in user.script]
    assert sent == ["/start", "City0002", "continue", "City0002", "quit"]
    assert user.transcript()[1:4] == [
        "Found City0002 (Testland) at latitude 0.002 and longitude 0.002",
        "Current temperature is 0.02 °C",
        "Overcast, wind 4.8 km/h from the north",
    ]
    assert bench.percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert bench.percentile(list(range(1, 101)), 99) == 99


def test_a_profile_is_summarized(tmp_path: Path) -> None:
    raw = tmp_path / "profile.raw"
    raw.write_text(
        "Thread.run (threading.py:1);_Sender.run (frontends/telegram/sending.py:2);"
        "Session.request (requests/sessions.py:3) 3\n"
        "Thread.run (threading.py:1);Scheduler.run (engine/scheduler.py:4) 1\n"
    )
    lines = list(bench.summarize_profile(raw))
    assert "4 GIL-holding samples" in lines[0]
    assert any("75.0%  sending" in line for line in lines)
    assert any("of which requests" in line for line in lines)
    assert any("25.0%  engine scheduler" in line for line in lines)
