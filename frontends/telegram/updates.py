"""Updates in: handlers that turn messages and button presses into engine events."""

from __future__ import annotations

import functools
import logging
import re
from typing import Protocol

from telebot import types, util

from engine.commands import Location, Photo
from engine.frontend import Key, Notice
from engine.scheduler import Scheduler
from engine.sources import Taken
from frontends.telegram.media import PHOTO_LIMIT, MediaApi
from frontends.telegram.routing import (
    PressAnswer,
    Registry,
    Reply,
    Route,
    conversation_key,
    is_group,
    unbutton,
)
from frontends.telegram.sending import AnswerCallback, Outbox, SendError
from frontends.telegram.texts import (
    FORGOTTEN,
    NOTICES,
    PHOTO_FAILED,
    PRESS_ENDED,
    PRESS_NOT_YOURS,
    PRESS_STALE,
    TEXT_PLEASE,
    UNKNOWN_COMMAND,
)
from frontends.telegram.users import Users

log = logging.getLogger(__name__)

#: Message kinds a person sends instead of text (they get :data:`TEXT_PLEASE`).
#: Service messages (someone joined, a pinned message...) are ignored.
NON_TEXT = frozenset(
    {
        "animation", "audio", "contact", "dice", "document", "game", "live_photo", "location",
        "photo", "poll", "sticker", "story", "venue", "video", "video_note", "voice",
    }
)  # fmt: skip
#: The message kinds handled at all: text, media and service messages. A kind
#: pyTelegramBotAPI does not know (so names no content type) is ignored.
MESSAGE_KINDS = frozenset(util.content_type_media) | frozenset(util.content_type_service) | NON_TEXT


#: Update ids increase by one per update (not always in order of arrival: a
#: webhook gets different chats' updates at once), so one the engine counts as
#: taken (see engine.sources) was taken before, and is skipped. Not if it is
#: far below the highest taken, though: after a week without updates Telegram
#: starts again from a random id, which must be taken.
REDELIVERY_WINDOW = 1_000_000


def new_update(update_id: int, taken: Taken) -> bool:
    """Whether `update_id` is new, given the ids taken (the engine's source policy)."""
    if update_id not in taken:
        return True
    highest = taken.highest
    return highest is not None and update_id <= highest - REDELIVERY_WINDOW


#: Callback data as the bot makes it: question tag, option number, owner in a group.
_OUR_DATA = re.compile(r"[0-9a-f]{1,32}:[0-9]{1,3}(:[0-9]{1,20})?", re.ASCII)


class EngineEvent(Protocol):
    """A scheduler call (``begin``, ``send``, ``cancel``, ``post``) still missing its source.

    A handler returns it; :meth:`Updates.handle` makes it with the update's
    id, so each update's id goes to the scheduler exactly once.
    """

    def __call__(self, *, source: int | None) -> None: ...


class Updates:
    """The handlers of updates: run on the polling thread, one update at a time."""

    def __init__(
        self,
        scheduler: Scheduler,
        outbox: Outbox,
        registry: Registry,
        help_text: str,
        users: Users | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.outbox = outbox
        self.registry = registry
        self.help_text = help_text
        #: Who wrote, for the flows' ``Who`` (shared with the frontend).
        self.users = users if users is not None else Users()
        self.username = ""  # the bot's, set by the poller from getMe
        self.bot_id: int | None = None

    def handle(self, update: types.Update) -> None:
        """Hand one update to its handler (other kinds are ignored) and its effect to the engine.

        The update's id goes to the scheduler with the event it caused, or
        alone, so that the journal knows it was taken, in whatever order ids
        arrive.
        """
        event: EngineEvent | None = None
        try:
            if not _well_formed(update):  # a misbehaving server's: taken, and nothing else
                log.warning(
                    "update %s is malformed (ids that are not numbers); skipped", update.update_id
                )
            elif update.message is not None and update.message.content_type in MESSAGE_KINDS:
                event = self.on_message(update.message)
            elif update.callback_query is not None:
                event = self.on_press(update.callback_query)
        finally:
            (event or self._taken_alone)(source=update.update_id)

    def _taken_alone(self, *, source: int | None) -> None:
        self.scheduler.post(None, source=source)

    def taken(self, update_id: int) -> bool:
        """Handled before: after a crash Telegram sends what it was not told of."""
        return self.scheduler.already_taken(update_id)

    def _reply(self, key: Key, text: str) -> EngineEvent:
        """A reply of the bot's own, in its place among the conversation's messages.

        Journaled like a flow's output (``Scheduler.say``): a crash does not lose it.
        """
        return functools.partial(self.scheduler.say, key, Reply(text))

    def on_message(self, message: types.Message) -> EngineEvent | None:
        """A message: text for a conversation, a command, or something else."""
        chat, person = message.chat, message.from_user
        if chat is None or chat.type not in ("private", "group", "supergroup"):
            log.debug("ignoring a message in a %s", getattr(chat, "type", "chat of no type"))
            return None
        if person is None or person.is_bot:
            log.debug("ignoring a message from a bot or from no one in chat %s", chat.id)
            return None
        group = is_group(chat.type)
        key = conversation_key(chat.id, person.id, group)
        if group:
            name = person.first_name if isinstance(person.first_name, str) else None
            route = Route(chat.id, person.id, message.message_id, name or None)
        else:
            route = Route(chat.id)
        self.registry.saw(key, route)
        self.users.saw(
            key,
            user_id=person.id,
            first_name=person.first_name,
            language=person.language_code,
            private=not group,
        )

        if message.content_type in ("location", "venue", "photo"):
            answer = self._answer_of(key, group, message)
            if answer is not None:
                return answer
        if message.content_type != "text" or message.text is None:
            return self._not_text(key, group, message.content_type)
        text: str = message.text
        if text.startswith("/"):
            return self._command(key, group, text)
        if group and not self._addressed_to_me(key, message):
            log.debug("ignoring group chatter in chat %s", chat.id)
            return None
        return functools.partial(self.scheduler.send, key, text)

    def _addressed_to_me(self, key: Key, message: types.Message) -> bool:
        """In a group: part of a conversation, a reply to the bot, or mentioning it."""
        if self.registry.is_active(key):
            return True
        replied = message.reply_to_message
        if (
            replied is not None
            and replied.from_user is not None
            and self.bot_id is not None
            and replied.from_user.id == self.bot_id
        ):
            return True
        return (
            bool(self.username)
            and f"@{self.username}".casefold() in (message.text or "").casefold()
        )

    def _command(self, key: Key, group: bool, text: str) -> EngineEvent | None:
        word = text.split(maxsplit=1)[0][1:]
        name, _, target = word.partition("@")
        if target and self.username and target.casefold() != self.username.casefold():
            log.debug("ignoring /%s addressed to @%s", name, target)
            return None
        name = name.casefold()
        if name == "start":
            # t.me/<bot>?start=berlin arrives as "/start berlin": the flow's User.start
            payload = text.split(maxsplit=1)[1].strip() if len(text.split(maxsplit=1)) > 1 else ""
            self.users.started(key, payload or None)
            return functools.partial(self.scheduler.begin, key)
        if name == "forget":
            return functools.partial(self._forget, key, self._reply(key, FORGOTTEN))
        if name == "cancel":
            return functools.partial(self.scheduler.cancel, key)
        if name == "help":
            return self._reply(key, self.help_text)
        if not group or target:
            return self._reply(key, UNKNOWN_COMMAND.format(command=f"/{name}"))
        return None

    def _forget(self, key: Key, reply: EngineEvent, *, source: int | None) -> None:
        """``/forget``: the user's memory goes, then the reply (in that order)."""
        self.scheduler.forget(key, source=source)
        reply(source=None)

    def _answer_of(self, key: Key, group: bool, message: types.Message) -> EngineEvent | None:
        """A shared location, a venue or a photo as an answer; ``None``: treat as non-text."""
        if group and not self.registry.is_active(key):
            return None  # group chatter
        point = message.location or (message.venue.location if message.venue else None)
        if point is not None:
            try:
                location = Location(point.latitude, point.longitude)
            except (TypeError, ValueError):
                log.debug("ignoring a location that is not one: %r", point)
                return None
            return functools.partial(self.scheduler.send, key, location)
        if message.photo and Photo in self.users.accepts(key):
            return self._photo(key, message)
        return None

    def _photo(self, key: Key, message: types.Message) -> EngineEvent:
        """Download the photo (its largest size within the limit) for a question taking photos.

        On the polling thread, so updates stay in order; photos are only
        fetched for a question that asks for one.
        """
        sizes = [size for size in message.photo or [] if (size.file_size or 0) <= PHOTO_LIMIT]
        best = max(sizes, key=lambda size: size.width * size.height, default=None)
        api: MediaApi = self.outbox.api  # type: ignore[assignment]
        try:
            if best is None:
                raise SendError("the photo is too large")
            data = api.download(best.file_id, PHOTO_LIMIT)
        except SendError as error:
            log.warning("chat %s: could not download a photo: %s", message.chat.id, error)
            return self._reply(key, PHOTO_FAILED)
        return functools.partial(self.scheduler.send, key, Photo(data, message.caption or None))

    def _not_text(self, key: Key, group: bool, kind: str | None) -> EngineEvent | None:
        if kind not in NON_TEXT:
            log.debug("ignoring a %s message", kind)
            return None
        if self.registry.is_active(key):
            accepts = self.users.accepts(key)
            if accepts and str not in accepts and Location in accepts:
                hint = NOTICES.get(Notice.SEND_LOCATION, Notice.SEND_LOCATION.value)
                return self._reply(key, hint)
            return self._reply(key, TEXT_PLEASE)
        if not group:
            return self._reply(key, NOTICES[Notice.NOT_STARTED])
        return None

    def on_press(self, press: types.CallbackQuery) -> EngineEvent | None:
        """A button pressed: the answer to an open question, or one that is over."""
        message = press.message
        chat = getattr(message, "chat", None)
        if message is None or chat is None:
            self.outbox.put(AnswerCallback(0, callback_id=press.id, text=PRESS_ENDED))
            return None
        group = is_group(chat.type)
        key = conversation_key(chat.id, press.from_user.id, group)
        pressed: int = message.message_id
        person = press.from_user
        self.users.saw(
            key, user_id=person.id, first_name=person.first_name,
            language=person.language_code, private=not group,
        )  # fmt: skip

        def answer(text: str | None) -> None:  # journaled, sent at once (not paced)
            self.scheduler.say(key, PressAnswer(press.id, text))

        tag, number, owner = [*(press.data or "").split(":", 2), "", ""][:3]
        if owner and owner != str(press.from_user.id):
            known = owner.isascii() and owner.isdecimal()
            name = self.registry.route(f"{chat.id}:{owner}").name if known else None
            answer(PRESS_NOT_YOURS.format(name=name or "someone else"))
            return None
        question = self.registry.question(key)
        # Callback data comes from the client: anything may arrive ("1²", 64 bytes
        # of noise). Only data of our own form names a question; a press that
        # names none changes nothing, least of all the open question's buttons.
        ours = _OUR_DATA.fullmatch(press.data or "") is not None
        if (
            question is None
            or not ours
            or not question.named(tag)
            or int(number) >= len(question.options)
        ):
            answer(PRESS_STALE if self.registry.is_active(key) else PRESS_ENDED)
            shows_open = question is not None and (
                question.named(tag) or question.message_id == pressed
            )
            if ours and not shows_open and getattr(message, "reply_markup", None) is not None:
                self.scheduler.say(key, unbutton(chat.id, pressed))
            return None
        option = question.options[int(number)]
        self.registry.close(key)
        answer(None)
        if group:  # keep answering this person where they are
            route = self.registry.route(key)
            self.registry.saw(
                key, Route(chat.id, press.from_user.id, route.reply_to, press.from_user.first_name)
            )
        # The pressed message shows the choice. (After a restart, or with an
        # older copy of the same question, it need not be the latest one.)
        self.scheduler.say(key, unbutton(chat.id, pressed, getattr(message, "text", None), option))
        if question.message_id not in (None, pressed):
            self.scheduler.say(key, unbutton(chat.id, question.message_id))
        return functools.partial(self.scheduler.send, key, option)


def _well_formed(update: types.Update) -> bool:
    """Whether the ids an update's handlers rely on are numbers, and its text is text.

    pyTelegramBotAPI takes an update's fields as they come, so a misbehaving
    server (or a proxy) can hand over a chat id that is a string or a text that
    is a list; such an update must not reach the handlers.
    """
    message = update.message
    if message is not None:
        person = message.from_user
        return (
            _is_id(message.chat.id)
            and (person is None or _is_id(person.id))
            and _is_id(message.message_id)
            and (message.text is None or isinstance(message.text, str))
        )
    press = update.callback_query
    if press is not None:
        chat = press.message.chat if press.message is not None else None
        return (
            _is_id(press.from_user.id)
            and (chat is None or _is_id(chat.id))
            and (press.data is None or isinstance(press.data, str))
        )
    return True


def _is_id(value: object) -> bool:
    return type(value) is int and -(2**63) <= value < 2**63
