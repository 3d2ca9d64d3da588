"""The Telegram bot end to end: ``python -m frontends.telegram`` as a subprocess.

The bot talks to the fake Bot API (`telegram` fixture) and its weather flow
to the fake Open-Meteo (`openmeteo` fixture); both run in this process, on
127.0.0.1. Every bot started is stopped after its test, and its whole output
(stdout and stderr) is checked for the token.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.frontend import Notice
from engine.journal import SqliteJournal
from flows.weather import NEXT_PROMPT, PLACE_PROMPT
from frontends.telegram.texts import NOTICES, UNKNOWN_COMMAND
from tests.support.fake_telegram import SECRET, TOKEN, FakeTelegram, Sent, bot_environment
from tests.support.flows import CLASSIC, long_text
from tests.support.openmeteo_server import FakeOpenMeteo
from tests.support.processes import spawn_bot, stop_process, wait_until_called

ROOT = Path(__file__).resolve().parent.parent
CITY = "Name a city: "
NOT_STARTED = "Not started, call /start first"
PLEASE = "Please answer with text."


@dataclass
class BotProcess:
    process: subprocess.Popen[bytes]
    output_path: Path

    def output(self) -> str:
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


StartBot = Callable[..., BotProcess]


@pytest.fixture
def start_bot(
    telegram: FakeTelegram, openmeteo: FakeOpenMeteo, tmp_path: Path
) -> Iterator[StartBot]:
    """``start_bot(*options, ready=True)`` runs the bot until the test ends.

    By default it runs unpaced and waits until the bot polls. Afterwards it is
    stopped (SIGTERM, then SIGKILL) and its output must not hold the token, nor a
    traceback unless `flow_fails` (a flow's own bug is logged with its traceback).
    """
    started: list[BotProcess] = []
    failing: list[BotProcess] = []

    def start(
        *options: str,
        ready: bool = True,
        env: dict[str, str] | None = None,
        flow_fails: bool = False,
    ) -> BotProcess:
        if "--flow" not in options:  # the text-only dialogue (see tests.support.flows)
            options = (*options, "--flow", CLASSIC)
        path = tmp_path / f"bot-{len(started)}.log"
        polls = len(telegram.requests_to("getUpdates"))
        # In tmp_path: the bot keeps its state file there; bots of one test share it.
        env = env if env is not None else bot_environment(telegram)
        bot = BotProcess(spawn_bot(options, cwd=tmp_path, env=env, log=path), path)
        started.append(bot)
        if flow_fails:
            failing.append(bot)
        if ready:
            wait_until_called(telegram, "getUpdates", polls, bot.process, path, timeout=15)
        return bot

    try:
        yield start
    finally:
        for bot in started:
            stop_process(bot.process, 10)
        for bot in started:
            output = bot.output()
            assert SECRET not in output, "the token leaked into the bot's output"
            assert bot in failing or "Traceback" not in output, output


def buttons(sent: Sent) -> list[str]:
    return [label for label, _ in sent.buttons]


def sent_params(telegram: FakeTelegram, method: str = "sendMessage") -> list[dict[str, object]]:
    return [r.params for r in telegram.requests_to(method) if r.fault is None]


# -- the tutorial's conversation --------------------------------------------------------


def test_a_whole_weather_conversation(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    start_bot("--no-pacing")

    telegram.send_text(42, "/start")
    assert telegram.wait_text(42, CITY).text == CITY
    telegram.send_text(42, "London")
    question = telegram.wait_text(42, PLACE_PROMPT)
    assert buttons(question) == [
        "London, England, United Kingdom",
        "London, Ontario, Canada",
        "London, Ohio, United States",
        "London, Kentucky, United States",
        "London, Arkansas, United States",
    ]
    pressed = telegram.press(42, question, "London, Ontario, Canada")
    again = telegram.wait_text(42, NEXT_PROMPT)
    assert buttons(again) == ["continue", "quit"]
    telegram.send_text(42, "quit")  # typing an option works as well as pressing it
    telegram.wait_text(42, "Terminating")

    assert telegram.texts(42) == [
        CITY,
        f"{PLACE_PROMPT}\n\n→ London, Ontario, Canada",  # the press is shown, buttons gone
        "Found London (Canada) at latitude 42.98339 and longitude -81.23304",
        "Current temperature is 15.6 °C",
        "Overcast, wind 4.8 km/h from the north",
        NEXT_PROMPT,
        "Terminating",
    ]
    telegram.wait_until(lambda: not telegram.messages(42)[5].keyboard, what="buttons removed")
    assert telegram.messages(42)[1].keyboard is None
    assert telegram.answered(pressed)
    assert all("parse_mode" not in params for params in sent_params(telegram))
    assert [c["command"] for c in telegram.commands or []] == ["start", "cancel", "forget", "help"]

    telegram.send_text(42, "Paris")  # the conversation is over
    telegram.wait_text(42, NOT_STARTED)


def test_start_twice_keeps_the_running_conversation(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    openmeteo.add_place("Springfield", 39.8, -89.6, country="United States")
    openmeteo.set_forecast(39.8, -89.6, temperature=21.5)
    start_bot("--no-pacing")

    telegram.send_text(7, "/start")
    telegram.wait_text(7, CITY)
    telegram.send_text(7, "/start")
    telegram.wait_text(7, "Already running, call /cancel to exit")
    telegram.send_text(7, "Springfield")

    telegram.wait_text(7, "Current temperature is 21.5 °C")
    assert telegram.texts(7)[:2] == [CITY, "Already running, call /cancel to exit"]


def test_cancel_ends_the_conversation(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    start_bot("--no-pacing")

    telegram.send_text(8, "/start")
    telegram.wait_text(8, CITY)
    telegram.send_text(8, "/cancel")
    telegram.wait_text(8, "Exiting...")
    telegram.send_text(8, "London")
    telegram.send_text(8, "/cancel")

    telegram.wait_messages(8, 4)
    assert telegram.texts(8) == [CITY, "Exiting...", NOT_STARTED, NOT_STARTED]


def test_text_before_start_and_the_other_commands(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    start_bot("--no-pacing")

    telegram.send_text(9, "hello")
    telegram.wait_messages(9, 1)
    telegram.send_text(9, "/help")
    telegram.wait_messages(9, 2)
    telegram.send_text(9, "/weather")

    texts = [m.text for m in telegram.wait_messages(9, 3)]
    assert texts[0] == NOT_STARTED
    assert "weather" in texts[1] and "/start" in texts[1] and "/cancel" in texts[1]
    assert texts[2] == "Unknown command /weather. I know /start, /cancel, /forget and /help."


def test_buttons_after_their_question_or_their_conversation(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    openmeteo.add_place("Springfield", 39.8, -89.6, country="United States")
    start_bot("--no-pacing")
    telegram.send_text(5, "/start")
    telegram.wait_text(5, CITY)
    telegram.send_text(5, "Springfield")
    first = telegram.wait_text(5, NEXT_PROMPT)

    telegram.send_text(5, "maybe")  # neither an option nor its number
    telegram.wait_text(5, "Try again", after=4)
    second = telegram.wait_text(5, NEXT_PROMPT, after=6)
    assert buttons(second) == ["continue", "quit"]
    telegram.wait_until(lambda: not telegram.messages(5)[4].keyboard, what="old buttons removed")

    telegram.press(5, second, "continue")
    telegram.wait_text(5, CITY, after=7)
    stale = telegram.press(5, second, "quit")  # that question was answered
    telegram.wait_until(lambda: telegram.answer_of(stale), what="an answer to the stale press")
    assert telegram.answer_of(stale) == "That question was already answered."

    telegram.send_text(5, "/cancel")
    telegram.wait_text(5, "Exiting...")
    ended = telegram.press(5, first, "quit", data=first.buttons[1][1])
    telegram.wait_until(lambda: telegram.answer_of(ended), what="an answer to the late press")
    assert (
        telegram.answer_of(ended) == "This conversation has ended. Call /start to begin a new one."
    )
    assert telegram.texts(5)[-1] == "Exiting..."


def test_an_option_can_be_typed_by_its_number(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    openmeteo.add_place("Springfield", 39.8, -89.6, country="United States")
    start_bot("--no-pacing")
    telegram.send_text(6, "/start")
    telegram.send_text(6, "Springfield")
    telegram.wait_text(6, NEXT_PROMPT)

    telegram.send_text(6, "1")

    telegram.wait_text(6, "Terminating")


def test_a_city_with_markdown_characters_is_sent_as_plain_text(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    openmeteo.add_place("*Star_City*", 10.5, 20.5, country="[Under_score]")
    start_bot("--no-pacing")

    telegram.send_text(4, "/start")
    telegram.send_text(4, "*Star_City*")

    found = telegram.wait_text(4, "Found")
    assert found.text == "Found *Star_City* ([Under_score]) at latitude 10.5 and longitude 20.5"
    assert all("parse_mode" not in params for params in sent_params(telegram))


# -- many users, many messages ---------------------------------------------------------------


def test_200_users_at_once_each_get_their_own_city(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    cities = openmeteo.add_cities(200)
    chats = list(range(10_001, 10_201))
    start_bot("--no-pacing")
    started = time.monotonic()

    telegram.send_texts((chat, "/start") for chat in chats)
    for chat in chats:
        telegram.wait_text(chat, CITY, timeout=30)
    telegram.send_texts((chat, city.name) for chat, city in zip(chats, cities, strict=True))
    for chat in chats:
        telegram.wait_text(chat, NEXT_PROMPT, timeout=30)
    elapsed = time.monotonic() - started

    for chat, city in zip(chats, cities, strict=True):
        assert telegram.texts(chat) == [
            CITY,
            f"Found {city.name} (Testland) at latitude {city.latitude} "
            f"and longitude {city.longitude}",
            f"Current temperature is {city.temperature} °C",
            "Overcast, wind 4.8 km/h from the north",
            NEXT_PROMPT,
        ]
    print(f"200 conversations, 1000 messages, in {elapsed:.2f}s")


def test_a_burst_from_one_chat_is_answered_in_order(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    start_bot("--no-pacing", "--flow", "tests.support.flows:Echo")

    telegram.send_texts([(3, "/start")] + [(3, f"message {n}") for n in range(40)])

    telegram.wait_messages(3, 41)
    assert telegram.texts(3) == ["Say something"] + [f"echo: message {n}" for n in range(40)]


def test_sends_to_one_chat_are_paced(start_bot: StartBot, telegram: FakeTelegram) -> None:
    start_bot(
        "--flow", "tests.support.flows:Countdown",
        "--chat-rate", "10", "--chat-burst", "1", "--global-rate", "0",
    )  # fmt: skip

    telegram.send_text(2, "/start")

    sent = telegram.wait_messages(2, 6)
    # 10 a second, no burst: the n-th send goes n tenths of a second after the first
    # at the earliest. Timed on arrival, so each is compared with the first, not with
    # the one before: a send the machine delays lengthens the gap before it and
    # shortens the one after, while the pace is kept (only the first's delay counts).
    since_first = [message.at - sent[0].at for message in sent]
    assert all(since >= 0.1 * n - 0.03 for n, since in enumerate(since_first)), since_first


# -- failures -----------------------------------------------------------------------------------


def test_429_502_and_dropped_connections_lose_nothing(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    openmeteo.add_place("Springfield", 39.8, -89.6, country="United States")
    telegram.fail("getUpdates", 502)
    telegram.fail("getUpdates", drop=True)
    telegram.fail("sendMessage", 502)
    start_bot("--no-pacing", ready=False)

    telegram.send_text(11, "/start")
    telegram.wait_text(11, CITY)
    telegram.fail("getUpdates", 429, retry_after=1)
    telegram.fail("sendMessage", drop=True)
    telegram.send_text(11, "Springfield")
    telegram.wait_text(11, "Found")
    telegram.fail("sendMessage", 429, retry_after=1)
    telegram.wait_text(11, NEXT_PROMPT)
    # The 429 goes to the poll after the one that took "Springfield", which may
    # come after the replies: wait for it, and for the poll after it.
    telegram.wait_until(
        lambda: any(r.fault == "429" for r in telegram.requests_to("getUpdates")[:-1]),
        10,
        "the poll answered 429, and the one after it",
    )

    assert telegram.texts(11) == [
        CITY,
        "Found Springfield (United States) at latitude 39.8 and longitude -89.6",
        "Current temperature is 15.6 °C",
        "Overcast, wind 4.8 km/h from the north",
        NEXT_PROMPT,
    ]
    # Polling and sending run on different threads: their faults interleave
    # as they happen to, so each method's are checked in its own order.
    for method, faults in {
        "getUpdates": ["502", "drop", "429"],
        "sendMessage": ["502", "drop", "429"],
    }.items():
        assert [r.fault for r in telegram.requests_to(method) if r.fault] == faults
    sends = telegram.requests_to("sendMessage")
    limited = next(n for n, r in enumerate(sends) if r.fault == "429")
    assert sends[limited + 1].at - sends[limited].at >= 1.0  # retry_after honoured
    polls = telegram.requests_to("getUpdates")
    limited = next(n for n, r in enumerate(polls) if r.fault == "429")
    assert polls[limited + 1].at - polls[limited].at >= 1.0


def test_a_conflict_with_another_poller_is_reported(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    telegram.fail("getUpdates", 409, times=2)
    bot = start_bot("--no-pacing")

    telegram.send_text(12, "/help")
    telegram.wait_text(12, "/start")

    output = bot.output()
    assert output.count("409 Conflict") == 2
    assert "Another instance of this bot is polling with the same token" in output


def test_photos_stickers_and_odd_updates_are_handled_safely(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    openmeteo.add_place("Springfield", 39.8, -89.6, country="United States")
    start_bot("--no-pacing")
    telegram.send_photo(13)  # before /start
    telegram.wait_text(13, NOT_STARTED)
    telegram.send_text(13, "/start")
    telegram.wait_text(13, CITY)

    telegram.send_photo(13)
    telegram.send_sticker(13)
    telegram.send_voice(13)
    said = telegram.send_text(13, "Springfeld")
    telegram.wait_text(13, "Found nothing")
    telegram.edit_user_message(said, "Springfield")
    telegram.channel_post(-100999, "news")
    telegram.member_update(13, 13, "kicked")
    telegram.push({"some_future_kind": {"anything": 1}})
    telegram.push({"message": {"message_id": 99, "date": 0}})  # unreadable: no chat
    telegram.push({"message": telegram.message(13, new_chat_title="service message")})
    telegram.send_text(13, "Springfield")

    telegram.wait_text(13, NEXT_PROMPT)
    assert telegram.texts(13) == [
        NOT_STARTED,
        CITY,
        PLEASE,
        PLEASE,
        PLEASE,
        "Found nothing",
        CITY,
        "Found Springfield (United States) at latitude 39.8 and longitude -89.6",
        "Current temperature is 15.6 °C",
        "Overcast, wind 4.8 km/h from the north",
        NEXT_PROMPT,
    ]
    assert telegram.texts(-100999) == []


def test_a_long_message_is_split(start_bot: StartBot, telegram: FakeTelegram) -> None:
    start_bot("--no-pacing", "--flow", "tests.support.flows:LongText")

    telegram.send_text(14, "/start")

    telegram.wait_messages(14, 3)
    # A barrier, not a pause: the bot keeps each chat's order, so whatever the
    # flow still had to say would come before the answer to this.
    telegram.send_text(14, "/weather")
    telegram.wait_text(14, UNKNOWN_COMMAND.format(command="/weather"))
    texts = telegram.texts(14)[:-1]
    assert len(texts) == 3
    assert all(len(text) <= 4096 for text in texts)
    assert "\n".join(texts) == long_text()


def test_typing_is_shown_while_a_call_runs(start_bot: StartBot, telegram: FakeTelegram) -> None:
    start_bot("--no-pacing", "--flow", "tests.support.flows:Slow")

    telegram.send_text(15, "/start")
    done = telegram.wait_text(15, "done")

    actions = [r for r in telegram.requests_to("sendChatAction") if r.params["chat_id"] == "15"]
    assert actions and actions[0].params["action"] == "typing"
    assert actions[0].at < done.at


def test_no_typing_for_a_call_answered_at_once(start_bot: StartBot, telegram: FakeTelegram) -> None:
    start_bot("--no-pacing", "--flow", "tests.support.flows:Quick")

    telegram.send_text(16, "/start")
    telegram.wait_text(16, "done")

    assert not [r for r in telegram.requests_to("sendChatAction") if r.params["chat_id"] == "16"]


# -- groups -------------------------------------------------------------------------------------


def test_two_people_in_a_group_each_get_their_own_answers(
    start_bot: StartBot, telegram: FakeTelegram, places: FakeOpenMeteo
) -> None:
    group = -1001234
    start_bot("--no-pacing")

    ann = telegram.send_text(group, "/start", user_id=1, chat_type="supergroup")
    bob = telegram.send_text(group, "/start@fake_weather_bot", user_id=2)
    telegram.send_text(group, "/start@some_other_bot", user_id=3)  # not for us
    telegram.wait_until(lambda: len(telegram.messages(group)) >= 2, what="two prompts")
    prompts = {m.reply_to: m for m in telegram.messages(group)}
    assert set(prompts) == {ann["message_id"], bob["message_id"]}
    assert all(m.text == CITY and m.force_reply for m in prompts.values())

    telegram.send_text(group, "nice weather today", user_id=3)  # chatter: not for the bot
    ann_city = telegram.send_text(
        group, "Springfield", user_id=1, reply_to=prompts[ann["message_id"]].message_id
    )
    bob_city = telegram.send_text(
        group, "Shelbyville", user_id=2, reply_to=prompts[bob["message_id"]].message_id
    )
    ann_weather = telegram.wait_text(group, "21.5 °C")
    bob_weather = telegram.wait_text(group, "9.0 °C")
    assert ann_weather.reply_to == ann_city["message_id"]
    assert bob_weather.reply_to == bob_city["message_id"]

    telegram.wait_until(
        lambda: len([m for m in telegram.messages(group) if m.text == NEXT_PROMPT]) == 2,
        what="two questions",
    )
    ann_next = next(
        m
        for m in telegram.messages(group)
        if m.text == NEXT_PROMPT and m.reply_to == ann_city["message_id"]
    )
    press = telegram.press(group, ann_next, "quit", user_id=2)  # Bob presses Ann's button
    telegram.wait_until(lambda: telegram.answer_of(press), what="an answer to Bob")
    assert telegram.answer_of(press) == "This question is for User1."
    telegram.press(group, ann_next, "quit", user_id=1)
    bye = telegram.wait_text(group, "Terminating")
    assert bye.reply_to == ann_city["message_id"]

    texts = telegram.texts(group)
    assert texts.count("Terminating") == 1  # Bob's conversation goes on
    assert NOT_STARTED not in texts  # the chatter got no answer
    by_reply = {m.reply_to for m in telegram.messages(group)}
    assert by_reply <= {ann["message_id"], bob["message_id"], ann_city["message_id"],
                        bob_city["message_id"]}  # fmt: skip


# -- secrets, stopping, configuration ---------------------------------------------------------


def test_the_token_never_appears_even_in_debug_output(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    telegram.fail("getUpdates", drop=True)
    telegram.fail("sendMessage", drop=True)
    bot = start_bot("--no-pacing", "-v")

    telegram.send_text(16, "/help")
    telegram.wait_text(16, "/start")
    assert bot.stop() == 0

    output = bot.output()
    assert "DEBUG" in output and "/bot123456789:<token>/sendMessage" in output
    assert SECRET not in output  # checked again, with the rest, by the fixture


def test_sigterm_stops_promptly_with_status_0(start_bot: StartBot, telegram: FakeTelegram) -> None:
    bot = start_bot("--no-pacing")
    time.sleep(0.3)  # well inside a long poll

    started = time.monotonic()
    status = bot.stop()

    assert status == 0
    assert time.monotonic() - started < 3.0
    assert "stopped in" in bot.output()


def test_sigterm_after_an_update_logs_no_conflict(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    bot = start_bot("--no-pacing")
    telegram.send_text(18, "/help")
    telegram.wait_text(18, "/start")
    # In its next long poll, whose offset confirms the update: the stop must
    # not poll again meanwhile (Telegram would end one of the two with 409).
    telegram.wait_until(lambda: telegram.unconfirmed() == 0, what="the update confirmed")

    assert bot.stop() == 0

    output = bot.output()
    assert "409" not in output and "WARNING" not in output and "ERROR" not in output, output
    offsets = [r.params.get("offset") for r in telegram.requests_to("getUpdates")]
    assert offsets == [None, "1001"], "confirmed twice: the second poll races the first"


def test_sigterm_lets_queued_messages_go_out(start_bot: StartBot, telegram: FakeTelegram) -> None:
    bot = start_bot(
        "--flow", "tests.support.flows:Countdown",
        "--chat-rate", "5", "--chat-burst", "1", "--global-rate", "0",
    )  # fmt: skip
    telegram.send_text(17, "/start")
    telegram.wait_messages(17, 1)

    assert bot.stop() == 0

    assert telegram.texts(17) == ["count 5", "count 4", "count 3", "count 2", "count 1", "Done?"]


def test_a_token_telegram_rejects_stops_the_bot(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    other = "987654321:" + "B" * 35
    bot = start_bot(ready=False, env=bot_environment(telegram, other))

    assert bot.process.wait(10) == 2
    assert "Telegram rejected the bot token" in bot.output()
    assert "B" * 35 not in bot.output()


@pytest.mark.parametrize("token", [None, "", "12345", "12345:tooshort", f"{TOKEN} {TOKEN}"])
def test_a_missing_or_malformed_token_exits_2_with_one_line(
    telegram: FakeTelegram, token: str | None
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "frontends.telegram"],
        cwd=ROOT,
        env=bot_environment(telegram, token),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("weather-bot: error: "), result.stderr
    assert "TELEGRAM_BOT_TOKEN" in lines[0]
    if token:
        assert token.split(":")[-1] not in lines[0]
    assert telegram.requests == []


def test_a_bad_flow_exits_2_with_one_line(telegram: FakeTelegram) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "frontends.telegram", "--flow", "tests.no_such_module:Flow"],
        cwd=ROOT,
        env=bot_environment(telegram),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no_such_module" in result.stderr


@pytest.mark.parametrize("damage", ["damaged", "read-only", "in use"])
def test_a_state_file_that_cannot_be_used_exits_2_with_one_line(
    telegram: FakeTelegram, tmp_path: Path, damage: str
) -> None:
    state = tmp_path / "weather-bot.sqlite3"
    holder = None
    if damage == "damaged":
        state.write_bytes(b"not a database at all" * 50)
    else:
        SqliteJournal(state).close()
        if damage == "read-only":
            state.chmod(0o444)
    before = state.read_bytes()
    if damage == "in use":
        # Opened last: closing any other descriptor of the file in this
        # process would drop its lock (POSIX locks belong to the process).
        holder = SqliteJournal(state)  # another instance runs on it
    try:
        result = subprocess.run(
            [sys.executable, "-m", "frontends.telegram"],
            cwd=tmp_path,
            env=bot_environment(telegram),
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        if holder is not None:
            holder.close()
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("weather-bot: error: weather-bot.sqlite3: ")
    assert damage.replace("in use", "in use by another") in lines[0]
    assert telegram.requests == []
    if holder is None:  # (the instance holding it may write to it, of course)
        assert state.read_bytes() == before


def test_a_sleep_of_nan_fails_that_conversation_and_no_other(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    bot = start_bot("--no-pacing", "--flow", "tests.support.flows:Nap", flow_fails=True)
    telegram.send_texts([(31, "/start"), (32, "/start")])
    telegram.wait_text(31, "How long?")
    telegram.wait_text(32, "How long?")
    telegram.send_texts([(31, "nan"), (32, "0.2")])  # Sleep(float("nan")): refused where built
    telegram.wait_text(31, NOTICES[Notice.FAILED])
    telegram.wait_messages(32, 4)  # the other user's timer fires, the loop goes on
    assert telegram.texts(32) == ["How long?", "sleeping 0.2 s", "slept 0.2 s", "How long?"]
    assert "ValueError: Sleep takes a finite, non-negative number of seconds" in bot.output()
