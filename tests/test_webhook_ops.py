"""Webhook mode as an operator runs it: JSON logs, and ``kill -9`` with updates in flight."""

from __future__ import annotations

import json
import signal
import threading

from tests.support.fake_telegram import FakeTelegram
from tests.support.webhook_bot import StartBot, start_bot_fixture

__all__ = ["start_bot_fixture"]  # the fixture `start_bot`, used by name

CHATS = range(11, 17)


def test_json_logs_are_one_object_a_line_without_message_texts(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    bot = start_bot("--log-format", "json")
    telegram.send_text(51, "/start")
    telegram.wait_text(51, "Name a city")
    assert bot.stop() == 0

    lines = bot.output().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert entries and all(
        set(entry) >= {"time", "level", "logger", "thread", "message"} for entry in entries
    )
    messages = [entry["message"] for entry in entries]
    assert messages[0] == (
        "starting: webhook mode, flow tests.support.flows:ClassicWeather, state file "
        "weather-bot.sqlite3"
    )
    assert any("webhook mode: Telegram posts to" in message for message in messages), messages
    assert any("stopped" in message for message in messages), messages
    assert not any("Name a city" in message for message in messages)  # no texts at INFO


def test_a_kill_with_updates_in_flight_loses_none_and_takes_each_once(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    first = start_bot("--flow", "tests.support.flows:Hold")
    for chat in CHATS:
        telegram.send_text(chat, "/start")
    for chat in CHATS:
        telegram.wait_text(chat, "Say something")
    threading.Event().wait(0.3)  # the prompts journaled as sent (see the restart tests)

    # The engine is held up by the first chat, so the others' updates wait unjournaled:
    # their requests are in flight, unanswered, when the bot dies.
    telegram.send_text(CHATS[0], "hold 3")
    telegram.wait_until(lambda: telegram.in_flight() >= 1, what="the hold in flight")
    for chat in CHATS[1:]:
        telegram.send_text(chat, f"one {chat}")
    telegram.wait_until(
        lambda: telegram.in_flight() == len(CHATS), what="every chat's update in flight"
    )
    first.process.kill()
    assert first.process.wait(10) == -signal.SIGKILL
    assert all(f"echo: one {chat}" not in telegram.texts(chat) for chat in CHATS[1:])

    start_bot("--flow", "tests.support.flows:Hold", port=first.port)  # same URL
    for chat in CHATS[1:]:
        telegram.send_text(chat, f"two {chat}")
    telegram.wait_text(CHATS[0], "echo: hold 3", timeout=30)
    for chat in CHATS[1:]:
        telegram.wait_text(chat, f"echo: two {chat}", timeout=30)
    telegram.wait_until(lambda: telegram.unconfirmed() == 0, what="every update delivered")

    assert telegram.texts(CHATS[0]) == ["Say something", "echo: hold 3"]
    for chat in CHATS[1:]:  # redelivered, taken once, in order, nothing lost
        assert telegram.texts(chat) == ["Say something", f"echo: one {chat}", f"echo: two {chat}"]
