"""Who talks to whom: conversation keys, where replies go, open questions and buttons."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from engine.commands import Choose, Output
from engine.frontend import Key
from frontends.telegram.sending import MESSAGE_LIMIT, EditMessage, Outbox, utf16_len

# -- the bot's own outputs: journaled by the engine like a flow's (Scheduler.say) ------


@dataclass(frozen=True)
class Reply(Output):
    """A reply of the bot's own (``/help``, "Not started"...): the open question stays open."""

    text: str


@dataclass(frozen=True)
class PressAnswer(Output):
    """The answer to a button press (``answerCallbackQuery``), sent at once, unpaced."""

    callback_id: str
    text: str | None = None


@dataclass(frozen=True)
class Unbutton(Output):
    """Take the buttons off a message; with `text`, show that text instead (the choice made)."""

    chat_id: int
    message_id: int
    text: str | None = None


def is_group(chat_type: str | None) -> bool:
    return chat_type in ("group", "supergroup")


def conversation_key(chat_id: int, user_id: int, group: bool) -> Key:
    """One conversation per private chat; in a group, one per (chat, person)."""
    return f"{chat_id}:{user_id}" if group else str(chat_id)


@dataclass
class Route:
    """Where `key`'s messages go: the chat and, in a group, whom to answer."""

    chat_id: int
    user_id: int | None = None  # set in groups only
    reply_to: int | None = None  # the person's latest message (groups)
    name: str | None = None

    @classmethod
    def of(cls, key: Key) -> Route:
        chat, _, user = key.partition(":")
        return cls(int(chat), int(user) if user else None)


@dataclass
class Question:
    """An open ``Choose`` shown with buttons."""

    key: Key
    chat_id: int
    tag: str  # names the question in the buttons' callback data
    options: tuple[str, ...]
    message_id: int | None = None  # the message with the buttons, once sent
    #: Restored from a state file of an earlier version: the tag its buttons had then.
    legacy_tag: str | None = None

    def named(self, tag: str) -> bool:
        """Whether button data with `tag` is for this question."""
        return tag in (self.tag, self.legacy_tag)


#: Notes the frontend journals per conversation (``Scheduler.note``): the tag
#: and message id of the open question's buttons, and in a group whom to quote.
BUTTONS_NOTE = "buttons"
ROUTE_NOTE = "route"


def question_tag(question: Choose, position: int | None = None) -> str:
    """A short name of one asking of a question: the same after a restart.

    `position` is the conversation's (``Scheduler.position``): an identical
    question asked later has another, so its buttons' data differ and an old
    button cannot answer it. Without one, the name earlier versions gave.
    """
    parts = (question.prompt, *question.options)
    if position is not None:
        parts = (*parts, str(position))
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=6).hexdigest()


class Registry:
    """What the polling thread, the scheduler and the senders share, under one lock.

    Which conversations run is the scheduler's to say: the set here is only
    written by :class:`~frontends.telegram.frontend.TelegramFrontend` when
    the scheduler calls it (``ask``, ``working``, ``restored`` add a key,
    ``ended`` removes it), in the scheduler's order, so it follows the
    scheduler's own and never runs ahead of it. The polling thread only reads it.
    """

    MAX_ROUTES = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: OrderedDict[Key, Route] = OrderedDict()
        self._active: set[Key] = set()
        self._questions: dict[Key, Question] = {}

    def route(self, key: Key) -> Route:
        with self._lock:
            route = self._routes.get(key)
            return Route(**vars(route)) if route else Route.of(key)

    def saw(self, key: Key, route: Route) -> None:
        """The person behind `key` wrote (or pressed): remember where to answer."""
        with self._lock:
            self._routes[key] = route
            self._routes.move_to_end(key)
            while len(self._routes) > self.MAX_ROUTES:
                self._routes.popitem(last=False)

    def activate(self, key: Key) -> None:
        """The scheduler runs `key`'s conversation (it asked, or works on a step)."""
        with self._lock:
            self._active.add(key)

    def is_active(self, key: Key) -> bool:
        """Whether `key`'s conversation runs, as far as the scheduler has said."""
        with self._lock:
            return key in self._active

    def end(self, key: Key) -> Question | None:
        """The scheduler ended `key`'s conversation; returns its open question, if any."""
        with self._lock:
            self._active.discard(key)
            return self._close(key)

    def open(self, question: Question) -> None:
        with self._lock:
            self._close(question.key)
            self._questions[question.key] = question

    def sent(self, question: Question, message_id: int) -> None:
        """The question's buttons are on screen (called on a sender thread)."""
        with self._lock:
            question.message_id = message_id

    def close(self, key: Key) -> Question | None:
        with self._lock:
            return self._close(key)

    def _close(self, key: Key) -> Question | None:
        return self._questions.pop(key, None)

    def question(self, key: Key) -> Question | None:
        with self._lock:
            return self._questions.get(key)


def unbutton(
    chat_id: int, message_id: int, text: str | None = None, answer: str | None = None
) -> Unbutton:
    """An :class:`Unbutton` for a pressed message: with `answer`, shown below its `text`."""
    return Unbutton(chat_id, message_id, _answered(text, answer))


def _answered(text: str | None, answer: str | None) -> str | None:
    if answer is None or text is None:
        return None
    edited = f"{text}\n\n→ {answer}"
    return edited if utf16_len(edited) <= MESSAGE_LIMIT else None


def retire_buttons(
    outbox: Outbox,
    chat_id: int,
    message_id: Callable[[], int | None],
    text: str | None = None,
    answer: str | None = None,
) -> None:
    """Queue taking the buttons off a message; with `answer`, show it below `text`."""
    outbox.put(EditMessage(chat_id, message_id=message_id, text=_answered(text, answer)))
