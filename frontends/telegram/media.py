"""More than text: pictures out, a "Send my location" keyboard, photos in.

Outbox jobs, like :mod:`frontends.telegram.sending`'s, for the calls beyond
plain messages. They run in the chat's lane, so they keep their place among
its messages, and are paced and retried the same way. The Bot API calls
they make are :class:`MediaApi`'s (``frontends.telegram.api.TeleBotApi``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from frontends.telegram.sending import (
    BotApi,
    ChatAction,
    Job,
    Outbox,
    SendText,
    split_text,
)

log = logging.getLogger("frontends.telegram.outbox")

#: A reply keyboard: ``"location"`` offers "Send my location", ``"remove"`` takes it away.
ReplyKeyboard = Literal["location", "remove"]

#: Telegram's limit on a photo's caption, in characters.
CAPTION_LIMIT = 1024
#: The largest photo a user sends that is downloaded for a flow (bytes).
PHOTO_LIMIT = 10 * 1024 * 1024


class MediaApi(BotApi, Protocol):
    """The Bot API calls beyond :class:`~frontends.telegram.sending.BotApi`."""

    def send_with_reply_keyboard(
        self, chat_id: int, text: str, *, reply_to: int | None, keyboard: ReplyKeyboard
    ) -> int:
        """Send a message with a reply keyboard (or its removal); return its message_id."""
        ...

    def send_photo(
        self, chat_id: int, png: bytes, *, caption: str | None, reply_to: int | None
    ) -> int:
        """Upload a PNG (multipart ``sendPhoto``); return the message's id."""
        ...

    def download(self, file_id: str, limit: int) -> bytes:
        """The bytes of a file a user sent (``getFile``, then the file URL)."""
        ...


@dataclass(eq=False)
class SendWithReplyKeyboard(SendText):
    """A message that also shows (or removes) the "Send my location" keyboard.

    A :class:`SendText`, so that it ends "typing" and is logged as a message
    if it finally fails; the inline keyboard of a Choose cannot go on the
    same message, so it is never given one.
    """

    reply_keyboard: ReplyKeyboard = "location"

    def run(self, api: BotApi) -> None:
        media: MediaApi = api  # type: ignore[assignment]
        message_id = media.send_with_reply_keyboard(
            self.chat_id, self.text, reply_to=self.reply_to, keyboard=self.reply_keyboard
        )
        if self.on_sent is not None:
            self.on_sent(message_id, self.text)


@dataclass(eq=False)
class SendPhoto(Job):
    """Upload a PNG with its caption: a flow's ``Picture``."""

    png: bytes = b""
    caption: str | None = None
    reply_to: int | None = None
    #: Called on the sender thread once it is out, or given up for good.
    on_done: Callable[[], None] | None = None
    paced = True

    def run(self, api: BotApi) -> None:
        media: MediaApi = api  # type: ignore[assignment]
        media.send_photo(self.chat_id, self.png, caption=self.caption, reply_to=self.reply_to)

    def describe(self) -> str:
        return f"picture ({len(self.png)} bytes, caption {self.caption!r})"


def send_with_reply_keyboard(
    outbox: Outbox,
    chat_id: int,
    text: str,
    keyboard: ReplyKeyboard,
    *,
    reply_to: int | None = None,
    on_done: Callable[[], None] | None = None,
) -> None:
    """Queue `text` (split as needed) with `keyboard` on its last piece.

    Every piece is part of the output `on_done` confirms.
    """
    pieces = split_text(text) or ["…"]
    for piece in pieces[:-1]:
        outbox.put(SendText(chat_id, piece, reply_to=reply_to, part_of=on_done))
        reply_to = None
    outbox.put(
        SendWithReplyKeyboard(
            chat_id,
            pieces[-1],
            reply_to=reply_to,
            on_done=on_done,
            reply_keyboard=keyboard,
            part_of=on_done,
        )
    )


def send_picture(
    outbox: Outbox,
    chat_id: int,
    png: bytes,
    caption: str | None,
    *,
    reply_to: int | None = None,
    on_done: Callable[[], None] | None = None,
) -> None:
    """Queue a picture: "upload_photo" shows while it goes, a long caption follows as text.

    All of it is part of the output `on_done` confirms.
    """
    rest = None
    if caption is not None and len(caption) > CAPTION_LIMIT:
        caption, rest = None, caption
    outbox.put(ChatAction(chat_id, "upload_photo", part_of=on_done))
    photo_done = None if rest else on_done  # else the caption confirms it, once it is out
    outbox.put(SendPhoto(chat_id, png, caption, reply_to, photo_done, part_of=on_done))
    if rest:
        outbox.send_text(chat_id, rest, on_done=on_done)
