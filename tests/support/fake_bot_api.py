"""A stand-in for the bot's Bot API adapter, for testing the outbox in process.

:class:`FakeBotApi` has the calls the outbox makes (``frontends.telegram.sending.BotApi``
and the sends of ``frontends.telegram.media.MediaApi``) without any HTTP: it
records what is sent, fails a chat's sends as scripted, and holds a chat's next
send at a barrier until the test releases it.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

from frontends.telegram.media import ReplyKeyboard
from frontends.telegram.sending import Keyboard
from tests.support.fake_telegram import Hold

#: How long a held send waits for its release before the test fails.
HOLD_AT_MOST = 10.0


class Sent(NamedTuple):
    """One message taken: its chat, its text (a picture's is ``[picture] caption``), when."""

    chat_id: int
    text: str
    at: float  # time.monotonic()


class FakeBotApi:
    """Records sends; scripted failures and barriers per chat.

    A send to a chat first waits at its :meth:`hold`, if any, then raises
    the chat's next scripted failure (``failures[chat_id]``), if any, and is
    recorded otherwise.
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.sent: list[Sent] = []
        #: The errors the next sends to a chat raise, in order.
        self.failures: dict[int, list[Exception]] = {}
        self._holds: list[Hold] = []

    def hold(self, chat_id: int) -> Hold:
        """Hold the next send to `chat_id` until ``release()`` (``arrived`` once it came)."""
        hold = Hold("send", {"chat_id": str(chat_id)})
        with self.changed:
            self._holds.append(hold)
        return hold

    def release_all(self) -> None:
        """Release every hold, come or not (so that no sender is left waiting)."""
        with self.changed:
            for hold in self._holds:
                hold.release()

    def send_message(
        self,
        chat_id: int,
        text: str,
        *,
        reply_to: int | None,
        keyboard: Keyboard | None,
        force_reply: bool,
    ) -> int:
        return self._take(chat_id, text)

    def send_with_reply_keyboard(
        self, chat_id: int, text: str, *, reply_to: int | None, keyboard: ReplyKeyboard
    ) -> int:
        return self._take(chat_id, text)

    def send_photo(
        self, chat_id: int, png: bytes, *, caption: str | None, reply_to: int | None
    ) -> int:
        return self._take(chat_id, f"[picture] {caption or ''}".rstrip())

    def send_chat_action(self, chat_id: int, action: str) -> None:
        pass

    def edit_text(self, chat_id: int, message_id: int, text: str) -> None:
        pass

    def remove_keyboard(self, chat_id: int, message_id: int) -> None:
        pass

    def answer_callback(self, callback_id: str, text: str | None) -> None:
        pass

    def texts(self, chat_id: int) -> list[str]:
        """What `chat_id` was sent, in order."""
        with self.changed:
            return [sent.text for sent in self.sent if sent.chat_id == chat_id]

    def wait(self, count: int, timeout: float = 5.0) -> None:
        """Wait until `count` messages were sent in all."""
        with self.changed:
            taken = self.changed.wait_for(lambda: len(self.sent) >= count, timeout)
            assert taken, f"only {len(self.sent)} of {count} sent"

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        """Wait until a message with `text` was sent."""
        with self.changed:
            found = self.changed.wait_for(lambda: any(s.text == text for s in self.sent), timeout)
            assert found, f"{text!r} never sent"

    def _take(self, chat_id: int, text: str) -> int:
        """Wait at the chat's hold, fail as scripted, or record; the new message's id."""
        self._wait_if_held(chat_id)
        with self.changed:
            failures = self.failures.get(chat_id)
            if failures:
                raise failures.pop(0)
            self.sent.append(Sent(chat_id, text, time.monotonic()))
            self.changed.notify_all()
            return len(self.sent)

    def _wait_if_held(self, chat_id: int) -> None:
        with self.changed:
            waiting = (h for h in self._holds if not h.arrived.is_set())
            hold = next((h for h in waiting if h.matches("send", {"chat_id": chat_id})), None)
            if hold is None:
                return
            hold.arrived.set()
        assert hold.released.wait(HOLD_AT_MOST), f"the send to chat {chat_id} was never released"
