"""A fake Telegram Bot API for tests: real HTTP on 127.0.0.1, scripted users.

It speaks the Bot API the way pyTelegramBotAPI uses it (``POST`` or ``GET``
to ``/bot<token>/<method>``, parameters in the query string, a form or a JSON
body) for the methods a polling bot needs: ``getMe``, ``getUpdates`` (a real
long poll, honouring ``timeout`` and ``offset``), ``sendMessage``,
``sendChatAction``, ``setMyCommands``, ``deleteWebhook``,
``answerCallbackQuery``, ``editMessageReplyMarkup`` and ``editMessageText``::

    with FakeTelegram() as telegram:                 # or the `telegram` fixture
        env["TELEGRAM_API_URL"] = telegram.url
        telegram.send_text(42, "/start")             # user 42 writes to the bot
        prompt = telegram.wait_text(42, "Name a city")
        telegram.fail("sendMessage", 429, retry_after=1)   # the next send answers 429
        telegram.press(42, question, "quit")         # press a button of a bot message

Users' messages are queued as updates (``send_text``, ``send_photo``,
``press``, ``push`` for anything raw); what the bot sends is kept per chat as
:class:`Sent` messages, edits applied. Every request is recorded
(:attr:`requests`). The server is stopped, and all its threads joined, when
the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import http.client
import itertools
import json
import os
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

from tests.support.local_server import FakeServer, KeepAliveHandler, LocalServer

__all__ = [
    "BOT_ID", "SECRET", "TOKEN", "FakeTelegram", "Hold", "Request", "Sent", "bot_environment",
]  # fmt: skip

BOT_ID = 123456789
#: A well-formed token (it is never valid anywhere else).
TOKEN = f"{BOT_ID}:AAFakeTestTokenDoNotUse_0123456789abcdef"
#: The token's secret part: a bot's output must never hold it.
SECRET = TOKEN.split(":")[1]
BOT_USERNAME = "fake_weather_bot"

#: The project's root: a bot started as a subprocess imports ``frontends`` from here.
ROOT = Path(__file__).resolve().parent.parent.parent

T = TypeVar("T")

FaultKind = Literal["status", "drop", "raw"]


@dataclass(frozen=True)
class Request:
    """One request the server received."""

    method: str
    params: dict[str, Any]
    at: float  # time.monotonic() on arrival
    #: The injected fault it was answered with ("429", "502", "drop"...), if any.
    fault: str | None = None
    #: Who called: the path's first part before ``/bot<token>`` (see ``poll_overlaps``).
    caller: str | None = None


@dataclass
class Sent:
    """A message the bot sent, as it is now (edits applied)."""

    chat_id: int
    message_id: int
    text: str
    reply_to: int | None = None
    #: The inline keyboard as rows of button objects, or None.
    keyboard: list[list[dict[str, Any]]] | None = None
    force_reply: bool = False
    entities: list[dict[str, Any]] = field(default_factory=list)
    parse_mode: str | None = None
    edits: int = 0
    at: float = 0.0
    #: The whole reply_markup as sent (a reply keyboard, its removal...), or None.
    markup: dict[str, Any] | None = None
    #: For ``sendPhoto``: the uploaded file's bytes (the caption is `text`).
    photo: bytes | None = None

    @property
    def reply_keyboard(self) -> list[dict[str, Any]]:
        """The buttons of a reply keyboard (e.g. ``request_location``), row by row."""
        rows = (self.markup or {}).get("keyboard") or []
        return [button for row in rows for button in row]

    @property
    def removes_keyboard(self) -> bool:
        return bool((self.markup or {}).get("remove_keyboard"))

    @property
    def buttons(self) -> list[tuple[str, str]]:
        """(text, callback_data) of each button, row by row."""
        rows = self.keyboard or []
        return [(b.get("text", ""), b.get("callback_data", "")) for row in rows for b in row]


@dataclass
class Hold:
    """A request held by :meth:`FakeTelegram.hold`: `arrived` once it came, sent on release."""

    method: str
    params: dict[str, str]
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()

    def matches(self, method: str, params: dict[str, Any]) -> bool:
        return method == self.method and all(
            str(params.get(name)) == value for name, value in self.params.items()
        )


@dataclass
class _Fault:
    kind: FaultKind
    status: int = 0
    retry_after: int | None = None
    body: bytes = b""  # for "raw": the exact answer
    content_type: str = "application/json"


class TelegramError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# -- webhooks, as Telegram does them ------------------------------------------------------


@dataclass
class _Webhook:
    """A webhook set by ``setWebhook``, and the threads delivering to it."""

    url: str
    secret: str | None
    max_connections: int
    allowed_updates: list[str] | None
    busy_chats: set[object] = field(default_factory=set)
    busy_updates: set[int] = field(default_factory=set)
    not_before: dict[int, float] = field(default_factory=dict)  # update_id -> retry time
    failures: dict[int, int] = field(default_factory=dict)
    stopped: bool = False
    threads: list[threading.Thread] = field(default_factory=list)


def _chat_of(update: dict[str, Any]) -> object:
    """What Telegram keeps in order: the chat an update belongs to (else the update)."""
    for kind in ("message", "edited_message", "channel_post"):
        if kind in update:
            return update[kind]["chat"]["id"]
    query = update.get("callback_query")
    if query is not None and query.get("message"):
        return query["message"]["chat"]["id"]
    return ("update", update["update_id"])


class _WebhookMethods:
    """``setWebhook``, ``getWebhookInfo`` and the delivery, mixed into :class:`FakeTelegram`.

    After ``setWebhook`` queued updates are POSTed to the URL as JSON with
    the ``X-Telegram-Bot-Api-Secret-Token`` header, on up to
    ``max_connections`` threads, one at a time per chat and in order; an
    update is forgotten once answered 2xx, else sent again after a backoff
    (50 ms doubling to 1 s). ``getUpdates`` answers 409 meanwhile;
    ``deleteWebhook`` stops the delivery (pending updates stay for polling).
    """

    #: Backoff of a failed delivery: the first, and the most (s).
    FIRST_RETRY = 0.05
    MAX_RETRY = 1.0

    def _api_setWebhook(self: Any, params: dict[str, Any]) -> Any:
        url = str(params.get("url") or "")
        if not url:
            self._stop_webhook()
            return True
        if not re.match(r"^https?://", url):
            raise TelegramError(400, "Bad Request: bad webhook: HTTPS url must be provided")
        secret = params.get("secret_token")
        connections = _int(params.get("max_connections"), 40) or 40
        self._stop_webhook()
        hook = _Webhook(url, str(secret) if secret else None, connections,
                        _json(params.get("allowed_updates")))  # fmt: skip
        hook.threads = [
            threading.Thread(target=self._deliver, args=(hook,), name=f"fake-telegram-hook-{n}")
            for n in range(connections)
        ]
        with self._cond:
            self._webhook = hook
            self._cond.notify_all()
            for thread in hook.threads:  # started before another setWebhook can stop them
                thread.start()
        return True

    def _api_getWebhookInfo(self: Any, params: dict[str, Any]) -> Any:
        with self._cond:
            hook = self._webhook
            info: dict[str, Any] = {
                "url": hook.url if hook else "",
                "has_custom_certificate": False,
                "pending_update_count": len(self._updates),
            }
            if hook is not None:
                info["max_connections"] = hook.max_connections
                if hook.allowed_updates is not None:
                    info["allowed_updates"] = hook.allowed_updates
            return info

    def hold_deliveries(self: Any, chat_id: int) -> None:
        """Deliver nothing of `chat_id` by webhook until :meth:`release_deliveries`.

        As a chat's update retried by Telegram waits while other chats' go
        on: later updates of other chats arrive before it.
        """
        with self._cond:
            self._held_chats.add(chat_id)

    def release_deliveries(self: Any, chat_id: int) -> None:
        """Deliver `chat_id`'s updates again (see :meth:`hold_deliveries`)."""
        with self._cond:
            self._held_chats.discard(chat_id)
            self._cond.notify_all()
            self._deliverable.notify_all()

    def clear_faults(self: Any) -> None:
        """Forget the faults `fail` queued and not yet used."""
        with self._cond:
            self._faults.clear()

    def in_flight(self: Any) -> int:
        """Webhook deliveries posted and not yet answered."""
        with self._cond:
            return len(self._webhook.busy_updates) if self._webhook else 0

    @property
    def webhook(self: Any) -> str | None:
        """The webhook URL set, or None."""
        with self._cond:
            return self._webhook.url if self._webhook else None

    def _stop_webhook(self: Any, drop: bool = False) -> None:
        with self._cond:
            hook, self._webhook = self._webhook, None
            if drop:
                self._updates.clear()
            if hook is not None:
                hook.stopped = True
            self._cond.notify_all()
            self._deliverable.notify_all()
        if hook is None:
            return
        for thread in hook.threads:
            if thread is not threading.current_thread():
                thread.join(timeout=15)
                if thread.is_alive():
                    raise RuntimeError(f"{thread.name} did not stop")

    def _next_delivery(self: Any, hook: _Webhook) -> tuple[dict[str, Any] | None, float]:
        """The oldest update whose chat has nothing earlier in flight or waiting (under lock),
        else None and how long until a retry is due (at most 1 s)."""
        now = time.monotonic()
        wait = self.MAX_RETRY
        held: set[object] = set(hook.busy_chats) | self._held_chats
        for update in self._updates:
            chat = _chat_of(update)
            if chat in held:
                continue
            held.add(chat)  # later updates of this chat wait for this one
            if update["update_id"] in hook.busy_updates:
                continue
            due = hook.not_before.get(update["update_id"], 0.0)
            if due > now:
                wait = min(wait, due - now)
                continue
            return update, 0.0
        return None, wait

    def _deliver(self: Any, hook: _Webhook) -> None:
        # The fake's client side, as Telegram's servers post: kept-alive connections on
        # http.client (requests cost the fake about 1 ms of CPU per delivery).
        poster = _Poster(hook.url)
        headers = {"Content-Type": "application/json"}
        if hook.secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = hook.secret
        try:
            while True:
                with self._cond:
                    while True:
                        if hook.stopped or self._closed:
                            return
                        update, wait = self._next_delivery(hook)
                        if update is not None:
                            break
                        self._deliverable.wait(wait)
                    update_id, chat = update["update_id"], _chat_of(update)
                    hook.busy_updates.add(update_id)
                    hook.busy_chats.add(chat)
                status = poster.post(json.dumps(update).encode(), headers)
                with self._cond:
                    hook.busy_updates.discard(update_id)
                    hook.busy_chats.discard(chat)
                    self.deliveries.append((update_id, status))
                    if 200 <= status < 300:
                        self._updates = [u for u in self._updates if u["update_id"] != update_id]
                        hook.not_before.pop(update_id, None)
                        hook.failures.pop(update_id, None)
                    else:
                        failures = hook.failures[update_id] = hook.failures.get(update_id, 0) + 1
                        delay = min(self.MAX_RETRY, self.FIRST_RETRY * 2 ** (failures - 1))
                        hook.not_before[update_id] = time.monotonic() + delay
                    self._cond.notify_all()
        finally:
            poster.close()


class _Poster:
    """POSTs to one URL over a kept-alive connection; a failure is status 0 (sent again)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host, self.port = parts.hostname or "", parts.port or (443 if self.tls else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        """The HTTP status of one POST of `body` (0: no answer)."""
        try:
            if self.connection is None:
                kind = http.client.HTTPSConnection if self.tls else http.client.HTTPConnection
                self.connection = kind(self.host, self.port, timeout=3)
                self.connection.connect()
                self.connection.sock.settimeout(10)
            self.connection.request("POST", self.target, body=body, headers=headers)
            response = self.connection.getresponse()
            response.read()
            if response.will_close:
                self.close()
            return response.status
        except (OSError, http.client.HTTPException):
            self.close()
            return 0

    def close(self) -> None:
        """Close the connection (the next POST opens another)."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class FakeTelegram(_WebhookMethods, LocalServer):
    """The fake Bot API. Test-side methods may be called while it runs."""

    name = "fake-telegram"

    def __init__(
        self, token: str = TOKEN, username: str = BOT_USERNAME, *, tls: bool = False
    ) -> None:
        super().__init__(tls=tls)
        self.token = token
        self.username = username
        self.bot_id = int(token.split(":")[0])
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        #: Wakes webhook delivery threads (sharing `_cond`'s lock): one per update
        #: queued, not all 40 on every change, which cost the fake 2-3 ms of CPU
        #: per update and loaded the machine the measured bot runs on.
        self._deliverable = threading.Condition(lock)
        self._closed = False
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1000)
        self._callback_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._chats: dict[int, dict[str, Any]] = {}
        self._sent: dict[int, list[Sent]] = {}
        self._incoming: dict[tuple[int, int], dict[str, Any]] = {}
        self._answers: dict[str, str | None] = {}
        self._requests: list[Request] = []
        self._faults: dict[str, deque[_Fault]] = {}
        self._down: dict[str, _Fault] = {}  # lasting outages, by method (see `down`)
        self._holds: list[Hold] = []  # requests to hold, not yet come (see `hold`)
        self._held: list[Hold] = []  # every hold that came, released when the server stops
        self._confirmed = 0  # highest update_id confirmed by an offset
        self._polls = 0  # getUpdates calls so far: a newer one ends one still waiting
        #: Long polls waiting now: poll number -> (caller, whether its client is still there).
        self._waiting: dict[int, tuple[str | None, Callable[[], bool]]] = {}
        #: Each getUpdates that came while another caller's was waiting: (caller, others).
        #: A caller is the first part of the path when a bot's ``TELEGRAM_API_URL``
        #: ends in ``/<caller>`` (one per instance), so several bots can be told apart.
        self.poll_overlaps: list[tuple[str | None, list[str | None]]] = []
        #: The caller of each getUpdates, in order.
        self.pollers: list[str | None] = []
        self._local = threading.local()  # the request being served on this thread
        self.commands: list[dict[str, Any]] | None = None
        self._webhook: _Webhook | None = None  # set by setWebhook (see `webhook`)
        self._held_chats: set[object] = set()  # webhook deliveries held back (see `hold`)
        #: Each webhook delivery attempt: (update_id, HTTP status or 0 if none).
        self.deliveries: list[tuple[int, int]] = []
        #: Files users sent, by file_id (see add_file).
        self.files: dict[str, bytes] = {}

    # -- lifecycle -------------------------------------------------------------

    def _make_server(self) -> FakeServer[FakeTelegram]:
        return FakeServer(("127.0.0.1", 0), _Handler, self)

    def _opening(self) -> None:
        self._closed = False

    def _closing(self) -> None:
        with self._cond:  # wake long polls
            self._closed = True
            self._cond.notify_all()
            self._deliverable.notify_all()
            for hold in self._held:
                hold.release()
        self._stop_webhook()

    @property
    def url(self) -> str:
        """The value for ``TELEGRAM_API_URL``."""
        return self.base_url

    # -- users do things ---------------------------------------------------------

    def chat(self, chat_id: int, chat_type: str | None = None) -> dict[str, Any]:
        """The chat object (made on first use: private for ids > 0, else a group)."""
        with self._cond:
            chat = self._chats.get(chat_id)
            if chat is None or (chat_type is not None and chat["type"] != chat_type):
                kind = chat_type or ("private" if chat_id > 0 else "group")
                chat = {"id": chat_id, "type": kind}
                if kind == "private":
                    chat["first_name"] = f"User{chat_id}"
                else:
                    chat["title"] = f"Chat {chat_id}"
                self._chats[chat_id] = chat
            return dict(chat)

    @staticmethod
    def user(user_id: int) -> dict[str, Any]:
        return {
            "id": user_id,
            "is_bot": False,
            "first_name": f"User{user_id}",
            "language_code": "en",
        }

    def push(self, update: dict[str, Any]) -> int:
        """Queue a raw update (its update_id is assigned); returns the update_id."""
        with self._cond:
            update_id = self._new_update_id()
            self._updates.append({"update_id": update_id, **update})
            self._cond.notify_all()
            self._deliverable.notify()
            return update_id

    def _new_update_id(self) -> int:
        """The next update_id (under lock): above any the bot confirmed, as Telegram's are.

        A bot fed a huge id by :meth:`answer_raw` confirms past it; later
        updates are numbered after it rather than dropped as confirmed.
        """
        update_id = next(self._update_ids)
        if update_id <= self._confirmed:
            update_id = self._confirmed + 1
            self._update_ids = itertools.count(update_id + 1)
        return update_id

    def _next_message_id(self, chat_id: int) -> int:
        with self._cond:
            counter = self._message_ids.setdefault(chat_id, itertools.count(1))
            return next(counter)

    def message(
        self,
        chat_id: int,
        *,
        user_id: int | None = None,
        chat_type: str | None = None,
        reply_to: int | None = None,
        **content: Any,
    ) -> dict[str, Any]:
        """A message object from a user (not queued); `content` e.g. ``text=...``."""
        chat = self.chat(chat_id, chat_type)
        if user_id is None:
            if chat["type"] != "private":
                raise ValueError("a group message needs a user_id")
            user_id = chat_id
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "from": self.user(user_id),
            "chat": chat,
            "date": int(time.time()),
            **content,
        }
        text = content.get("text")
        if isinstance(text, str) and text.startswith("/"):
            length = len(text.split(maxsplit=1)[0])
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        if reply_to is not None:
            original = self._find_message(chat_id, reply_to)
            if original is not None:
                message["reply_to_message"] = original
        with self._cond:
            self._incoming[(chat_id, message["message_id"])] = message
        return message

    def send_text(self, chat_id: int, text: str, **kwargs: Any) -> dict[str, Any]:
        """A user writes `text` (a command if it starts with ``/``); returns the message."""
        message = self.message(chat_id, text=text, **kwargs)
        self.push({"message": message})
        return message

    def send_texts(self, chats_and_texts: Iterable[tuple[int, str]]) -> None:
        """Many users write at once (queued as one batch of updates)."""
        messages = [self.message(chat_id, text=text) for chat_id, text in chats_and_texts]
        with self._cond:
            for message in messages:
                self._updates.append({"update_id": self._new_update_id(), "message": message})
            self._cond.notify_all()
            self._deliverable.notify(len(messages))

    def send_photo(self, chat_id: int, **kwargs: Any) -> dict[str, Any]:
        photo = [{"file_id": "photo-1", "file_unique_id": "p1", "width": 90, "height": 90}]
        message = self.message(chat_id, photo=photo, caption="look", **kwargs)
        self.push({"message": message})
        return message

    def send_location(
        self, chat_id: int, latitude: float, longitude: float, **kwargs: Any
    ) -> dict[str, Any]:
        """A user shares a location (by the attachment menu or the keyboard's button)."""
        location = {"latitude": latitude, "longitude": longitude}
        message = self.message(chat_id, location=location, **kwargs)
        self.push({"message": message})
        return message

    def send_venue(
        self, chat_id: int, latitude: float, longitude: float, title: str, **kwargs: Any
    ) -> dict[str, Any]:
        """A user shares a venue (a place picked from the map, with its name)."""
        location = {"latitude": latitude, "longitude": longitude}
        venue = {"location": location, "title": title, "address": f"{title} street 1"}
        message = self.message(chat_id, location=location, venue=venue, **kwargs)
        self.push({"message": message})
        return message

    def add_file(self, file_id: str, data: bytes) -> None:
        """A file users can send (``getFile`` and the file URL serve it)."""
        with self._cond:
            self.files[file_id] = data

    def pictures(self, chat_id: int) -> list[Sent]:
        """The photos the bot uploaded to the chat (``Sent.photo`` holds the bytes)."""
        return [sent for sent in self.messages(chat_id) if sent.photo is not None]

    def send_sticker(self, chat_id: int, **kwargs: Any) -> dict[str, Any]:
        sticker = {
            "file_id": "sticker-1", "file_unique_id": "s1", "type": "regular",
            "width": 512, "height": 512, "is_animated": False, "is_video": False,
        }  # fmt: skip
        message = self.message(chat_id, sticker=sticker, **kwargs)
        self.push({"message": message})
        return message

    def send_voice(self, chat_id: int, **kwargs: Any) -> dict[str, Any]:
        voice = {"file_id": "voice-1", "file_unique_id": "v1", "duration": 2}
        message = self.message(chat_id, voice=voice, **kwargs)
        self.push({"message": message})
        return message

    def edit_user_message(self, message: dict[str, Any], text: str) -> None:
        """The user edits a message they sent (an ``edited_message`` update)."""
        edited = {**message, "text": text, "edit_date": int(time.time())}
        self.push({"edited_message": edited})

    def channel_post(self, chat_id: int, text: str) -> None:
        chat = self.chat(chat_id, "channel")
        post = {
            "message_id": self._next_message_id(chat_id),
            "sender_chat": chat,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        self.push({"channel_post": post})

    def member_update(self, chat_id: int, user_id: int, status: str = "kicked") -> None:
        """The bot's membership changed (a ``my_chat_member`` update)."""
        bot = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Weather",
            "username": self.username,
        }
        old = {"status": "member", "user": bot}
        new: dict[str, Any] = {"status": status, "user": bot}
        if status == "kicked":
            new["until_date"] = 0
        self.push(
            {
                "my_chat_member": {
                    "chat": self.chat(chat_id),
                    "from": self.user(user_id),
                    "date": int(time.time()),
                    "old_chat_member": old,
                    "new_chat_member": new,
                }
            }
        )

    def press(
        self,
        chat_id: int,
        sent: Sent,
        button: str | int,
        *,
        user_id: int | None = None,
        data: str | None = None,
    ) -> str:
        """A user presses a button of `sent` (by text or index); returns the query id.

        `data` overrides the button's callback data (e.g. a button long gone).
        """
        chat = self.chat(chat_id)
        if user_id is None:
            user_id = chat_id
        if data is None:
            buttons = sent.buttons
            if isinstance(button, int):
                data = buttons[button][1]
            else:
                matching = [d for label, d in buttons if label == button]
                if not matching:
                    raise AssertionError(f"no button {button!r} in {buttons!r}")
                data = matching[0]
        callback_id = str(next(self._callback_ids))
        with self._cond:
            self._answers[callback_id] = None
            # As Telegram does, the query carries the message as it is now.
            current = next(
                (m for m in self._sent.get(chat_id, []) if m.message_id == sent.message_id), sent
            )
            message = self._bot_message_json(chat, current)
        self.push(
            {
                "callback_query": {
                    "id": callback_id,
                    "from": self.user(user_id),
                    "message": message,
                    "chat_instance": f"instance-{chat_id}",
                    "data": data,
                }
            }
        )
        return callback_id

    # -- faults --------------------------------------------------------------------

    def fail(
        self,
        method: str,
        status: int | None = None,
        *,
        times: int = 1,
        retry_after: int | None = None,
        drop: bool = False,
    ) -> None:
        """Answer the next `times` calls of `method` with an error instead.

        ``status=429`` answers "Too Many Requests" with ``parameters.retry_after``
        (default 1); ``409`` a conflict with another poller; other 4xx a JSON
        error; 5xx an HTML error page, as a proxy in front of Telegram would.
        ``drop=True`` reads the request and closes the connection unanswered.
        """
        if not drop and status is None:
            raise ValueError("give a status or drop=True")
        fault = _Fault("drop") if drop else _Fault("status", int(status or 0), retry_after)
        with self._cond:
            self._faults.setdefault(method, deque()).extend(fault for _ in range(times))

    def misanswer(self, method: str, status: int, body: Any, *, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with `body` as JSON, however malformed.

        A misbehaving Bot API server or proxy: ``{"ok": True, "result": 7}`` for
        ``getUpdates``, an error whose ``parameters`` is not an object...
        """
        self.answer_raw(method, body, status=status, times=times)

    def down(self, method: str, status: int = 502, *, retry_after: int | None = None) -> None:
        """Answer every call of `method` with `status` until :meth:`up` (an outage)."""
        with self._cond:
            self._down[method] = _Fault("status", status, retry_after)

    def up(self, method: str) -> None:
        """End the outage of `method` that :meth:`down` began."""
        with self._cond:
            self._down.pop(method, None)


    def hold(self, method: str, **params: object) -> Hold:
        """Hold the next call of `method` with these `params` (``chat_id=42``) until released.

        A barrier for tests of slow requests: ``hold.arrived`` is set once the
        request came in; it is carried out as usual once ``hold.release()``
        is called (or after 60 s, or when the server stops: no test hangs).
        """
        hold = Hold(method, {name: str(value) for name, value in params.items()})
        with self._cond:
            self._holds.append(hold)
        return hold

    def _wait_if_held(self, method: str, params: dict[str, Any]) -> None:
        with self._cond:
            hold = next((h for h in self._holds if h.matches(method, params)), None)
            if hold is None:
                return
            self._holds.remove(hold)
            self._held.append(hold)
            hold.arrived.set()
            self._cond.notify_all()
        hold.released.wait(60)

    def answer_raw(
        self,
        method: str,
        body: Any,
        *,
        status: int = 200,
        content_type: str = "application/json",
        times: int = 1,
    ) -> None:
        """Answer the next `times` calls of `method` with exactly this, whatever it asks.

        `body` is sent as is if it is ``bytes``, else as its JSON (any value:
        ``{"ok": True, "result": "not a list"}``, ``[1, 2]``, ``None``...). So a
        test plays a broken or hostile Bot API server, or injects arbitrary
        update JSON: ``answer_raw("getUpdates", {"ok": True, "result": [...]})``
        hands those updates over once, outside the queue (never redelivered).
        A bot that confirms a huge id from them drops what is queued below it,
        as Telegram would; updates pushed after that are numbered above it.
        """
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        fault = _Fault("raw", status, body=raw, content_type=content_type)
        with self._cond:
            self._faults.setdefault(method, deque()).extend(fault for _ in range(times))

    # -- reading what happened -------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        with self._cond:
            return list(self._requests)

    def requests_to(self, method: str) -> list[Request]:
        return [r for r in self.requests if r.method == method]

    def messages(self, chat_id: int) -> list[Sent]:
        """What the bot sent to `chat_id`, oldest first (copies)."""
        with self._cond:
            return [Sent(**vars(m)) for m in self._sent.get(chat_id, [])]

    def texts(self, chat_id: int) -> list[str]:
        return [m.text for m in self.messages(chat_id)]

    def all_messages(self) -> dict[int, list[Sent]]:
        with self._cond:
            return {chat: [Sent(**vars(m)) for m in sent] for chat, sent in self._sent.items()}

    def answer_of(self, callback_id: str) -> str | None:
        """The text the bot answered a button press with (None: none yet, or no text)."""
        with self._cond:
            return self._answers.get(callback_id)

    def answered(self, callback_id: str) -> bool:
        with self._cond:
            return any(
                r.method == "answerCallbackQuery"
                and str(r.params.get("callback_query_id")) == callback_id
                and r.fault is None
                for r in self._requests
            )

    def unconfirmed(self) -> int:
        """Updates the bot has not confirmed yet (by polling with a higher offset)."""
        with self._cond:
            return len(self._updates)

    def wait_until(self, check: Callable[[], T | None], timeout: float = 10.0, what: str = "") -> T:
        """Wait until ``check()`` is truthy (re-checked on every change); return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = check()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
                self._cond.wait(min(left, 0.2))

    def wait_messages(self, chat_id: int, count: int, timeout: float = 10.0) -> list[Sent]:
        """Wait until the bot sent `chat_id` at least `count` messages; return them all."""
        try:
            return self.wait_until(
                lambda: m if len(m := self.messages(chat_id)) >= count else None,
                timeout,
                f"{count} messages in chat {chat_id}",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}; got {self.texts(chat_id)!r}") from None

    def wait_text(
        self, chat_id: int, pattern: str, timeout: float = 10.0, *, after: int = 0
    ) -> Sent:
        """Wait for a message to `chat_id` (from index `after` on) containing `pattern`.

        `pattern` is a substring, or a regular expression if it starts with ``re:``.
        """
        if pattern.startswith("re:"):
            regex = re.compile(pattern[3:])
            matches: Callable[[str], bool] = lambda text: bool(regex.search(text))  # noqa: E731
        else:
            matches = lambda text: pattern in text  # noqa: E731

        def find() -> Sent | None:
            return next((m for m in self.messages(chat_id)[after:] if matches(m.text)), None)

        try:
            return self.wait_until(find, timeout, f"{pattern!r} in chat {chat_id}")
        except AssertionError as error:
            raise AssertionError(f"{error}; got {self.texts(chat_id)!r}") from None

    # -- serving (on request threads) ---------------------------------------------------

    def _record(self, method: str, params: dict[str, Any], fault: str | None) -> None:
        with self._cond:
            caller = getattr(self._local, "caller", None)
            self._requests.append(Request(method, params, time.monotonic(), fault, caller))
            self._cond.notify_all()

    def _take_fault(self, method: str) -> _Fault | None:
        with self._cond:
            faults = self._faults.get(method)
            return faults.popleft() if faults else self._down.get(method)

    def _find_message(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        with self._cond:
            if (chat_id, message_id) in self._incoming:
                return self._incoming[(chat_id, message_id)]
            for sent in self._sent.get(chat_id, []):
                if sent.message_id == message_id:
                    return self._bot_message_json(self.chat(chat_id), sent)
        return None

    def _bot_message_json(self, chat: dict[str, Any], sent: Sent) -> dict[str, Any]:
        message: dict[str, Any] = {
            "message_id": sent.message_id,
            "from": {
                "id": self.bot_id,
                "is_bot": True,
                "first_name": "Weather",
                "username": self.username,
            },
            "chat": chat,
            "date": int(time.time()),
            "text": sent.text,
        }
        if sent.keyboard:
            message["reply_markup"] = {"inline_keyboard": sent.keyboard}
        if sent.edits:
            message["edit_date"] = int(time.time())
        return message

    def call(self, method: str, params: dict[str, Any]) -> Any:
        """Carry out a Bot API method; raises :class:`TelegramError`."""
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            raise TelegramError(404, "Not Found")
        return handler(params)

    def _api_getMe(self, params: dict[str, Any]) -> Any:
        return {
            "id": self.bot_id, "is_bot": True, "first_name": "Weather", "username": self.username,
            "can_join_groups": True, "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }  # fmt: skip

    def _api_deleteWebhook(self, params: dict[str, Any]) -> Any:
        self._stop_webhook(drop=str(params.get("drop_pending_updates")).lower() == "true")
        return True

    def _api_setMyCommands(self, params: dict[str, Any]) -> Any:
        commands = _json(params.get("commands"))
        if not isinstance(commands, list):
            raise TelegramError(400, "Bad Request: commands must be a list")
        with self._cond:
            self.commands = commands
        return True

    def _api_getUpdates(self, params: dict[str, Any]) -> Any:
        offset = _int(params.get("offset"), 0)
        limit = _int(params.get("limit"), 100) or 100
        wait = float(params.get("timeout") or 0)
        deadline = time.monotonic() + wait
        with self._cond:
            if self._webhook is not None:
                raise TelegramError(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first",
                )
            if offset > 0:
                self._confirmed = max(self._confirmed, offset - 1)
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self._polls += 1
            poll = self._polls
            caller = getattr(self._local, "caller", None)
            self.pollers.append(caller)
            others = [who for who, alive in self._waiting.values() if who != caller and alive()]
            if others:  # two instances polling at once: real Telegram ends one with 409
                self.poll_overlaps.append((caller, others))
            self._cond.notify_all()
            self._waiting[poll] = (caller, getattr(self._local, "alive", lambda: True))
            try:
                while not self._updates and not self._closed and self._webhook is None:
                    if self._polls != poll:  # as Telegram does: the newer call wins
                        raise TelegramError(
                            409,
                            "Conflict: terminated by other getUpdates request; "
                            "make sure that only one bot instance is running",
                        )
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                return list(self._updates[:limit])
            finally:
                del self._waiting[poll]

    def _chat_id(self, params: dict[str, Any]) -> int:
        chat_id = _int(params.get("chat_id"), None)
        if not isinstance(chat_id, int):
            raise TelegramError(400, "Bad Request: chat_id is empty")
        return chat_id

    def _api_sendMessage(self, params: dict[str, Any]) -> Any:
        chat_id = self._chat_id(params)
        text = str(params.get("text") or "")
        if not text.strip():
            raise TelegramError(400, "Bad Request: message text is empty")
        if utf16_len(text) > 4096:
            raise TelegramError(400, "Bad Request: message is too long")
        markup = _json(params.get("reply_markup")) or {}
        reply = _json(params.get("reply_parameters")) or {}
        sent = Sent(
            chat_id=chat_id,
            message_id=self._next_message_id(chat_id),
            text=text,
            reply_to=reply.get("message_id") or _int(params.get("reply_to_message_id"), None),
            keyboard=markup.get("inline_keyboard"),
            force_reply=bool(markup.get("force_reply")),
            entities=_json(params.get("entities")) or [],
            parse_mode=params.get("parse_mode"),
            at=time.monotonic(),
            markup=markup or None,
        )
        with self._cond:
            self._sent.setdefault(chat_id, []).append(sent)
            self._cond.notify_all()
            return self._bot_message_json(self.chat(chat_id), sent)

    def _api_sendPhoto(self, params: dict[str, Any]) -> Any:
        chat_id = self._chat_id(params)
        photo = params.get("photo")
        if not isinstance(photo, bytes):
            raise TelegramError(400, "Bad Request: there is no photo in the request")
        if not photo.startswith(b"\x89PNG") and not photo.startswith(b"\xff\xd8"):
            raise TelegramError(400, "Bad Request: IMAGE_PROCESS_FAILED")
        caption = str(params.get("caption") or "")
        if len(caption) > 1024:
            raise TelegramError(400, "Bad Request: message caption is too long")
        reply = _json(params.get("reply_parameters")) or {}
        sent = Sent(
            chat_id=chat_id,
            message_id=self._next_message_id(chat_id),
            text=caption,
            reply_to=reply.get("message_id"),
            at=time.monotonic(),
            photo=photo,
        )
        with self._cond:
            self._sent.setdefault(chat_id, []).append(sent)
            self._cond.notify_all()
            return self._bot_message_json(self.chat(chat_id), sent)

    def _api_getFile(self, params: dict[str, Any]) -> Any:
        file_id = str(params.get("file_id") or "")
        with self._cond:
            data = self.files.get(file_id)
        if data is None:
            raise TelegramError(400, "Bad Request: invalid file_id")
        return {"file_id": file_id, "file_unique_id": file_id, "file_size": len(data),
                "file_path": f"photos/{file_id}.jpg"}  # fmt: skip

    def _api_sendChatAction(self, params: dict[str, Any]) -> Any:
        self._chat_id(params)
        if not params.get("action"):
            raise TelegramError(400, "Bad Request: action is empty")
        return True

    def _edited(self, params: dict[str, Any]) -> Sent:
        chat_id = self._chat_id(params)
        message_id = _int(params.get("message_id"), None)
        for sent in self._sent.get(chat_id, []):
            if sent.message_id == message_id:
                return sent
        raise TelegramError(400, "Bad Request: message to edit not found")

    def _api_editMessageReplyMarkup(self, params: dict[str, Any]) -> Any:
        with self._cond:
            sent = self._edited(params)
            keyboard = (_json(params.get("reply_markup")) or {}).get("inline_keyboard")
            if keyboard == sent.keyboard:
                raise TelegramError(400, "Bad Request: message is not modified")
            sent.keyboard, sent.edits = keyboard, sent.edits + 1
            self._cond.notify_all()
            return self._bot_message_json(self.chat(sent.chat_id), sent)

    def _api_editMessageText(self, params: dict[str, Any]) -> Any:
        with self._cond:
            sent = self._edited(params)
            text = str(params.get("text") or "")
            if not text.strip():
                raise TelegramError(400, "Bad Request: message text is empty")
            keyboard = (_json(params.get("reply_markup")) or {}).get("inline_keyboard")
            if text == sent.text and keyboard == sent.keyboard:
                raise TelegramError(400, "Bad Request: message is not modified")
            sent.text, sent.keyboard, sent.edits = text, keyboard, sent.edits + 1
            self._cond.notify_all()
            return self._bot_message_json(self.chat(sent.chat_id), sent)

    def _api_answerCallbackQuery(self, params: dict[str, Any]) -> Any:
        callback_id = str(params.get("callback_query_id") or "")
        with self._cond:
            if callback_id not in self._answers:
                raise TelegramError(400, "Bad Request: query is too old or query ID is invalid")
            self._answers[callback_id] = params.get("text")
            self._cond.notify_all()
        return True


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """The fields of a multipart/form-data body: files as bytes, the rest as text."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        data = part.get_payload(decode=True) or b""
        fields[str(name)] = data if part.get_filename() else data.decode("utf-8")
    return fields


def _int(value: Any, default: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class _Handler(KeepAliveHandler):
    server: FakeServer[FakeTelegram]

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _params(self) -> dict[str, Any]:
        query = urlsplit(self.path).query
        params: dict[str, Any] = {
            k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()
        }
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if body and kind == "application/json":
            decoded = json.loads(body)
            if isinstance(decoded, dict):
                params.update(decoded)
        elif body and kind == "application/x-www-form-urlencoded":
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
            params.update({k: v[0] for k, v in form.items()})
        elif body and kind == "multipart/form-data":  # sendPhoto: files as bytes
            params.update(_multipart(self.headers.get("Content-Type") or "", body))
        return params

    def _serve_file(self, path: str) -> bool:
        """``/file/bot<token>/photos/<file_id>.jpg``: a file a user sent."""
        match = re.fullmatch(r"/file/bot([^/]+)/photos/([^/]+)\.jpg", path)
        if match is None:
            return False
        fake = self.server.fake
        fake._record("file", {"file_id": match[2]}, None if match[1] == fake.token else "401")
        with fake._cond:
            data = fake.files.get(match[2]) if match[1] == fake.token else None
        if data is None:
            self.respond(404, b"Not Found", "text/plain")
        else:
            self.respond(200, data, "image/jpeg")
        return True

    def _serve(self) -> None:
        fake = self.server.fake
        path = urlsplit(self.path).path
        fake._local.caller = None
        if self._serve_file(path):
            return
        match = re.fullmatch(r"(?:/([A-Za-z0-9_-]+))?/bot([^/]+)/([A-Za-z]+)", path)
        try:
            params = self._params()
        except ValueError:
            self._answer(
                400, {"ok": False, "error_code": 400, "description": "Bad Request: bad body"}
            )
            return
        if match is None:
            self._answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})
            return
        caller, token, method = match.groups()
        fake._local.caller, fake._local.alive = caller, self._client_connected
        if token != fake.token:
            fake._record(method, params, "401")
            self._answer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
            return
        fake._wait_if_held(method, params)
        fault = fake._take_fault(method)
        if fault is not None:
            self._fault(method, params, fault)
            return
        fake._record(method, params, None)
        try:
            result = fake.call(method, params)
        except TelegramError as error:
            self._answer(
                error.status,
                {"ok": False, "error_code": error.status, "description": error.description},
            )
            return
        self._answer(200, {"ok": True, "result": result})

    def _client_connected(self) -> bool:
        """Whether the client still holds the connection (a killed one's is closed)."""
        sock = self.connection
        if not isinstance(sock, socket.socket) or hasattr(sock, "context"):  # TLS: cannot peek
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return not readable or sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except (OSError, ValueError):
            return False

    def _fault(self, method: str, params: dict[str, Any], fault: _Fault) -> None:
        fake = self.server.fake
        if fault.kind == "raw":
            fake._record(method, params, f"raw {fault.status}")
            self.respond(fault.status, fault.body, fault.content_type)
            return
        if fault.kind == "drop":
            fake._record(method, params, "drop")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        status = fault.status
        fake._record(method, params, str(status))
        if status == 429:
            retry_after = fault.retry_after if fault.retry_after is not None else 1
            self._answer(
                429,
                {
                    "ok": False,
                    "error_code": 429,
                    "description": f"Too Many Requests: retry after {retry_after}",
                    "parameters": {"retry_after": retry_after},
                },
            )
        elif status == 409:
            description = (
                "Conflict: terminated by other getUpdates request; "
                "make sure that only one bot instance is running"
            )
            self._answer(409, {"ok": False, "error_code": 409, "description": description})
        elif status >= 500:
            page = f"<html><body><h1>{status} Bad Gateway</h1></body></html>".encode()
            self.respond(status, page, "text/html")
        else:
            self._answer(status, {"ok": False, "error_code": status, "description": "Bad Request"})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        self.respond(status, json.dumps(body).encode(), "application/json")


def bot_environment(telegram: FakeTelegram, token: str | None = TOKEN) -> dict[str, str]:
    """The environment for a bot subprocess that talks to `telegram` (no proxy, our token).

    It polls: a webhook URL in the caller's environment is left out.
    """
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("TELEGRAM_BOT_API_KEY", None)
    env.pop("TELEGRAM_BOT_TOKEN", None)
    env.pop("TELEGRAM_WEBHOOK_URL", None)
    if token is not None:
        env["TELEGRAM_BOT_TOKEN"] = token
    env["TELEGRAM_API_URL"] = telegram.url
    env["NO_PROXY"] = "127.0.0.1"
    env["PYTHONPATH"] = str(ROOT)
    return env
