"""The bot in webhook mode end to end: the fake Bot API posts updates to ``weather-bot``."""

from __future__ import annotations

import json

from flows.weather import NEXT_PROMPT, PLACE_PROMPT
from tests.support.fake_telegram import FakeTelegram
from tests.support.openmeteo_server import FakeOpenMeteo
from tests.support.webhook_bot import HOOK_SECRET, StartBot, post, start_bot_fixture  # noqa: F401

CITY = "Name a city: "
NOT_STARTED = "Not started, call /start first"


def test_the_weather_dialogue_by_webhook(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    bot = start_bot()
    hook = telegram.requests_to("setWebhook")[-1].params
    assert hook["url"] == bot.hook_url
    assert hook["secret_token"] == HOOK_SECRET
    assert json.loads(hook["allowed_updates"]) == ["message", "callback_query"]
    assert int(hook["max_connections"]) == 40

    telegram.send_text(42, "/start")
    telegram.wait_text(42, CITY)
    telegram.send_text(42, "London")
    question = telegram.wait_text(42, PLACE_PROMPT)
    telegram.press(42, question, "London, Ontario, Canada")
    telegram.wait_text(42, NEXT_PROMPT)
    telegram.send_text(42, "quit")
    telegram.wait_text(42, "Terminating")

    assert telegram.texts(42) == [
        CITY,
        f"{PLACE_PROMPT}\n\n→ London, Ontario, Canada",
        "Found London (Canada) at latitude 42.98339 and longitude -81.23304",
        "Current temperature is 15.6 °C",
        "Overcast, wind 4.8 km/h from the north",
        NEXT_PROMPT,
        "Terminating",
    ]
    assert not telegram.requests_to("getUpdates")
    # Every update is answered 200 (the last answer may come just after the reply it caused).
    telegram.wait_until(lambda: telegram.unconfirmed() == 0, what="every update answered 200")
    assert "webhook mode: Telegram posts to" in bot.output()


def test_a_crowd_of_users_at_once(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    users = 120
    cities = openmeteo.add_cities(users)
    start_bot()

    telegram.send_texts((chat, "/start") for chat in range(1, users + 1))
    for chat in range(1, users + 1):
        telegram.wait_text(chat, CITY, timeout=30)
    telegram.send_texts((chat, cities[chat - 1].name) for chat in range(1, users + 1))
    for chat, city in enumerate(cities, start=1):
        telegram.wait_text(chat, NEXT_PROMPT, timeout=30)
        assert f"Current temperature is {city.temperature} °C" in telegram.texts(chat)
    # Each user's updates arrived once each: nothing lost, nothing doubled.
    for chat in range(1, users + 1):
        assert telegram.texts(chat).count(CITY) == 1
    telegram.wait_until(lambda: telegram.unconfirmed() == 0, what="every update answered 200")


def test_a_wrong_or_missing_secret_is_refused_and_logged_once(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    bot = start_bot()
    update = json.dumps({"update_id": 5, "message": telegram.message(77, text="/start")}).encode()

    assert post(bot.hook_url, update, secret=None).status_code == 401
    assert post(bot.hook_url, update, secret="not-the-secret").status_code == 403
    assert post(bot.hook_url, update, secret="still-not-it").status_code == 403

    output = bot.output()
    assert output.count("refused a webhook request from 127.0.0.1") == 1, output
    # Nothing reached the engine: a real update afterwards is the first it answers.
    telegram.send_text(77, "hello")
    telegram.wait_text(77, NOT_STARTED)
    assert telegram.texts(77) == [NOT_STARTED]


def test_garbage_bodies_are_refused_before_the_engine(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    bot = start_bot()
    message = telegram.message(78, text="/start")
    good = json.dumps({"update_id": 6, "message": message}).encode()

    assert post(bot.hook_url, b"{not json").status_code == 400
    assert post(bot.hook_url, b"[1, 2]").status_code == 400
    assert post(bot.hook_url, b'{"update_id": "6"}').status_code == 400
    assert post(bot.hook_url, good, content_type="text/plain").status_code == 415
    too_big = b'{"update_id": 7, "pad": "' + b"x" * (1024 * 1024) + b'"}'
    assert post(bot.hook_url, too_big).status_code == 413
    assert bot.get("/telegram/hook").status_code == 405
    assert bot.get("/elsewhere").status_code == 404

    telegram.send_text(78, "hello")
    telegram.wait_text(78, NOT_STARTED)
    assert telegram.texts(78) == [NOT_STARTED]


def test_a_redelivered_update_is_taken_once(start_bot: StartBot, telegram: FakeTelegram) -> None:
    bot = start_bot()
    update = json.dumps({"update_id": 9000, "message": telegram.message(79, text="/start")})

    assert post(bot.hook_url, update.encode()).status_code == 200
    assert post(bot.hook_url, update.encode()).status_code == 200  # Telegram's retry
    telegram.send_text(79, "Paris")  # a later update: its answer proves the first was done
    telegram.wait_messages(79, 2)
    assert telegram.texts(79)[0] == CITY
    assert "Already running" not in " ".join(telegram.texts(79))


def test_an_update_overtaken_by_a_later_one_is_taken_after_a_restart(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    bot = start_bot()
    # As Telegram retrying it: another chat's later update arrives first.
    telegram.hold_deliveries(81)
    telegram.send_text(81, "hello")
    telegram.send_text(82, "hello")
    telegram.wait_text(82, NOT_STARTED)
    telegram.wait_until(lambda: telegram.unconfirmed() == 1, what="the later update answered 200")
    assert bot.stop() == 0

    start_bot()
    telegram.release_deliveries(81)
    telegram.send_text(81, "hello again")  # delivered after the held one, in the chat's order
    telegram.wait_messages(81, 2)
    assert telegram.texts(81) == [NOT_STARTED, NOT_STARTED]  # the held one was not lost


def test_sigterm_drains_and_exits_0(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    bot = start_bot()
    telegram.send_texts((chat, "/start") for chat in range(1, 21))
    for chat in range(1, 21):
        telegram.wait_text(chat, CITY)

    assert bot.stop() == 0
    output = bot.output()
    assert "stopped taking updates (503 from now on); requests in flight finished" in output
    assert telegram.unconfirmed() == 0
    # Updates that come now wait at Telegram for the next start.
    telegram.send_text(1, "London")
    assert telegram.unconfirmed() == 1


def test_switching_webhook_polling_webhook(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo
) -> None:
    first = start_bot()
    telegram.send_text(42, "/start")
    telegram.wait_text(42, CITY)
    assert first.stop() == 0
    assert telegram.webhook == first.hook_url  # kept set across a restart
    telegram.send_text(42, "London")  # waits at Telegram meanwhile

    polling = start_bot(webhook=False)
    assert telegram.webhook is None  # deleteWebhook, keeping pending updates
    assert telegram.requests_to("deleteWebhook")[-1].params.get("drop_pending_updates") in (
        None,
        "False",
        "false",
    )
    question = telegram.wait_text(42, PLACE_PROMPT)
    assert polling.stop() == 0
    telegram.press(42, question, "London, Ontario, Canada")

    second = start_bot()
    telegram.wait_text(42, NEXT_PROMPT)
    telegram.send_text(42, "quit")
    telegram.wait_text(42, "Terminating")
    assert telegram.texts(42)[0] == CITY
    assert telegram.texts(42).count(CITY) == 1
    assert second.stop() == 0


def test_set_webhook_is_tried_again_until_telegram_refuses_the_url(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    telegram.fail("setWebhook", 502)
    telegram.fail("setWebhook", 400)
    bot = start_bot(ready=False)

    assert bot.process.wait(timeout=30) == 1
    output = bot.output()
    assert len(telegram.requests_to("setWebhook")) == 2  # the 502 was tried again, the 400 not
    assert "setWebhook failed" in output and "retrying in" in output
    assert output.count("Telegram refused the webhook") == 1


def test_a_webhook_set_while_polling_is_reported_in_one_line(
    start_bot: StartBot, telegram: FakeTelegram
) -> None:
    polling = start_bot("--poll-timeout", "1", webhook=False)
    telegram.call("setWebhook", {"url": "http://127.0.0.1:9/elsewhere"})
    telegram.wait_until(
        lambda: telegram.requests_to("getWebhookInfo"), timeout=15, what="getWebhookInfo"
    )
    telegram.wait_until(lambda: "a webhook is set for this bot" in polling.output(), timeout=10)
    assert polling.output().count("a webhook is set for this bot") == 1
    assert "409 Conflict" not in polling.output()
    telegram.call("deleteWebhook", {})
