"""A slow request holds up its own chat only, and button presses are answered at once.

The real bot (``python -m frontends.telegram``, eight senders by default)
against the fake Bot API, which holds one request until the test releases
it (``FakeTelegram.hold``): a barrier, so nothing here depends on timing
but the generous timeouts of the waits.
"""

from __future__ import annotations

from flows.weather import CITY_PROMPT, NEXT_PROMPT, PLACE_PROMPT
from tests import test_telegram_restart as restart
from tests.support.openmeteo_server import FakeOpenMeteo
from tests.test_telegram_restart import (
    EXITING,
    LONDON_CANADA,
    Bots,
    Telegram,
    answered,
    check_chats,
    start_at_place,
)

telegram = restart.telegram
bots = restart.bots


def test_while_one_chats_send_hangs_every_other_chat_is_answered(
    bots: Bots, telegram: Telegram, places: FakeOpenMeteo
) -> None:
    bots.start()
    slow, others = 4000, list(range(4001, 4040))
    held = telegram.hold("sendMessage", chat_id=slow)
    telegram.send_text(slow, "/start")
    assert held.arrived.wait(10), "the slow chat's prompt never came"

    # With each chat pinned to a sender thread, those pinned beside the slow
    # one waited behind it. (All within 10 s: the bot gives a request up only
    # much later, which on its own would free the others.)
    telegram.send_texts((chat, "/start") for chat in others)
    telegram.wait_until(
        lambda: all(telegram.texts(chat) == [CITY_PROMPT] for chat in others), 10, "the others"
    )
    assert telegram.texts(slow) == []  # still held: the others did not wait for it

    held.release()
    check_chats(telegram, {chat: [CITY_PROMPT, EXITING] for chat in [slow, *others]})


def test_a_press_is_answered_while_its_chat_waits_out_a_rate_limit_and_another_answer_hangs(
    bots: Bots, telegram: Telegram, places: FakeOpenMeteo
) -> None:
    bots.start()
    questions = start_at_place(telegram, 4101, 4102)
    # In a busy group several people press; one answer is slow to go through.
    slow_answer = telegram.hold("answerCallbackQuery")
    slow_press = telegram.press(4102, questions[4102], "London, Ontario, Canada")
    assert slow_answer.arrived.wait(10), "the first press was never answered"
    telegram.wait_text(4102, NEXT_PROMPT)  # its chat goes on meanwhile
    # Chat 4101's messages wait: Telegram asked for 20 s of quiet there.
    telegram.fail("sendMessage", 429, retry_after=20)
    telegram.send_text(4101, "/bogus")
    telegram.wait_until(lambda: any(r.fault == "429" for r in telegram.requests), 10, "the 429")
    count = len(telegram.texts(4101))

    press = telegram.press(4101, questions[4101], "London, Ontario, Canada")

    telegram.wait_until(lambda: telegram.answered(press), 10, "the press answered")
    assert len(telegram.texts(4101)) == count  # its messages are still waiting
    assert not telegram.answered(slow_press)
    slow_answer.release()
    telegram.wait_until(lambda: telegram.answered(slow_press), 10, "the slow answer")
    check_chats(
        telegram,
        {4102: [CITY_PROMPT, answered(PLACE_PROMPT, "London, Ontario, Canada"), *LONDON_CANADA,
                NEXT_PROMPT, EXITING]},
    )  # fmt: skip
