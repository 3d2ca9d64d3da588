"""The one small interface between the engine and a user interface.

The scheduler calls these methods on its own thread, so they must not block:
a frontend that talks to a network (Telegram) queues the work for its own
sender threads; a terminal may simply write to stdout. Answers come back the
other way, through the thread-safe :class:`engine.scheduler.Scheduler` API.

A third frontend is a subclass that fills in :meth:`Frontend.deliver` and
:meth:`Frontend.ask` (see :mod:`engine.hosting` for everything else it needs).

What a full frontend supplies for the user-facing commands:

* :meth:`Frontend.user` -- who a key's conversation is with (``Who``); its
  `id` also keys the user's memory (``Recall``/``Remember``), so it must be
  stable (Telegram: the user id, not the chat id). Set `start` from the
  ``/start <payload>`` that began the conversation.
* answers that are not text go in as values: ``Scheduler.send(key,
  Location(lat, lon))`` for a shared location or venue, ``Photo(data)`` for a
  photo. Offer what a question takes: ``takes(question, Location)`` asks for
  a "Send my location" button.
* ``Picture`` in `extra_commands`, shown by :meth:`Frontend.deliver`.
* a ``/forget`` command calling ``Scheduler.forget(key)``.
* wording for the hints in `notices` (``Notice.ANSWER_WITH_TEXT``,
  ``SEND_LOCATION``, ``SEND_PHOTO``, ``NOT_ON_EARTH``) if the defaults do not fit.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, ClassVar

from engine.commands import Choose, Command, Input, Location, Photo, Print, User

#: A conversation's key: chosen by the frontend, opaque to the engine.
Key = str

#: Handed back to :meth:`Frontend.sent` once an output is out; ``None`` when
#: the frontend does not confirm delivery.
Receipt = int | None


class Notice(enum.Enum):
    """Things the engine itself tells a user, outside any flow.

    The values are the default texts; a frontend words them its own way in
    :attr:`Frontend.notices`. Notices waiting to be sent are kept in the state
    file by value, so texts that were values once stay readable (``_missing_``).
    """

    TRY_AGAIN = "Try again"
    FAILED = "Sorry, something went wrong on our side. The conversation has ended."
    EXPIRED = "Your conversation ended after a long time without an answer."
    NOT_STARTED = "Not started"
    ALREADY_RUNNING = "Already running"
    CANCELLED = "Exiting..."
    RESTARTED = "This conversation could not go on after an update, so it starts over."
    # An answer of a kind the question does not take (see refusal()).
    ANSWER_WITH_TEXT = "Please answer with text."
    SEND_LOCATION = (
        "Please share a location, or type it as latitude, longitude (for example 51.5, -0.12)."
    )
    SEND_PHOTO = "Please send a photo."
    # Messages beyond the scheduler's mailbox limit, sent while the conversation was busy.
    TOO_MANY_WAITING = (
        "You sent many messages while I was busy; I kept the first ones and dropped the rest. "
        "Please wait for my answer before sending more."
    )
    NOT_ON_EARTH = (
        "Those coordinates are not on Earth: latitude goes from -90 to 90, "
        "longitude from -180 to 180."
    )

    @classmethod
    def _missing_(cls, value: object) -> Notice | None:
        return _FORMER_TEXTS.get(value) if isinstance(value, str) else None


#: Texts that were a Notice's value in earlier releases (kept in old state files).
_FORMER_TEXTS = {"The bot was updated, so this conversation starts over.": Notice.RESTARTED}


def refusal(question: Input | Choose, answer: object) -> Notice:
    """What to tell a user whose `answer` `question` refused (it then stays pending).

    Text a Choose does not know gets "Try again"; coordinates off the Earth
    say so; an answer of a kind the question does not take says which kind
    it wants, text first.
    """
    accepts = question.accepts
    if isinstance(answer, str):
        if Location in accepts and _looks_like_coordinates(answer):
            return Notice.NOT_ON_EARTH
        if str in accepts or isinstance(question, Choose):
            return Notice.TRY_AGAIN
    elif isinstance(answer, accepts):
        return Notice.TRY_AGAIN
    if str in accepts or isinstance(question, Choose):
        return Notice.ANSWER_WITH_TEXT
    if Location in accepts:
        return Notice.SEND_LOCATION
    if Photo in accepts:
        return Notice.SEND_PHOTO
    return Notice.TRY_AGAIN


def _looks_like_coordinates(text: str) -> bool:
    try:
        Location.parse(text)
    except ValueError:
        return True
    return False


class Delivery(enum.Enum):
    """The kinds of output the engine hands a frontend, as kept in the state file.

    Stable names, never method names: renaming a frontend method must not
    make old state files unreadable.
    """

    MESSAGE = "message"  # an Output command (a Print, ...): Frontend.deliver
    QUESTION = "question"  # an Input or Choose: Frontend.ask
    NOTICE = "notice"  # a Notice: Frontend.notify


class Frontend:
    """Base class of frontends: fulfils what the engine cannot do itself.

    `name` appears in errors such as "Photo is not supported by the terminal
    frontend". `extra_commands` lists output commands beyond
    :class:`~engine.commands.Print` that :meth:`deliver` handles (a photo,
    say); yielding any other unknown command fails at that ``yield``.
    """

    name = "generic"
    extra_commands: tuple[type[Command], ...] = ()
    #: Override per frontend, e.g. to mention ``/start``; an empty text says nothing.
    notices: ClassVar[dict[Notice, str]] = {}

    #: Whether this frontend confirms each output once it is really out (see
    #: :meth:`sent`). One that sends in the background (over a network) should:
    #: with a journal, an output not confirmed when the program dies is sent
    #: again after the restart instead of being lost. One that shows output at
    #: once (a terminal) need not; its receipts are then ``None``.
    confirms_delivery: ClassVar[bool] = False

    def bind(self, confirm: Callable[[int], None]) -> None:
        """Called by the scheduler: where :meth:`sent` reports to."""
        self._confirm = confirm

    def sent(self, receipt: Receipt) -> None:
        """Report that the output with `receipt` is out, or was given up for good.

        Safe from any thread. Not for an output dropped because the program
        is stopping: that one is sent again after the restart.
        """
        confirm = getattr(self, "_confirm", None)
        if confirm is not None and receipt is not None:
            confirm(receipt)

    def deliver(self, key: Key, command: Command, receipt: Receipt = None) -> None:
        """Show a Print (or one of `extra_commands`) to the user."""
        raise NotImplementedError

    def ask(self, key: Key, question: Input | Choose, receipt: Receipt = None) -> None:
        """Present a question; the answer comes back through ``Scheduler.send``."""
        raise NotImplementedError

    def notify(self, key: Key, notice: Notice, receipt: Receipt = None) -> None:
        """Tell the user something from the engine (by default as a Print)."""
        text = self.notices.get(notice, notice.value)
        if text:
            self.deliver(key, Print(text), receipt)
        else:
            self.sent(receipt)

    def user(self, key: Key) -> User:
        """Who `key`'s conversation is with (a flow's ``yield Who()``). Override it.

        Called on the scheduler's thread, so it must not block: answer from
        what the frontend already knows (the last update from that chat).
        The engine journals the answer, so replay gets the same one. The
        user's `id` also keys their memory (``Recall``/``Remember``); this
        default, for frontends that know nobody, is the key itself.
        """
        return User(id=key, name=key)

    def restored(self, key: Key, question: Input | Choose) -> None:
        """After a restart, `key` waits on `question`, already asked before. Optional.

        A chat needs nothing (the question is on screen); a terminal, started
        anew, shows it again by calling :meth:`ask`.
        """

    def reopened(self, key: Key, notes: dict[str, Any]) -> None:
        """After a restart: what this frontend noted on `key`'s conversation. Optional.

        Notes are written with ``Scheduler.note``; this is called before
        :meth:`restored`, for conversations that have any.
        """

    def working(self, key: Key, command: Command) -> None:
        """A slow command (Call, Sleep) began; e.g. show "typing…". Optional."""

    def committed(self, source: int | None) -> None:
        """A journal commit made everything up to `source` durable. Optional.

        Called on the scheduler's thread after each batch; a frontend that
        confirms updates to their sender (Telegram's offset) waits for this.
        """

    def halted(self, reason: str) -> None:
        """The engine stopped by itself (its journal cannot be written): stop the program.

        Called on the scheduler's thread, which then ends. The default does
        nothing; a frontend should end its program with a one-line error.
        """

    def ended(self, key: Key) -> None:
        """The conversation is over (finished, cancelled, failed or expired). Optional."""
