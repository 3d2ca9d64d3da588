"""Everything a frontend needs to host flows, in one place.

A third frontend (a web chat, a Slack bot) subclasses :class:`Frontend`,
fulfilling :meth:`~Frontend.deliver` and :meth:`~Frontend.ask`, and drives a
:class:`Scheduler` from its own threads with ``begin``, ``send`` and
``cancel``. With a :class:`SqliteJournal` (:func:`SqliteJournal` on a path)
its conversations survive restarts; :func:`load_flow` reads a ``--flow``
spec. The terminal (``frontends/cli.py``) and the Telegram bot
(``frontends/telegram``) are two such frontends.

The pieces:

* :class:`Frontend`, :class:`Notice`, :class:`Delivery`, :data:`Key`,
  :data:`Receipt`: the interface the engine calls, on its thread;
  :func:`takes` says what a question takes (offer a location button),
  :func:`refusal` what the engine says to an answer it refuses;
* :class:`Scheduler`: many conversations on one thread, one handler table;
  ``sources=`` takes the frontend's rule for which update ids are new
  (a :data:`SourcePolicy`, given the :class:`Taken` ids; default :func:`unseen`);
* :class:`Journal`, :class:`SqliteJournal`, :class:`JournalError`: what
  survives a restart;
* :class:`Runner`: drives one conversation (for a frontend that runs a
  single conversation itself, as the terminal does);
* :func:`load_flow`, :data:`Flow`: flows by name.
"""

from engine.commands import takes
from engine.frontend import Delivery, Frontend, Key, Notice, Receipt, refusal
from engine.journal import Journal, JournalError, SqliteJournal
from engine.observer import Observer
from engine.runner import Diverged, NotSaveable, Runner, Snapshot
from engine.scheduler import DEFAULT_IDLE_TIMEOUT, Scheduler
from engine.sources import SourcePolicy, Taken, unseen
from engine.states import Flow, load_flow

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "Delivery",
    "Diverged",
    "Flow",
    "Frontend",
    "Journal",
    "JournalError",
    "Key",
    "NotSaveable",
    "Notice",
    "Observer",
    "Receipt",
    "Runner",
    "Scheduler",
    "Snapshot",
    "SourcePolicy",
    "SqliteJournal",
    "Taken",
    "load_flow",
    "refusal",
    "takes",
    "unseen",
]
