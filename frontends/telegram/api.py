"""The Bot API as the outbox needs it: :class:`TeleBotApi`, with failures classified."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import requests
import telebot
from telebot import apihelper, types

from frontends.telegram.media import ReplyKeyboard
from frontends.telegram.sending import (
    MAX_RETRY_AFTER,
    ChatGone,
    Keyboard,
    PermanentError,
    RetryAfter,
    SendError,
    TransientError,
)

log = logging.getLogger(__name__)

#: Seconds a call may take (connect and read) before it counts as failed.
SEND_TIMEOUT = 15
#: The same for ``sendMessage``, which is tried again then: a message Telegram took but
#: answered later than this goes twice. Long, since a request waiting holds up only its own
#: chat (see ``sending``); an edit or an answer sent twice does no such harm.
MESSAGE_TIMEOUT = 60
#: Seconds an upload (a picture) or a download (a user's photo) may take.
FILE_TIMEOUT = 60
#: The text of the reply-keyboard button that shares the user's location.
LOCATION_BUTTON = "Send my location"


def classify(error: Exception) -> SendError:
    """Turn a pyTelegramBotAPI or requests failure into retry-after, transient or permanent.

    The reasons never quote the exception's text where it may hold a URL
    (and so the token): requests' errors are named by their type only.
    """
    if isinstance(error, apihelper.ApiTelegramException):
        code = _status(error.error_code)
        description = str(error.description)[:200]  # a server's text: untrusted, bounded
        reason = f"HTTP {code}: {description}"
        answer = error.result_json if isinstance(error.result_json, dict) else {}
        parameters = answer.get("parameters")
        if not isinstance(parameters, dict):  # a misbehaving server: as if none were given
            parameters = {}
        if code == 429:
            return RetryAfter(_seconds(parameters.get("retry_after"), 1.0), reason)
        if code >= 500 or code == 0:
            return TransientError(reason)
        if code == 403 or (code == 400 and "chat not found" in description.lower()):
            return ChatGone(reason)
        return PermanentError(reason)
    if isinstance(error, apihelper.ApiHTTPException):
        status = _status(error.result.status_code)
        reason = f"HTTP {status} {error.result.reason or ''}".strip()
        if status == 429:
            return RetryAfter(_seconds(error.result.headers.get("Retry-After"), 1.0), reason)
        if status >= 500 or status == 408:
            return TransientError(reason)
        return PermanentError(reason)
    if isinstance(error, apihelper.ApiInvalidJSONException):
        return TransientError("the server's answer was not JSON")
    if isinstance(error, requests.Timeout):
        return TransientError("timed out")
    if isinstance(error, requests.ConnectionError):
        return TransientError("connection failed")
    if isinstance(error, requests.RequestException):
        return TransientError(type(error).__name__)
    return PermanentError(f"{type(error).__name__}")


def sent_id(message: object) -> int:
    """The id of a message Telegram says it took; 0 when its answer holds none.

    A 200 whose result is not a message (a misbehaving server or proxy) is
    taken as sent: sending again could say it twice. Only its buttons cannot
    be removed later, since their message is not known.
    """
    if isinstance(message, dict):  # the answer as Telegram gave it
        message_id = message.get("message_id")
    else:
        message_id = getattr(message, "message_id", None)
    if type(message_id) is int:
        return message_id
    log.warning("Telegram took a message but its answer names none (%.100r)", message)
    return 0


def error_code(error: apihelper.ApiTelegramException) -> int:
    """The Bot API error code of `error` as a number; 0 if the server sent none we can read."""
    return _status(error.error_code)


def _status(raw: object) -> int:
    """An HTTP status or Bot API error code as a number; 0 if it is none (a broken answer)."""
    try:
        return int(raw)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError, OverflowError):
        return 0


def _seconds(raw: object, default: float) -> float:
    """A ``retry_after``: a number of seconds, capped at :data:`MAX_RETRY_AFTER`.

    Anything else (text, ``NaN``, a negative number) counts as `default`;
    too large a number (``1e400`` is infinite) as the cap.
    """
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return default
    if not value >= 0:  # NaN too
        return default
    return min(value, MAX_RETRY_AFTER)


class TeleBotApi:
    """The outbox's :class:`~frontends.telegram.sending.BotApi`, over a ``TeleBot``."""

    def __init__(self, bot: telebot.TeleBot) -> None:
        self.bot = bot

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SendError:
            raise
        except Exception as error:
            raise classify(error) from None

    def send_message(
        self,
        chat_id: int,
        text: str,
        *,
        reply_to: int | None,
        keyboard: Keyboard | None,
        force_reply: bool,
    ) -> int:
        markup: types.InlineKeyboardMarkup | types.ForceReply | None = None
        if keyboard:
            markup = types.InlineKeyboardMarkup(
                [
                    [types.InlineKeyboardButton(label, callback_data=data)]
                    for label, data in keyboard
                ]
            )
        elif force_reply:
            markup = types.ForceReply(selective=True)
        return self._send_text(chat_id, text, markup, reply_to)

    def _send_text(
        self, chat_id: int, text: str, markup: types.JsonSerializable | None, reply_to: int | None
    ) -> int:
        """Send a text message; its id.

        pyTelegramBotAPI's own request, without TeleBot.send_message's
        Message.de_json of the answer: only its id is read, and that parse
        was ~7 % of the senders' CPU (measured with py-spy under
        bench/telegram_bench.py).
        """
        message = self._call(
            apihelper.send_message,
            self.bot.token,
            chat_id,
            text,
            reply_markup=markup,
            reply_parameters=_reply(reply_to),
            timeout=MESSAGE_TIMEOUT,
        )
        return sent_id(message)

    def send_chat_action(self, chat_id: int, action: str) -> None:
        self._call(self.bot.send_chat_action, chat_id, action, timeout=SEND_TIMEOUT)

    def edit_text(self, chat_id: int, message_id: int, text: str) -> None:
        self._call(
            self.bot.edit_message_text, text, chat_id=chat_id, message_id=message_id,
            timeout=SEND_TIMEOUT,
        )  # fmt: skip

    def remove_keyboard(self, chat_id: int, message_id: int) -> None:
        self._call(
            self.bot.edit_message_reply_markup, chat_id=chat_id, message_id=message_id,
            timeout=SEND_TIMEOUT,
        )  # fmt: skip

    def answer_callback(self, callback_id: str, text: str | None) -> None:
        self._call(self.bot.answer_callback_query, callback_id, text=text)

    def send_with_reply_keyboard(
        self, chat_id: int, text: str, *, reply_to: int | None, keyboard: ReplyKeyboard
    ) -> int:
        markup: types.ReplyKeyboardMarkup | types.ReplyKeyboardRemove
        if keyboard == "location":
            # selective: in a group, only the person asked (replied to) sees it
            markup = types.ReplyKeyboardMarkup(
                resize_keyboard=True, one_time_keyboard=True, selective=True
            )
            markup.add(types.KeyboardButton(LOCATION_BUTTON, request_location=True))
        else:
            markup = types.ReplyKeyboardRemove(selective=True)
        return self._send_text(chat_id, text, markup, reply_to)

    def send_photo(
        self, chat_id: int, png: bytes, *, caption: str | None, reply_to: int | None
    ) -> int:
        # A named file: pyTelegramBotAPI sends it multipart with a file name and type.
        upload = types.InputFile(io.BytesIO(png), file_name="picture.png")
        message = self._call(
            self.bot.send_photo,
            chat_id,
            upload,
            caption=caption,
            reply_parameters=_reply(reply_to),
            timeout=FILE_TIMEOUT,
        )
        return sent_id(message)

    def download(self, file_id: str, limit: int) -> bytes:
        """The file's bytes, at most `limit` of them (:class:`PermanentError` beyond)."""
        info = self._call(self.bot.get_file, file_id)
        if info.file_size is not None and info.file_size > limit:
            raise PermanentError(f"the file is larger than {limit} bytes")
        url = str(apihelper.FILE_URL or "https://api.telegram.org/file/bot{0}/{1}").format(
            self.bot.token, info.file_path
        )
        body: bytes = self._call(_fetch, url, limit)
        return body


def _reply(reply_to: int | None) -> types.ReplyParameters | None:
    if reply_to is None:
        return None
    return types.ReplyParameters(reply_to, allow_sending_without_reply=True)


def _fetch(url: str, limit: int) -> bytes:
    """GET `url` (which holds the token: errors never quote it), at most `limit` bytes."""
    with requests.get(url, timeout=(5, FILE_TIMEOUT), stream=True) as response:
        if response.status_code != 200:
            raise TransientError(f"HTTP {response.status_code} downloading a file")
        body = response.raw.read(limit + 1, decode_content=True)
    if len(body) > limit:
        raise PermanentError(f"the file is larger than {limit} bytes")
    return bytes(body)
