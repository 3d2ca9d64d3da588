"""The one small interface between the engine and a user interface.

The scheduler calls these methods on its own thread, so they must not block:
a frontend that talks to a network (Telegram) queues the work for its own
sender threads; a terminal may simply write to stdout. Answers come back the
other way, through the thread-safe :class:`engine.scheduler.Scheduler` API.

A third frontend is a subclass that fills in :meth:`deliver` and :meth:`ask`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import ClassVar

from engine.commands import Choose, Command, Input, Print

#: A conversation's key: chosen by the frontend, opaque to the engine
#: (the Telegram bot uses ``"chat"`` or ``"chat:user"``).
Key = str


class Notice(enum.Enum):
    """Things the engine itself tells a user, outside any flow."""

    TRY_AGAIN = "Try again"
    FAILED = "Sorry, something went wrong on our side. The conversation has ended."
    EXPIRED = "Your conversation ended after a long time without an answer."
    NOT_STARTED = "Not started"
    ALREADY_RUNNING = "Already running"
    CANCELLED = "Exiting..."
    RESTARTED = "The bot was updated, so this conversation starts over."


class Frontend:
    """Base class of frontends: fulfils what the engine cannot do itself.

    `name` appears in errors such as "SendPhoto is not supported by the
    terminal frontend". `extra_commands` lists output commands beyond
    :class:`~engine.commands.Print` that :meth:`deliver` handles (a photo,
    say); yielding any other unknown command fails that conversation.
    """

    name = "generic"
    extra_commands: tuple[type[Command], ...] = ()
    #: Override per frontend, e.g. to mention ``/start``; an empty text says nothing.
    notices: ClassVar[dict[Notice, str]] = {}

    #: Whether this frontend confirms each output once it is really out (see
    #: :meth:`sent`). One that sends in the background (over a network) should:
    #: with a journal, an output not confirmed when the program dies is sent
    #: again after the restart instead of being lost. One that shows output at
    #: once (a terminal) need not.
    confirms_delivery: ClassVar[bool] = False
    #: While the scheduler calls :meth:`deliver`, :meth:`ask` or :meth:`notify`
    #: of a confirming frontend: the number to hand back to :meth:`sent`.
    receipt: int | None = None

    def bind(self, confirm: Callable[[int], None]) -> None:
        """Called by the scheduler: where :meth:`sent` reports to."""
        self._confirm = confirm

    def sent(self, receipt: int) -> None:
        """Report that the output with `receipt` is out, or was given up for good.

        Safe from any thread. Not for an output dropped because the program
        is stopping: that one is sent again after the restart.
        """
        confirm = getattr(self, "_confirm", None)
        if confirm is not None:
            confirm(receipt)

    def deliver(self, key: Key, command: Command) -> None:
        """Show a Print (or one of `extra_commands`) to the user."""
        raise NotImplementedError

    def ask(self, key: Key, question: Input | Choose) -> None:
        """Present a question; the answer comes back through ``Scheduler.send``."""
        raise NotImplementedError

    def notify(self, key: Key, notice: Notice) -> None:
        """Tell the user something from the engine (by default as a Print)."""
        text = self.notices.get(notice, notice.value)
        if text:
            self.deliver(key, Print(text))

    def restored(self, key: Key, question: Input | Choose) -> None:
        """After a restart, `key` waits on `question`, already asked before. Optional.

        A chat needs nothing (the question is on screen); a terminal, started
        anew, shows it again by calling :meth:`ask`.
        """

    def working(self, key: Key, command: Command) -> None:
        """A slow command (Call, Sleep) began; e.g. show "typing…". Optional."""

    def halted(self, reason: str) -> None:
        """The engine stopped by itself (its journal cannot be written): stop the program.

        Called on the scheduler's thread, which then ends. The default does
        nothing; a frontend should end its program with a one-line error.
        """

    def ended(self, key: Key) -> None:
        """The conversation is over (finished, cancelled, failed or expired). Optional."""

    def committed(self, source: int | None) -> None:
        """Called on the scheduler thread after each journal commit. Optional.

        `source` is the highest event source (Telegram's update id) now
        durable, or None if none ever was. The default does nothing.
        """
