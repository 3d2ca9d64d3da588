"""The bot and the grown weather flow end to end: who, where, memory, pictures.

``python -m frontends.telegram`` runs as a subprocess against the fake Bot
API and the fake Open-Meteo (see ``tests/test_telegram_bot.py``); the
restart tests kill it with SIGKILL and start it again on the same state file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.weather import CITY_PROMPT, NEXT_PROMPT
from frontends.telegram.texts import FORGOTTEN, LOCATION_HINT
from tests.support.fake_telegram import FakeTelegram, Sent
from tests.support.openmeteo_server import FakeOpenMeteo, load_fixture
from tests.test_telegram_bot import StartBot, buttons, start_bot  # noqa: F401 (fixture)
from tests.test_telegram_restart import Bots, bots, confirmed_all, quiet_since  # noqa: F401

HELLO = "Hello, User{chat}! Name a city or share a location, and I tell you its weather."
PLEASE = "Please answer with text."
WEATHER = "flows.weather:WeatherFlow"  # not the plumbing tests' text-only flow
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


def asks_for_location(sent: Sent) -> bool:
    return [b.get("request_location") for b in sent.reply_keyboard] == [True]


def first_city_question(telegram: FakeTelegram, chat: int, start: str = "/start") -> Sent:
    """Start a conversation; the "Name a city" question it asks (after the greeting)."""
    after = len(telegram.messages(chat))
    telegram.send_text(chat, start)
    telegram.wait_text(chat, HELLO.format(chat=chat), after=after)
    return telegram.wait_text(chat, CITY_PROMPT, after=after)


def test_the_user_is_greeted_by_name_and_offered_the_location_button(
    start_bot: StartBot, telegram: FakeTelegram  # noqa: F811
) -> None:
    start_bot("--no-pacing", "--flow", WEATHER)

    question = first_city_question(telegram, 42)

    assert asks_for_location(question)
    assert [b["text"] for b in question.reply_keyboard] == ["Send my location"]


@pytest.mark.parametrize("how", ["message", "button", "venue"])
def test_a_shared_location_gets_its_weather_and_the_keyboard_goes(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo, how: str  # noqa: F811
) -> None:
    openmeteo.set_forecast(48.20849, 16.37208, temperature=7.5, weather_code=0, wind_speed=0)
    start_bot("--no-pacing", "--flow", WEATHER)
    first_city_question(telegram, 42)

    if how == "venue":
        telegram.send_venue(42, 48.20849, 16.37208, "Stephansdom")
    else:  # the button sends an ordinary location message, as the attachment menu does
        telegram.send_location(42, 48.20849, 16.37208)

    found = telegram.wait_text(42, "Your location is at latitude 48.20849 and longitude 16.37208")
    assert found.removes_keyboard  # the "Send my location" button goes with the next message
    telegram.wait_text(42, "Current temperature is 7.5 °C")
    assert buttons(telegram.wait_text(42, NEXT_PROMPT)) == ["continue", "quit", "forecast"]


def test_a_photo_where_only_text_is_taken_gets_a_hint(
    start_bot: StartBot, telegram: FakeTelegram  # noqa: F811
) -> None:
    start_bot("--no-pacing", "--flow", WEATHER)
    first_city_question(telegram, 42)
    telegram.send_text(42, "London")
    telegram.wait_text(42, "Which one do you mean?")

    telegram.send_photo(42)

    telegram.wait_text(42, PLEASE)
    assert not telegram.requests_to("getFile")  # not downloaded for nothing


def test_a_photo_for_a_question_that_takes_photos_is_downloaded(
    start_bot: StartBot, telegram: FakeTelegram  # noqa: F811
) -> None:
    telegram.add_file("photo-1", JPEG)
    start_bot("--no-pacing", "--flow", "tests.support.flows:Snapshot")
    telegram.send_text(42, "/start")
    telegram.wait_text(42, "Send me a photo")
    telegram.send_text(42, "hello")
    telegram.wait_text(42, "Please send a photo.")

    telegram.send_photo(42)

    telegram.wait_text(42, f"Got {len(JPEG)} bytes: look")
    assert [r.params.get("file_id") for r in telegram.requests_to("getFile")] == ["photo-1"]


def test_a_deep_link_names_the_city(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo  # noqa: F811
) -> None:
    openmeteo.add_place("Berlin", 52.52437, 13.41053, country="Germany")
    start_bot("--no-pacing", "--flow", WEATHER)

    telegram.send_text(42, "/start Berlin")

    telegram.wait_text(42, HELLO.format(chat=42))
    telegram.wait_text(42, "Found Berlin (Germany) at latitude 52.52437 and longitude 13.41053")
    assert [r.params.get("name") for r in openmeteo.requests_to("search")] == ["Berlin"]


def test_forecast_sends_seven_days_and_uploads_the_chart(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo  # noqa: F811
) -> None:
    openmeteo.add_place("Enschede", 52.21833, 6.89583, country="Netherlands")
    openmeteo.set_forecast(
        52.21833, 6.89583, series=load_fixture("forecast_hourly_daily_horizon_nulls")
    )
    start_bot("--no-pacing", "--flow", WEATHER)
    first_city_question(telegram, 42)
    telegram.send_text(42, "Enschede")
    telegram.press(42, telegram.wait_text(42, NEXT_PROMPT), "forecast")

    days = telegram.wait_text(42, "The next 7 days in Enschede:")
    assert days.text.splitlines()[1:] == [  # past the model's horizon: nulls
        "Sat 17 Oct: high 18 °C, Clear sky",
        "Sun 18 Oct: no forecast yet",
    ]
    (picture,) = telegram.wait_until(lambda: telegram.pictures(42), what="the chart")
    assert picture.photo is not None and picture.photo.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(picture.photo) > 10_000
    assert picture.text == "The next 48 hours in Enschede"
    actions = [r.params.get("action") for r in telegram.requests_to("sendChatAction")]
    assert "upload_photo" in actions
    after = telegram.messages(42).index(picture)
    again = telegram.wait_text(42, NEXT_PROMPT, after=after)  # (the one answered shows "→")
    assert buttons(again) == ["continue", "quit", "forecast"]


def test_help_says_what_is_kept_and_forget_forgets(
    start_bot: StartBot, telegram: FakeTelegram, openmeteo: FakeOpenMeteo  # noqa: F811
) -> None:
    start_bot("--no-pacing", "--flow", WEATHER)
    telegram.send_text(42, "/help")
    help_text = telegram.wait_text(42, "I tell you the current weather").text
    assert "I remember the last 5 places you looked up" in help_text
    assert "/forget - forget what i remember about you" in help_text.casefold()

    telegram.send_text(42, "/forget")
    telegram.wait_text(42, FORGOTTEN)


# -- restarts ---------------------------------------------------------------------------


def test_memory_survives_kill_9_and_forget_deletes_it(
    bots: Bots, telegram: FakeTelegram, openmeteo: FakeOpenMeteo  # noqa: F811
) -> None:
    openmeteo.add_place("Enschede", 52.21833, 6.89583, country="Netherlands")
    bots.start("--flow", WEATHER)
    first_city_question(telegram, 42)
    telegram.send_text(42, "Enschede")
    telegram.press(42, telegram.wait_text(42, NEXT_PROMPT), "quit")
    telegram.wait_text(42, "Terminating")
    confirmed_all(telegram)

    bots.crash()
    bots.restart()

    question = first_city_question(telegram, 42)
    assert buttons(question) == ["Enschede, Netherlands"]  # remembered across the crash
    hint = telegram.wait_text(42, LOCATION_HINT, after=telegram.messages(42).index(question))
    assert asks_for_location(hint)
    telegram.send_text(42, "/cancel")
    telegram.wait_text(42, "Exiting...")

    telegram.send_text(42, "/forget")
    telegram.wait_text(42, FORGOTTEN)
    count = len(telegram.messages(42))
    telegram.send_text(42, "/start")
    telegram.wait_messages(42, count + 2)
    question = telegram.messages(42)[-1]
    assert (question.text.strip(), question.buttons) == (CITY_PROMPT.strip(), [])  # no places


def test_a_picture_being_sent_at_kill_9_is_sent_after_the_restart(
    bots: Bots, telegram: FakeTelegram, openmeteo: FakeOpenMeteo, tmp_path: Path  # noqa: F811
) -> None:
    openmeteo.add_place("Enschede", 52.21833, 6.89583, country="Netherlands")
    bots.start("--flow", WEATHER)
    first_city_question(telegram, 42)
    telegram.send_text(42, "Enschede")
    question = telegram.wait_text(42, NEXT_PROMPT)
    telegram.fail("sendPhoto", status=502, times=100)  # the upload never gets through

    telegram.press(42, question, "forecast")
    telegram.wait_until(lambda: telegram.requests_to("sendPhoto"), what="an upload tried")
    bots.crash(settled=False)
    telegram.clear_faults()
    bots.restart()

    (picture,) = telegram.wait_until(lambda: telegram.pictures(42), what="the chart")
    assert picture.text == "The next 48 hours in Enschede"
    assert picture.photo is not None and picture.photo.startswith(b"\x89PNG")
