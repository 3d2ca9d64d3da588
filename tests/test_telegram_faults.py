"""The bot under faults: Telegram down, a damaged state file, old buttons, hostile answers.

Each test runs the real program (``python -m frontends.telegram``) as a
subprocess against the fake Bot API and the fake Open-Meteo, as
``tests/test_telegram_restart.py`` does, and reuses its helpers.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

from flows.weather import CITY_PROMPT, NEXT_PROMPT, PLACE_PROMPT
from frontends.programs import load
from frontends.telegram.config import DEFAULT_FLOW
from frontends.telegram.texts import UNKNOWN_COMMAND, help_text
from tests import test_telegram_restart as restart
from tests.support.fake_telegram import bot_environment
from tests.support.openmeteo_server import FakeOpenMeteo
from tests.test_telegram_restart import (
    EXITING,
    LONDON_CANADA,
    NOT_STARTED,
    PLEASE,
    SPRINGFIELD,
    Bots,
    Telegram,
    answered,
    check_chats,
    confirmed_all,
    now,
    start_at_city,
    start_at_place,
)

# The fixtures of the kill -9 tests: the fakes, and bots run in a test's directory.
telegram = restart.telegram
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


# -- 2: a damaged state file ----------------------------------------------------------------------

RESTARTED = "The bot was updated, so this conversation starts over."


def state_file(bots: Bots) -> Path:
    return bots.directory / "weather-bot.sqlite3"


def damage(path: Path, statement: str, *params: object) -> None:
    """Change the state file behind the (stopped) bot's back."""
    connection = sqlite3.connect(path)
    try:
        connection.execute(statement, params)
        connection.commit()
    finally:
        connection.close()


def test_a_damaged_conversation_starts_over_and_the_others_go_on(
    bots: Bots, telegram: Telegram, places: FakeOpenMeteo
) -> None:
    bots.start()
    start_at_city(telegram, 2001, 2002, 2003)
    confirmed_all(telegram)
    bots.crash()
    damage(
        state_file(bots),
        "UPDATE conversations SET state_class = CAST(? AS TEXT) WHERE key = '2001'",
        b"flows.we\xffther:City",
    )
    damage(state_file(bots), "INSERT INTO waiting VALUES (1000, '2002', ?)", b"\x80garbage")
    bots.restart()

    telegram.wait_text(2001, RESTARTED)
    telegram.wait_text(2002, RESTARTED)
    telegram.send_texts([(2003, "Springfield")])
    telegram.wait_text(2003, NEXT_PROMPT)
    check_chats(
        telegram,
        {
            2001: [CITY_PROMPT, RESTARTED, CITY_PROMPT, EXITING],
            2002: [CITY_PROMPT, RESTARTED, CITY_PROMPT, EXITING],
            2003: [CITY_PROMPT, *SPRINGFIELD, NEXT_PROMPT, EXITING],
        },
    )


def test_a_state_file_sqlite_finds_damaged_is_refused_in_one_line_and_left_alone(
    bots: Bots, telegram: Telegram
) -> None:
    bots.start()
    start_at_city(telegram, 2101)
    bots.crash()
    path = state_file(bots)
    damage(path, "PRAGMA wal_checkpoint(TRUNCATE)")
    content = bytearray(path.read_bytes())
    freelist = int.from_bytes(content[36:40], "big")
    content[36:40] = (freelist + 7).to_bytes(4, "big")  # the header's freelist count, wrong
    path.write_bytes(bytes(content))

    result = subprocess.run(
        [sys.executable, "-m", "frontends.telegram", "--no-pacing"],
        cwd=bots.directory, env=bot_environment(telegram), capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "damaged" in lines[0] and "freelist" in lines[0], result.stderr
    assert path.read_bytes() == bytes(content)


# -- 9: the state file is private -----------------------------------------------------------------


def test_the_state_file_and_its_companions_are_readable_by_their_owner_only(
    bots: Bots, telegram: Telegram
) -> None:
    old = os.umask(0o022)
    try:
        bots.start()
    finally:
        os.umask(old)
    start_at_city(telegram, 2201)

    path = state_file(bots)
    files = sorted(bots.directory.glob(f"{path.name}*"))  # no -shm: the file is locked exclusively
    assert path in files and Path(f"{path}-wal") in files
    for name in files:
        assert stat.S_IMODE(name.stat().st_mode) == 0o600, name


# -- 6: the bot's own replies are journaled --------------------------------------------------------


def faults(telegram: Telegram, method: str, chat: int | None = None) -> int:
    return sum(
        r.fault is not None and (chat is None or str(r.params.get("chat_id")) == str(chat))
        for r in telegram.requests_to(method)
    )


HELP = help_text(load(DEFAULT_FLOW))


def test_the_bots_own_replies_waiting_at_a_crash_are_sent_after_the_restart(
    bots: Bots, telegram: Telegram, places: FakeOpenMeteo
) -> None:
    bots.start("--retry-cap", "0.5")
    start_at_city(telegram, 3001)
    question = start_at_place(telegram, 3002)[3002]
    down = ("sendMessage", "answerCallbackQuery", "editMessageText", "editMessageReplyMarkup")
    for method in down:
        telegram.down(method)

    telegram.send_texts([(3001, "/help"), (3001, "/bogus")])
    telegram.send_sticker(3001)
    telegram.send_sticker(3003)  # no conversation: "Not started"
    press = telegram.press(3002, question, "London, Ontario, Canada")
    confirmed_all(telegram)
    telegram.wait_until(
        lambda: all(faults(telegram, "sendMessage", chat) for chat in (3001, 3003))
        and faults(telegram, "answerCallbackQuery")
        and faults(telegram, "editMessageText"),
        what="every reply tried once",
        timeout=5,
    )
    bots.crash(settled=False)
    for method in down:
        telegram.up(method)
    bots.restart()

    telegram.wait_until(lambda: telegram.answered(press), what="the press answered")
    check_chats(
        telegram,
        {
            3001: [
                CITY_PROMPT,
                HELP,
                UNKNOWN_COMMAND.format(command="/bogus"),
                PLEASE,
                EXITING,
            ],
            3002: [
                CITY_PROMPT,
                answered(PLACE_PROMPT, "London, Ontario, Canada"),
                *LONDON_CANADA,
                NEXT_PROMPT,
                EXITING,
            ],
            3003: [NOT_STARTED, NOT_STARTED],
        },
    )


# -- issue 14, item 3: a misbehaving Bot API server ----------------------------------------------


def test_a_misbehaving_bot_api_server_does_not_silence_the_bot(
    bots: Bots, telegram: Telegram
) -> None:
    bots.start("--retry-cap", "0.5")
    start_at_city(telegram, 4001)
    confirmed_all(telegram)

    telegram.push({"update_id": 2**63, "message": {"text": "/start"}})
    unreadable = telegram.push({"message": "not an object"})
    telegram.misanswer("getUpdates", 200, {"ok": True, "result": 7}, times=2)
    broken = {"ok": False, "error_code": 400, "description": "Bad", "parameters": [1]}
    telegram.misanswer("sendMessage", 400, broken)
    telegram.send_text(4002, "/start")  # refused with the broken answer: never sent
    telegram.wait_until(lambda: faults(telegram, "sendMessage", 4002), what="the broken answer")
    telegram.send_text(4003, "/start")

    telegram.wait_text(4003, CITY_PROMPT)
    telegram.wait_until(
        lambda: any(int(r.params.get("offset") or 0) > unreadable
                    for r in telegram.requests_to("getUpdates")),
        what="the unreadable update confirmed",
    )  # fmt: skip
    telegram.send_text(4001, "/cancel")
    telegram.wait_text(4001, EXITING)
    bots.process.terminate()
    assert bots.process.wait(10) == 0
    output = bots.output()
    for said in ("out of range", "could not be read", "not a list"):
        assert output.count(said) == 1, output
    assert "NOT SENT" in output  # the one send answered with the broken error, once


# -- issue 14, item 5: forged button data ----------------------------------------------------------


def test_forged_button_data_gets_an_answer_and_changes_nothing(
    bots: Bots, telegram: Telegram, places: FakeOpenMeteo
) -> None:
    bots.start()
    question = start_at_place(telegram, 5001)[5001]
    tag = question.buttons[0][1].split(":")[0]

    forged = [f"{tag}:\u00b2", f"{tag}:1\u00b2", "garbage", f"{tag}:99", f"{tag}:1:\u00b2", ""]
    presses = [telegram.press(5001, question, 0, data=data) for data in forged]

    for press in presses:
        telegram.wait_until(lambda press=press: telegram.answered(press), what="an answer")
    assert now(telegram, question).buttons == question.buttons  # still there, still open
    telegram.press(5001, now(telegram, question), "London, Ontario, Canada")
    telegram.wait_text(5001, NEXT_PROMPT)
    assert "Traceback" not in bots.output() and "ERROR" not in bots.output()
