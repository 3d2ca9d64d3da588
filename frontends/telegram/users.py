"""Who each conversation is with, and what its open question takes.

The polling thread writes what each update says (the person, the chat, a
``/start`` payload); the scheduler's thread reads it through
:meth:`Users.user` (a flow's ``yield Who()``), which must not block, and
the frontend notes which kinds of answer the question on screen takes (a
photo is only downloaded for a question that takes photos) and whether a
"Send my location" keyboard is up (it is removed with the next message).

After a restart nothing is known until the person writes again. The journal
keeps what a flow was told (``Who`` is journaled), so replay needs nothing
from here; a ``Who`` or ``Recall`` asked anew before the person's next
update (a timer firing, a ``Call`` that ends after the restart) gets
:func:`fallback_user`: the right `id` (a Telegram private chat's id *is*
the person's id; a group key holds it), so memory stays the person's, but no
name or language.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from engine.commands import User
from engine.frontend import Key

#: The name a flow gets for a person the bot knows nothing of yet (see module doc).
UNKNOWN_NAME = "there"


def fallback_user(key: Key) -> User:
    """Who `key`'s conversation is with, from the key alone (after a restart)."""
    chat, _, person = key.partition(":")
    return User(id=person or chat, name=UNKNOWN_NAME, private=not person)


@dataclass
class _Seen:
    user: User
    accepts: tuple[type, ...] = field(default=())  # what the open question takes
    location_keyboard: bool = False  # a "Send my location" button is up


class Users:
    """What the updates said of each conversation's person; thread-safe, bounded."""

    MAX_USERS = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[Key, _Seen] = OrderedDict()

    def saw(
        self,
        key: Key,
        *,
        user_id: int,
        first_name: object,
        language: object,
        private: bool,
    ) -> None:
        """A person wrote (or pressed a button) in `key`'s conversation.

        The names come from the update as the server sent them: anything but
        text is taken as not given.
        """
        name = (first_name.strip() if isinstance(first_name, str) else "") or UNKNOWN_NAME
        language = language if isinstance(language, str) else None
        with self._lock:
            seen = self._seen.get(key)
            start = seen.user.start if seen is not None else None
            user = User(str(user_id), name, language or None, private, start)
            if seen is None:
                self._seen[key] = _Seen(user)
            else:
                seen.user = user
            self._seen.move_to_end(key)
            while len(self._seen) > self.MAX_USERS:
                self._seen.popitem(last=False)

    def started(self, key: Key, payload: str | None) -> None:
        """``/start [payload]``: the deep link's payload for the conversation it begins."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None:
                seen.user = replace(seen.user, start=payload or None)

    def user(self, key: Key) -> User:
        """Who `key`'s conversation is with (never blocks; see :func:`fallback_user`)."""
        with self._lock:
            seen = self._seen.get(key)
            return seen.user if seen is not None else fallback_user(key)

    def asked(self, key: Key, accepts: tuple[type, ...]) -> None:
        """The question on screen for `key` takes these kinds of answer (``()``: none open)."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None:
                seen.accepts = accepts
            elif accepts:
                self._seen[key] = _Seen(fallback_user(key), accepts)

    def accepts(self, key: Key) -> tuple[type, ...]:
        """What the question on screen for `key` takes (``()`` if none is open)."""
        with self._lock:
            seen = self._seen.get(key)
            return seen.accepts if seen is not None else ()

    def location_keyboard(self, key: Key, shown: bool) -> bool:
        """Note whether a location keyboard is up for `key`; returns whether one was."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                if not shown:
                    return False
                seen = self._seen[key] = _Seen(fallback_user(key))
            was, seen.location_keyboard = seen.location_keyboard, shown
            return was
