"""The outbox letting go of conversations that move to another instance (``Outbox.settle``).

In process, against a Bot API stand-in whose sends to one chat can be held
at a barrier: what is in flight is waited for and confirmed (with the rest of
an output in several messages that has begun), what is queued is left
unconfirmed for the new owner, other conversations (even in the same group
chat) go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from frontends.telegram.media import send_picture, send_with_reply_keyboard
from frontends.telegram.sending import (
    Confirmation,
    Outbox,
    Pacing,
    Retrying,
    TransientError,
    split_text,
)
from tests.support.fake_bot_api import FakeBotApi
from tests.support.fake_telegram import Hold

GROUP = -500


@pytest.fixture
def api() -> FakeBotApi:
    return FakeBotApi()


@pytest.fixture
def outbox(api: FakeBotApi) -> Iterator[Outbox]:
    outbox = Outbox(api, senders=2, pacing=Pacing.off(), retrying=Retrying(0.01, 0.05))
    outbox.start()
    yield outbox
    api.release_all()
    outbox.close(timeout=1.0)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("telegram-sender")]


def settle_while_held(
    outbox: Outbox, held: Hold, confirmed: list[int], leaving: str = "-500:1"
) -> tuple[bool, list[int]]:
    """Once `held`'s send is in flight, settle `leaving` on a thread and release it.

    Returns what settle returned, and what was confirmed when it returned.
    """
    assert held.arrived.wait(10)
    result: list[tuple[bool, list[int]]] = []

    def settle() -> None:
        settled = outbox.settle(lambda key: key == leaving, timeout=10)
        result.append((settled, list(confirmed)))

    thread = threading.Thread(target=settle, name="test-settle")
    thread.start()
    held.release()
    thread.join(10)
    [outcome] = result
    return outcome


def test_a_send_in_flight_is_waited_for_and_confirmed_the_queued_ones_are_left(
    api: FakeBotApi, outbox: Outbox
) -> None:
    confirmed: list[int] = []
    held = api.hold(GROUP)
    # Two people in one group: "-500:1" leaves (its shard moves), "-500:2" stays.
    for receipt, (key, text) in enumerate(
        [("-500:1", "in flight"), ("-500:1", "queued"), ("-500:2", "stays"), ("-500:1", "also")]
    ):
        outbox.send_text(GROUP, text, on_done=Confirmation(key, receipt, confirmed.append))

    settled, confirmed_then = settle_while_held(outbox, held, confirmed)

    assert settled and 0 in confirmed_then  # it returned once the send in flight was confirmed
    api.wait_for("stays")
    outbox.close(timeout=1.0)
    assert api.texts(GROUP) == ["in flight", "stays"]
    assert confirmed == [0, 2]  # "queued" and "also" are the new owner's to send


LONG_TEXT = "\n".join(["x" * 99] * 50)  # two messages
LONG_CAPTION = "c" * 2000  # over a caption's limit: the picture, then the caption as text


@pytest.mark.parametrize("text", ["fails", LONG_TEXT], ids=["one message", "several"])
def test_a_send_in_flight_that_fails_for_now_is_left_to_the_new_owner_with_its_output(
    api: FakeBotApi, outbox: Outbox, text: str
) -> None:
    confirmed: list[int] = []
    held = api.hold(GROUP)
    api.failures[GROUP] = [TransientError("HTTP 502")]  # once it is released
    outbox.send_text(GROUP, text, on_done=Confirmation("-500:1", 1, confirmed.append))

    assert settle_while_held(outbox, held, confirmed) == (True, [])
    outbox.send_text(GROUP, "next", on_done=Confirmation("-500:2", 2, confirmed.append))
    api.wait_for("next")

    assert api.texts(GROUP) == ["next"] and confirmed == [2]


def long_text_with_a_reply_keyboard(outbox: Outbox, on_done: Confirmation) -> None:
    send_with_reply_keyboard(outbox, GROUP, LONG_TEXT, "location", on_done=on_done)


def picture_with_a_long_caption(outbox: Outbox, on_done: Confirmation) -> None:
    send_picture(outbox, GROUP, b"png", LONG_CAPTION, on_done=on_done)


@pytest.mark.parametrize("queue", [long_text_with_a_reply_keyboard, picture_with_a_long_caption])
def test_every_message_of_an_output_in_several_is_left_to_the_new_owner(
    api: FakeBotApi, outbox: Outbox, queue: Callable[[Outbox, Confirmation], None]
) -> None:
    confirmed: list[int] = []
    held = api.hold(GROUP)
    outbox.send_text(GROUP, "in flight", on_done=Confirmation("-500:1", 0, confirmed.append))
    queue(outbox, Confirmation("-500:1", 1, confirmed.append))
    outbox.send_text(GROUP, "stays", on_done=Confirmation("-500:2", 2, confirmed.append))

    settled, confirmed_then = settle_while_held(outbox, held, confirmed)
    api.wait_for("stays")
    outbox.close(timeout=1.0)

    assert settled and 0 in confirmed_then
    # The new owner sends all of output 1 (it is unconfirmed): none of it may go from here.
    assert api.texts(GROUP) == ["in flight", "stays"] and confirmed == [0, 2]


def test_an_output_in_several_messages_under_way_is_finished_before_it_is_let_go(
    api: FakeBotApi, outbox: Outbox
) -> None:
    confirmed: list[int] = []
    held = api.hold(GROUP)  # its first message is in flight
    outbox.send_text(GROUP, LONG_TEXT, on_done=Confirmation("-500:1", 0, confirmed.append))

    # Left half sent, the new owner would send all of it again: the first message twice.
    assert settle_while_held(outbox, held, confirmed) == (True, [0])
    assert "\n".join(api.texts(GROUP)) == LONG_TEXT


def test_an_output_under_way_not_finished_in_time_is_left_to_the_new_owner(
    api: FakeBotApi, outbox: Outbox
) -> None:
    confirmed: list[int] = []
    held = api.hold(GROUP)
    outbox.send_text(GROUP, LONG_TEXT, on_done=Confirmation("-500:1", 1, confirmed.append))
    assert held.arrived.wait(10)

    assert not outbox.settle(lambda key: key == "-500:1", timeout=0.05)
    held.release()
    outbox.send_text(GROUP, "next", on_done=Confirmation("-500:2", 2, confirmed.append))
    api.wait_for("next")

    # The one in flight may go twice (as the README says); the rest goes from the new owner only.
    assert api.texts(GROUP) == [split_text(LONG_TEXT)[0], "next"] and confirmed == [2]
