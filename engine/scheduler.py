"""The scheduler: many conversations, one thread, no asyncio.

Each conversation is a :class:`~engine.runner.Runner`. The scheduler sends a
value in, gets a command out, and looks the command's type up in one table of
handlers, as curio's kernel does with its traps. A handler either answers at
once (a ``Print`` is handed to the frontend and the flow goes on) or parks the
conversation until an event arrives.

Events go through the same table. Everything that happens to a conversation
is a small typed event in the inbox: a user's message, a ``Call``'s result
from a worker thread, a timer that fired, a frontend's confirmation. The inbox
is the only way in: other threads put events in it and never touch a
generator, so no generator is ever run by two threads and no flow needs a lock.

Events are taken in batches: everything waiting in the inbox at once. A batch
is one journal transaction, committed before anything it caused leaves the
engine. Until then, outputs for the frontend and ``Call``\\ s for the workers
wait in an outbox. So after a crash the world has seen nothing that the
journal cannot replay.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import pickle
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from engine.commands import (
    TEXT,
    Answer,
    Call,
    Cancelled,
    Choose,
    Command,
    Forget,
    Input,
    Output,
    Print,
    Recall,
    Remember,
    Sleep,
    Timeout,
    UnsupportedCommand,
    User,
    Who,
)
from engine.frontend import Delivery, Frontend, Key, Notice, Receipt, refusal
from engine.journal import Journal, JournalError, JournalLost, Saved
from engine.observer import CANCELLED, EXPIRED, FAILED, FINISHED, RESTARTED, Observer
from engine.runner import Diverged, Runner, Snapshot
from engine.sources import SourcePolicy, unseen
from engine.states import Flow, State, first_state
from engine.workers import WorkerPool

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 24 * 3600.0

#: How many expired conversations are remembered, to tell them so.
_MAX_EXPIRED_KEYS = 100_000

#: The most inbox events taken in one batch. Everything a batch sends waits in
#: the outbox until its commit; with thousands of events those entries outlive
#: the young garbage collections, get promoted, and set off full collections
#: that walk every live conversation. 256 keeps them young; one SQLite commit
#: per 256 events costs next to nothing.
_MAX_BATCH = 256

#: When a timer set at an infinite time fires (an idle timeout of ``inf``).
_NEVER = float("inf")

#: A handler's answer meaning "no value yet: park until an event arrives".
_PARK = object()

#: How many messages one conversation may hold waiting while it is busy (in a
#: Call, a Sleep, or with earlier messages still waiting). Each is journaled
#: until taken; without a bound one user's burst could fill memory and disk.
#: A hundred is far more than anyone types ahead; beyond it messages are
#: dropped and the user is told (Notice.TOO_MANY_WAITING), once per burst.
MAILBOX_LIMIT = 100


# -- events: what arrives in the inbox ------------------------------------------
#
# Small typed tuples: the loop dispatches on their type through the same
# table as commands. Tuples rather than dataclasses because one is made for
# every message, result and confirmation: a slotted dataclass cost about
# 2,300 instructions to make, a NamedTuple a few hundred (callgrind, see
# bench/engine_bench.py).
#
# A user's message, the one event made for every update, is a plain tuple
# (its type, ``tuple``, is its entry in the table). The garbage collector
# stops tracking a plain tuple of strings and numbers the first time it
# sees one, but never a tuple subclass: with 10,000 conversations and their
# messages queued, the NamedTuple made every full collection walk each
# waiting message, 0.6 µs a step against 0.2 (engine_bench); with building
# and reading it, 16,100 instructions a step against 14,200 (callgrind).

#: A user's message for `key`'s conversation, as (key, text, source): the text,
#: or an :class:`Answer` (a location), and the update id it came in.
Message = tuple[Key, Any, "int | None"]


class Begin(NamedTuple):
    """Start a conversation for `key`."""

    key: Key
    source: int | None = None


class Cancel(NamedTuple):
    """End `key`'s conversation."""

    key: Key
    source: int | None = None


class ForgetUser(NamedTuple):
    """Delete the memory of the user of `key`'s conversation."""

    key: Key
    source: int | None = None


class Say(NamedTuple):
    """Show `output` in `key`'s chat for the frontend itself (its own reply), journaled."""

    key: Key
    output: Output
    source: int | None = None


class Note(NamedTuple):
    """A frontend's note on `key`'s conversation, to journal while it runs."""

    key: Key
    name: str
    value: Any


class Post(NamedTuple):
    """Run `action` on the scheduler's thread after the batch commits (or only take `source`)."""

    action: Callable[[], Any] | None
    source: int | None = None


class Done(NamedTuple):
    """A ``Call`` ended on a worker: its value or error, for the conversation's `ticket`."""

    chat: _Chat
    ticket: int
    value: Any
    error: BaseException | None
    took: float = 0.0  # seconds on the worker


class Wake(NamedTuple):
    """A ``Sleep`` is over, or a question's timeout passed (a timer event)."""

    chat: _Chat
    ticket: int


class Expire(NamedTuple):
    """Check whether a conversation has been idle too long (a timer event)."""

    chat: _Chat


class Sent(NamedTuple):
    """The frontend confirmed the output with `receipt`."""

    receipt: int


class Broken(NamedTuple):
    """The frontend failed to present an output of `key`'s conversation."""

    key: Key


class Stop(NamedTuple):
    """Stop the loop after this batch."""


def _apply(fn: Callable[..., Any], args: tuple[Any, ...], _: None) -> None:
    """An outbox entry for any call: the outbox calls every entry with three arguments."""
    fn(*args)


#: What an :class:`Adopt` reads from the journal: conversations and unsent outputs.
Adoption = tuple[Iterable[Saved], list[tuple[int, str, Delivery, Any]]]


class Adopt(NamedTuple):
    """Rebuild the conversations `load()` reads (shards this instance now owns)."""

    load: Callable[[], Adoption]


class Drop(NamedTuple):
    """Stop running the conversations `leaving` names (they move to another instance)."""

    leaving: Callable[[Key], bool]
    done: threading.Event


#: A kind of output and the frontend method that shows it.
_Shown = tuple[Delivery, Callable[[Key, Any, Receipt], None]]

#: Where events that may carry a source (an update id) keep it: each is taken once.
_SOURCE_AT: dict[type, int] = {Begin: 1, tuple: 2, Cancel: 1, Post: 1, ForgetUser: 1, Say: 2}


class _Chat(Runner):
    """One running conversation: its runner, plus what the scheduler keeps for it."""

    __slots__ = ("key", "last_active", "mailbox", "replaying", "ticket")

    def __init__(self, key: Key, start: State, now: float) -> None:
        super().__init__(start)
        self.key = key
        self.mailbox: deque[Any] | None = None  # made on first use: most never need one
        self.ticket = 0  # which Call/Sleep result it waits for; older ones are stale
        self.last_active = now
        self.replaying = False  # rebuilt after a restart: its outputs were shown before

    @property
    def waiting(self) -> Command | None:
        """The command it is parked on."""
        return self.command


class Scheduler:
    """Runs conversations of `flow` for a `frontend`, on one thread.

    ``begin``, ``send``, ``cancel`` and ``post`` are safe to call from any
    thread; they only post an event. Timers (``Sleep``, a question's
    ``timeout``, idle expiry) run on the monotonic `clock` and are journaled
    as deadlines of the `wall_clock`, so after a restart each fires at its
    original moment (at once, if that passed while the engine was down).
    `source` is an optional id of what caused
    the event (Telegram's update id): with a journal, an event whose source
    `sources` says was taken already is skipped, so a redelivered update is
    taken once.
    """

    def __init__(
        self,
        frontend: Frontend,
        flow: Flow,
        *,
        workers: int = 8,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        journal: Journal | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sources: SourcePolicy = unseen,
        observer: Observer | None = None,
        mailbox_limit: int = MAILBOX_LIMIT,
    ) -> None:
        self.frontend = frontend
        self.flow = flow
        #: Told of what happens, for metrics (see :mod:`engine.observer`).
        self._observer = observer or Observer()
        self._observing = observer is not None
        self.idle_timeout = idle_timeout
        self.journal = journal or Journal()
        # Whether the journal records steps: the in-memory one does not, and
        # calling its empty step() was ~640 instructions of every answer.
        self._keeps_steps = type(self.journal).step is not Journal.step
        self._clock = clock
        self._now = clock()  # when the batch being handled was taken
        # Timers run on `clock`, which never jumps; what must outlive the
        # process (deadlines, last activity) is journaled in wall-clock time,
        # read once when the timer is set.
        self._wall_clock = wall_clock
        self._is_new = sources
        #: The update ids taken (see engine.sources), kept by the journal.
        self._taken = self.journal.taken()
        self.mailbox_limit = mailbox_limit
        self._overflowing: set[Key] = set()  # told their messages are dropped, this burst
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._chats: dict[Key, _Chat] = {}
        self._expired: set[Key] = set()
        self._timers: list[tuple[float, int, Any]] = []
        #: During recovery: the journaled deadline of each rebuilt conversation's timer.
        self._due_after_restart: dict[Key, float] = {}
        self._wall_to_clock = 0.0  # during recovery: clock time = wall time + this
        self._timer_order = itertools.count()
        self._tickets = itertools.count(1)
        #: What leaves once the batch is committed: (function, three arguments).
        self._outbox: list[tuple[Callable[..., Any], Any, Any, Any]] = []
        self._workers = WorkerPool(workers)
        self._thread: threading.Thread | None = None
        self._committed_source = self._taken.highest
        self._batch_source: int | None = None
        #: Why the scheduler stopped by itself (its journal failed), or None.
        self.halted: str | None = None
        # The one table: what to do with each kind of command a flow yields,
        # and with each kind of event that arrives. Commands are handled as
        # handler(chat, command), events as handler(event).
        self._table: dict[type, Callable[..., Any]] = {
            Print: self._output,
            Input: self._ask,
            Choose: self._ask,
            Call: self._call,
            Sleep: self._sleep,
            Who: self._who,
            Recall: self._recall,
            Remember: self._remember,
            Forget: self._forget_memory,
            Begin: self._begin,
            tuple: self._message,  # a Message
            Cancel: self._cancel,
            Post: self._post,
            Say: self._say,
            Note: self._note,
            Done: self._done,
            Wake: self._wake,
            Expire: self._expire,
            Sent: self._sent,
            Broken: self._broken,
            ForgetUser: self._forget_user,
            Adopt: self._adopt,
            Drop: self._drop,
        }
        for extra in frontend.extra_commands:
            self._table[extra] = self._output
        self._on_enter = self._entered  # bound once, shared by every conversation
        # With a frontend that confirms what it sent, each output is journaled
        # until confirmed, so one lost in a crash is sent again after it.
        self._confirming = frontend.confirms_delivery and journal is not None
        self._receipts = itertools.count(1)
        if self._confirming:
            frontend.bind(self._confirm)
        # Each kind of output with the frontend method that shows it, bound
        # once: showing one then costs no enum hashing and no dict lookup.
        self._as_message: _Shown = (Delivery.MESSAGE, frontend.deliver)
        self._as_question: _Shown = (Delivery.QUESTION, frontend.ask)
        self._as_notice: _Shown = (Delivery.NOTICE, frontend.notify)
        self._shown = {
            pair[0]: pair for pair in (self._as_message, self._as_question, self._as_notice)
        }

    # -- the thread-safe API --------------------------------------------

    def begin(self, key: Key, *, source: int | None = None) -> None:
        """Start a conversation for `key` (tells the user if one is running)."""
        self._inbox.put(Begin(key, source))

    def send(self, key: Key, text: str | Answer, *, source: int | None = None) -> None:
        """Hand a user's message to `key`'s conversation, in order.

        `text` is what they typed, or an :class:`~engine.commands.Answer` such
        as a shared :class:`~engine.commands.Location`. A question that does
        not take that kind of answer says so (a hint) and stays pending.
        """
        if type(text) is not str and not isinstance(text, Answer):
            raise TypeError(f"send takes text or an Answer (a Location), got {text!r}")
        self._inbox.put((key, text, source))  # a Message: a plain tuple (see Message)

    def forget(self, key: Key, *, source: int | None = None) -> None:
        """Delete what flows remembered for the user of `key` (a ``/forget`` command).

        The user is ``frontend.user(key).id``. In order with everything else:
        a reply posted after it (``post``) goes out once it is deleted.
        """
        self._inbox.put(ForgetUser(key, source))

    def cancel(self, key: Key, *, source: int | None = None) -> None:
        """End `key`'s conversation: its flow sees :class:`Cancelled` at its ``yield``."""
        self._inbox.put(Cancel(key, source))

    def post(self, action: Callable[[], Any] | None, *, source: int | None = None) -> None:
        """Run `action` on the scheduler's thread, after the current batch commits.

        For a frontend's own replies (``/help``, a hint): they then keep their
        place among the conversations' messages and, with a `source`, are
        taken once like everything else. With no `action` it only marks
        `source` as taken (an update the frontend ignores).
        """
        self._inbox.put(Post(action, source))

    def say(self, key: Key, output: Output, *, source: int | None = None) -> None:
        """Show `output` to `key`'s user on the frontend's own behalf, like a flow's output.

        For a frontend's replies that must not be lost (``/help``, "Not
        started", a button press's answer): with a confirming frontend it is
        journaled until :meth:`Frontend.sent`, so a crash does not lose it.
        It goes to :meth:`Frontend.deliver` after the batch commits, in its
        place among the conversation's messages; no conversation is needed.
        """
        self._inbox.put(Say(key, output, source))

    def note(self, key: Key, name: str, value: Any) -> None:
        """Journal a frontend's note on `key`'s conversation (plain data; ``None`` deletes it).

        Safe from any thread; kept with the next batch while the conversation
        runs, dropped when it ends, and given back after a restart through
        :meth:`Frontend.reopened` (where a question's buttons are, say).
        """
        self._inbox.put(Note(key, name, value))

    def position(self, key: Key) -> int:
        """The journal's position of `key`'s conversation (see ``Journal.position``).

        For a frontend, from its methods (on the scheduler's thread): the same
        for a question after a restart, different for any later question.
        """
        return self.journal.position(key)

    def adopt(self, load: Callable[[], Adoption]) -> None:
        """Rebuild the conversations ``load()`` reads from the journal, on the scheduler's thread.

        For an instance that has just become the owner of some conversations
        (shards, see :mod:`engine.shards`): like :meth:`recover` for those;
        their unsent outputs (with the receipts the journal gave them) go out
        again first.
        """
        self._inbox.put(Adopt(load))

    def drop(self, leaving: Callable[[Key], bool], timeout: float = 10.0) -> bool:
        """Stop running the conversations `leaving` names, once what is before is committed.

        Waits until that batch is committed (up to `timeout`; whether it was):
        after that nothing more is written for them here. Their journaled
        state stays for whichever instance adopts them.
        """
        done = threading.Event()
        self._inbox.put(Drop(leaving, done))
        return done.wait(timeout)

    def already_taken(self, source: int) -> bool:
        """Whether an event from `source` was taken before (so would be skipped)."""
        return not self._is_new(source, self._taken)

    @property
    def committed_source(self) -> int | None:
        """The highest source whose effects are durable (with a journal), from any thread."""
        return self._committed_source

    @property
    def last_source(self) -> int | None:
        """The highest event source taken so far (and journaled, with a journal)."""
        return self._taken.highest

    def running(self) -> int:
        """How many conversations are in progress (a snapshot, from any thread)."""
        return len(self._chats)

    def is_running(self, key: Key) -> bool:
        """Whether `key` has a conversation in progress (a snapshot, from any thread)."""
        return key in self._chats

    # -- owning the thread ------------------------------------------------

    def start(self) -> None:
        """Rebuild journaled conversations, then run on a thread of its own."""
        if self._thread is not None:
            raise RuntimeError("the scheduler is already started")
        if self.open():
            self._thread = threading.Thread(target=self.run, name="engine-scheduler")
            self._thread.start()

    def open(self) -> bool:
        """Start the workers and rebuild journaled conversations, without a thread.

        For a frontend that runs the engine on its own thread with
        :meth:`run_once` (the terminal); :meth:`start` does this first.
        Returns ``False`` if the journal failed (the scheduler halted).
        """
        self._workers.start()
        try:
            self.recover()
        except JournalError as error:
            self._halt(str(error))
            return False
        return True

    def has_events(self) -> bool:
        """Whether events wait in the inbox (for a frontend that runs :meth:`run_once`)."""
        return not self._inbox.empty()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread and the workers; returns within about `timeout` seconds.

        Conversations are left as they are: with a journal they go on after
        the next start.
        """
        deadline = time.monotonic() + timeout
        self._inbox.put(Stop())
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.error("the scheduler thread did not stop in time")
        self._workers.stop(deadline)

    def run(self) -> None:
        """The loop: batch after batch until stopped, or the journal fails."""
        while self.run_once():
            pass

    def run_once(self, wait: float = 1.0) -> bool:
        """Take one batch of events (waiting up to `wait` s, less if a timer is due),
        handle it, fire due timers, commit, release the outbox.

        Returns whether to go on: ``False`` once stopped or halted. The
        scheduler's own thread loops on it; a frontend that runs the engine on
        its own thread (the terminal) calls it itself.
        """
        table = self._table
        batch = self._take_batch(wait)
        # One reading of the clock for the batch: its messages came together,
        # and a reading per message was ~1,000 instructions of each step.
        self._now = self._clock()
        self.journal.stamp(self._wall_clock())
        stopping = False
        self._batch_source = None
        # Timers due by now go first: an answer taken after its question's
        # deadline goes to what the flow asks next, not to that question.
        self._fire_timers()
        done = 0
        for event in batch:
            done += 1
            kind = type(event)
            if kind is Stop:
                stopping = True
                break
            try:
                at = _SOURCE_AT.get(kind)
                source = None if at is None else event[at]
                if source is not None and not self._take_source(source):
                    continue
                table[kind](event)
            except JournalLost:  # reading for it failed: the batch goes as a commit's would
                self._let_all_go(batch[done:])
                return True
            except Exception:  # a bug here must not stop every other conversation
                log.exception("error handling %r", event)
        self._fire_timers()
        try:
            self._commit()
        except JournalLost:
            self._let_all_go([])
            return not stopping
        except JournalError as error:
            self._halt(str(error))
            return False
        return not stopping

    def _let_all_go(self, rest: list[Any]) -> None:
        """The journal lost this batch (see :class:`JournalLost`): let every conversation go.

        Nothing the batch would show is shown; what it would do afterwards
        (a Drop's or a post's callback) is done. Updates waiting in the inbox
        are dropped too: their conversations are gone from here, and the
        updates are handed over again, after the rebuild, to whoever owns them.
        """
        log.debug("the journal lost a batch: letting %d conversation(s) go", len(self._chats))
        for key in self._chats:
            self.journal.dropped(key)
        self._chats.clear()
        self._expired.clear()
        outbox, self._outbox = self._outbox, []
        presenters = {shown[1] for shown in self._shown.values()}
        waiting = list(rest)
        while True:
            try:
                waiting.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for event in waiting:
            at = _SOURCE_AT.get(type(event))
            if at is None or event[at] is None:
                self._inbox.put(event)
        for fn, first, second, third in outbox:
            if fn not in presenters:
                try:
                    fn(first, second, third)
                except Exception:
                    log.exception("the %s frontend failed", self.frontend.name)

    def next_timer(self) -> float | None:
        """Seconds until the next timer is due (0 if overdue), or ``None`` if none will be."""
        if not self._timers or self._timers[0][0] == _NEVER:
            return None
        return max(0.0, self._timers[0][0] - self._clock())

    def _take_source(self, source: int) -> bool:
        """Whether an event from `source` is new (then it is taken)."""
        if not self._is_new(source, self._taken):
            log.debug("skipping event from source %s: already taken", source)
            return False
        self._batch_source = source
        self.journal.took(source)
        return True

    def _halt(self, reason: str) -> None:
        """The journal cannot be written: going on would lose what users say. Stop."""
        self.halted = reason
        log.error("%s; the engine stops, since nothing more could be kept", reason)
        try:
            self.frontend.halted(reason)
        except Exception:
            log.exception("the %s frontend failed", self.frontend.name)

    def _take_batch(self, wait: float) -> list[Any]:
        due = self.next_timer()
        timeout = wait if due is None else min(wait, due)
        try:
            batch = [self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()]
        except queue.Empty:
            return []
        try:
            while len(batch) < _MAX_BATCH:
                batch.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        return batch

    # -- events -------------------------------------------------------------

    def _begin(self, event: Begin) -> None:
        key = event.key
        self._expired.discard(key)
        if key in self._chats:
            self._notify(key, Notice.ALREADY_RUNNING)
            return
        self._launch(key)

    def _launch(self, key: Key) -> None:
        try:
            start = first_state(self.flow)
        except Exception:
            log.exception("the flow cannot make its first state for %s", key)
            self._notify(key, Notice.FAILED)
            self._later(self.frontend.ended, key)
            return
        chat = _Chat(key, start, self._clock())
        chat.entered = self._on_enter
        self._chats[key] = chat
        self._observer.began(key)
        self._arm_expiry(chat)
        log.debug("conversation %s begins", key)
        self._resume(chat, None)

    def _entered(self, chat: Runner, snapshot: Snapshot) -> None:
        """A conversation entered a new state: the journal keeps its snapshot."""
        self.journal.entered(chat.key, snapshot)  # type: ignore[attr-defined]

    def _message(self, event: Message) -> None:
        key, text, _ = event
        chat = self._chats.get(key)
        if chat is None:
            if key in self._expired:
                self._expired.discard(key)
                self._notify(key, Notice.EXPIRED)
            else:
                self._notify(key, Notice.NOT_STARTED)
            return
        chat.last_active = self._now
        waiting = chat.command
        if (  # the common case, inlined: text for a question taking any text
            type(waiting) is Input
            and waiting.accepts is TEXT
            and type(text) is str
            and not chat.mailbox
        ):
            if self._keeps_steps:
                self.journal.step(key, waiting, text, None)
            self._resume(chat, text)
        elif isinstance(waiting, (Input, Choose)) and not chat.mailbox:
            self._answer(chat, waiting, text)
        else:
            if chat.mailbox is None:
                chat.mailbox = deque()
            elif len(chat.mailbox) >= self.mailbox_limit:
                self._overflowed(key)
                return
            chat.mailbox.append(text)
            self.journal.queued(key, text)

    def _overflowed(self, key: Key) -> None:
        """A message beyond the mailbox limit is dropped; the user is told once per burst."""
        log.debug("conversation %s: mailbox full, a message dropped", key)
        if key not in self._overflowing:
            self._overflowing.add(key)
            self._notify(key, Notice.TOO_MANY_WAITING)

    def _answer(self, chat: _Chat, question: Input | Choose, text: Any) -> None:
        """Send an answer in, or re-ask when the question refuses it."""
        value = question.accept(text)
        if value is None:
            self._notify(chat.key, refusal(question, text))
            self._show(self._as_question, chat.key, question)
        else:
            self.journal.step(chat.key, question, value, None)
            self._resume(chat, value)

    def _cancel(self, event: Cancel) -> None:
        chat = self._chats.get(event.key)
        if chat is None:
            self._expired.discard(event.key)
            self._notify(event.key, Notice.NOT_STARTED)
            return
        self._close(chat, Cancelled())
        self._notify(event.key, Notice.CANCELLED)
        self._forget(chat, CANCELLED)

    def _post(self, event: Post) -> None:
        if event.action is not None:
            self._later(event.action)

    def _say(self, event: Say) -> None:
        self._show(self._as_message, event.key, event.output)

    def _note(self, event: Note) -> None:
        if event.key in self._chats:  # one that ended has nothing to note
            self.journal.note(event.key, event.name, event.value)

    def _done(self, event: Done) -> None:
        chat = event.chat
        if not self._current(chat, event.ticket):
            log.debug("ignoring a late result for %s (ticket %s)", chat.key, event.ticket)
            return
        assert chat.command is not None
        self._observer.call_took(event.took)
        self.journal.step(chat.key, chat.command, event.value, event.error)
        self._resume(chat, event.value, event.error)

    def _wake(self, event: Wake) -> None:
        chat = event.chat
        if not self._current(chat, event.ticket):
            return
        command = chat.command
        if type(command) is Sleep:
            self.journal.step(chat.key, command, None, None)
            self._resume(chat, None)
            return
        seconds = getattr(command, "timeout", None)
        if seconds is None:  # answered, and now on a question with no timeout
            return
        log.debug("conversation %s: no answer within %g s", chat.key, seconds)
        assert command is not None
        timeout = Timeout(seconds)
        self.journal.step(chat.key, command, None, timeout)
        self._resume(chat, None, timeout)

    def _expire(self, event: Expire) -> None:
        chat = event.chat
        if self._chats.get(chat.key) is not chat:
            return
        # One expiry timer per conversation, moved on lazily: cheaper than
        # re-arming it on every message.
        now = self._clock()
        waits_on_user = isinstance(chat.command, (Input, Choose))
        if chat.last_active + self.idle_timeout > now or not waits_on_user:
            if not waits_on_user:  # busy in a Call or a Sleep is not idle
                chat.last_active = now
            self._arm_expiry(chat)
            return
        log.info("conversation %s expired after %.0f s idle", chat.key, now - chat.last_active)
        self._close(chat, Cancelled("idle timeout"))
        self._expired.add(chat.key)
        if len(self._expired) > _MAX_EXPIRED_KEYS:  # users who never came back
            self._expired.pop()
        self._forget(chat, EXPIRED)

    def _sent(self, event: Sent) -> None:
        self.journal.delivered(event.receipt)

    def _broken(self, event: Broken) -> None:
        """The frontend could not show something: end the conversation rather than freeze it."""
        chat = self._chats.get(event.key)
        if chat is not None:
            self._end_failed(chat, "the frontend failed to show its output")

    def _current(self, chat: _Chat, ticket: int) -> bool:
        """Whether `chat` still runs and still waits for `ticket`'s result."""
        return self._chats.get(chat.key) is chat and chat.ticket == ticket

    # -- running a conversation -------------------------------------------------

    def _resume(self, chat: _Chat, value: Any, error: BaseException | None = None) -> None:
        """Send `value` (or throw `error`) in and fulfil commands until the flow must wait.

        The hottest loop of the engine: the table lookup is inlined here
        rather than shared with :meth:`_fulfil` (measured: a call and a tuple
        per step cost about 5 % of a step), and so is :meth:`Runner.send`
        (its frame was ~450 instructions of an Input step, ~800 with a Print;
        callgrind, PYTHONHASHSEED=0). Only a state boundary or a mistake
        leaves the loop, through :meth:`Runner.settle`.
        """
        table = self._table
        observing = self._observing
        steps = chat.steps
        while True:
            try:
                command = steps.send(value) if error is None else steps.throw(error)
                if not isinstance(command, Command):  # a state boundary, a mistake
                    command = chat.settle(command)
            except StopIteration:
                chat.command = chat.state = None
                log.debug("conversation %s finished", chat.key)
                self._forget(chat)
                return
            except BaseException:  # even SystemExit: it must not stop everyone's thread
                self._crashed(chat)
                return
            chat.command = command
            error = None
            handler = table.get(type(command))
            if observing:
                self._observer.command(type(command).__name__)
            if handler is None:
                value, error = None, UnsupportedCommand(command, self.frontend.name)
                continue
            try:
                value = handler(chat, command)
            except Exception as failure:  # a handler's refusal is raised at the yield
                value, error = None, failure
                continue
            if value is _PARK:
                chat.replaying = False
                return

    def _fulfil(self, chat: _Chat, command: Command) -> tuple[Any, BaseException | None]:
        """Look `command` up in the table: its value, an error for its yield, or _PARK."""
        handler = self._table.get(type(command))
        if handler is None:
            return None, UnsupportedCommand(command, self.frontend.name)
        try:
            value = handler(chat, command)
        except Exception as failure:
            return None, failure
        if value is _PARK:
            chat.replaying = False
        return value, None

    def _go_on(self, chat: _Chat) -> None:
        """Fulfil the command a rebuilt conversation stopped at, and go on from there."""
        if chat.command is None:
            self._forget(chat)
            return
        value, error = self._fulfil(chat, chat.command)
        if value is not _PARK:
            self._resume(chat, value, error)

    def _crashed(self, chat: _Chat) -> None:
        state = type(chat.state).__name__ if chat.state is not None else "?"
        log.exception("conversation %s failed in state %s", chat.key, state)
        self._notify(chat.key, Notice.FAILED)
        self._forget(chat, FAILED)

    def _end_failed(self, chat: _Chat, reason: str) -> None:
        log.error("conversation %s ends: %s", chat.key, reason)
        self._close(chat, Cancelled(reason))
        self._notify(chat.key, Notice.FAILED)
        self._forget(chat, FAILED)

    def _close(self, chat: _Chat, error: BaseException) -> None:
        """Throw `error` in so the flow's ``finally`` blocks run, then drop it."""
        try:
            if not chat.close(error):
                log.warning(
                    "conversation %s went on after %s; closed it", chat.key, type(error).__name__
                )
        except BaseException:
            log.exception("conversation %s failed while closing", chat.key)

    def _forget(self, chat: _Chat, how: str = FINISHED) -> None:
        if self._chats.get(chat.key) is chat:
            del self._chats[chat.key]
            self._observer.ended(chat.key, how)
        chat.ticket = -1
        self._overflowing.discard(chat.key)
        self.journal.ended(chat.key)
        self._later(self.frontend.ended, chat.key)

    # -- the command handlers ----------------------------------------------------

    def _output(self, chat: _Chat, command: Output) -> Any:
        if chat.replaying:
            return
        if self._confirming:
            self._show(self._as_message, chat.key, command)
        else:  # _show without a receipt, inlined (as in _ask): ~600 instructions a Print
            self._outbox.append((self._as_message[1], chat.key, command, None))

    def _ask(self, chat: _Chat, question: Input | Choose) -> Any:
        while chat.mailbox:
            text = chat.mailbox.popleft()
            self.journal.dequeued(chat.key)
            if not chat.mailbox:  # caught up: a later burst is told again
                self._overflowing.discard(chat.key)
            value = question.accept(text)
            if value is not None:
                self.journal.step(chat.key, question, value, None)
                return value
            self._notify(chat.key, refusal(question, text))
        seconds = question.timeout
        if seconds is not None:
            ticket = chat.ticket = next(self._tickets)
            self._set_timer(chat, seconds, Wake(chat, ticket))
        if chat.replaying:  # asked before the restart: don't ask twice
            self._later(self.frontend.restored, chat.key, question)
        elif self._confirming:
            self._show(self._as_question, chat.key, question)
        else:  # _show without a receipt, inlined: its frame was ~600 instructions a step
            self._outbox.append((self._as_question[1], chat.key, question, None))
        return _PARK

    def _call(self, chat: _Chat, call: Call) -> Any:
        ticket = chat.ticket = next(self._tickets)
        self._later(self.frontend.working, chat.key, call)
        started = time.monotonic()
        self._later(self._workers.submit, call.run, (chat, ticket, started), self._call_ended)
        return _PARK

    def _sleep(self, chat: _Chat, sleep: Sleep) -> Any:
        ticket = chat.ticket = next(self._tickets)
        self._later(self.frontend.working, chat.key, sleep)
        self._set_timer(chat, sleep.seconds, Wake(chat, ticket))
        return _PARK

    def _who(self, chat: _Chat, who: Who) -> Any:
        return self._recorded(chat, who, lambda: self._user(chat.key))

    def _recall(self, chat: _Chat, recall: Recall) -> Any:
        def recalled() -> dict[str, Any]:
            kept = self.journal.recall(self._user(chat.key).id)
            return {} if kept is None else pickle.loads(kept)  # a fresh copy each time

        return self._recorded(chat, recall, recalled)

    def _remember(self, chat: _Chat, remember: Remember) -> Any:
        return self._recorded(
            chat, remember, lambda: self.journal.remember(self._user(chat.key).id, remember.blob)
        )

    def _forget_memory(self, chat: _Chat, forget: Forget) -> Any:
        return self._recorded(
            chat, forget, lambda: self.journal.remember(self._user(chat.key).id, None)
        )

    def _recorded(self, chat: _Chat, command: Command, fulfil: Callable[[], Any]) -> Any:
        """Fulfil `command` at once, journaling its value (or error) so replay sends the same."""
        try:
            value = fulfil()
        except Exception as error:
            self.journal.step(chat.key, command, None, error)
            raise
        self.journal.step(chat.key, command, value, None)
        return value

    def _user(self, key: Key) -> User:
        user = self.frontend.user(key)
        if not isinstance(user, User):
            raise TypeError(f"the {self.frontend.name} frontend's user() gave {user!r}, not a User")
        return user

    def _forget_user(self, event: ForgetUser) -> None:
        self.journal.remember(self._user(event.key).id, None)

    def _call_ended(
        self, ticket: tuple[_Chat, int, float], value: Any, error: BaseException | None
    ) -> None:
        """Runs on a worker thread: the result goes through the inbox like anything else."""
        chat, number, started = ticket
        self._inbox.put(Done(chat, number, value, error, time.monotonic() - started))

    # -- timers: events posted at a time ---------------------------------------------

    def _set_timer(self, chat: _Chat, seconds: float, event: Any) -> None:
        """Post `event` `seconds` from now, the deadline journaled for after a restart.

        A conversation rebuilt after a restart keeps the deadline it had, so
        its timer fires at the original moment, not `seconds` after the restart.
        """
        if chat.replaying:
            due = self._due_after_restart.pop(chat.key, None)
            if due is not None:  # still in the journal
                self._push_timer(due + self._wall_to_clock, event)
                return
        self.journal.deadline(chat.key, self._wall_clock() + seconds)
        self._push_timer(self._clock() + seconds, event)

    def _push_timer(self, when: float, event: Any) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_order), event))

    def _arm_expiry(self, chat: _Chat) -> None:
        self._push_timer(chat.last_active + self.idle_timeout, Expire(chat))

    def _fire_timers(self) -> None:
        now = self._clock()
        table = self._table
        while self._timers and self._timers[0][0] <= now:
            event = heapq.heappop(self._timers)[2]
            try:
                table[type(event)](event)
            except Exception:
                log.exception("error handling %r", event)

    # -- delivery: everything that leaves for the frontend -------------------------

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Do `fn(*args)` once this batch is committed."""
        self._outbox.append((_apply, fn, args, None))

    def _notify(self, key: Key, notice: Notice) -> None:
        if self.frontend.notices.get(notice, notice.value):  # an empty text says nothing
            self._show(self._as_notice, key, notice)

    def _show(self, shown: _Shown, key: Key, item: Any) -> None:
        """Hand `item` to the frontend once this batch is committed.

        With a confirming frontend it is journaled under a receipt until the
        frontend confirms it, so one lost in a crash is sent again.
        """
        receipt = None
        if self._confirming:
            receipt = next(self._receipts)
            self.journal.outgoing(receipt, key, shown[0], item)
        self._outbox.append((shown[1], key, item, receipt))

    def _confirm(self, receipt: int) -> None:
        """The frontend's confirmation, from its thread: through the inbox, like anything."""
        self._inbox.put(Sent(receipt))

    def _commit(self) -> None:
        started = time.perf_counter()
        self.journal.commit(self._batch_source)
        self._observer.committed(time.perf_counter() - started)
        if self._batch_source is not None:
            self._committed_source = self._batch_source
        outbox, self._outbox = self._outbox, []
        presenters = (self._as_message[1], self._as_question[1], self._as_notice[1])
        # Every entry has one shape, a function and three arguments: unpacked
        # and called as they are, with no slice and no star-call (~250
        # instructions a step less, callgrind).
        for fn, first, second, third in outbox:
            try:
                fn(first, second, third)
            except Exception:  # a frontend bug must not stop the scheduler
                log.exception("the %s frontend failed", self.frontend.name)
                if fn in presenters:  # that conversation's user saw nothing
                    self._inbox.put(Broken(first))
        try:
            self.frontend.committed(self._committed_source)
        except Exception:
            log.exception("the %s frontend failed", self.frontend.name)

    # -- recovery -------------------------------------------------------------

    def recover(self) -> int:
        """Rebuild every unfinished conversation the journal holds; returns how many.

        Each is rebuilt by :meth:`Runner.rebuild`: its snapshot restored and
        its recorded values sent into a fresh generator. Nothing is repeated:
        outputs were shown before and are skipped, a recorded ``Call`` result
        is sent in instead of calling again. Where the flow now yields
        something other than what was recorded, its code has changed: the
        user is told, and the conversation starts over.
        """
        unsent = self.journal.undelivered() if self._confirming else []
        if unsent:
            self._receipts = itertools.count(unsent[-1][0] + 1)
        self.journal.stamp(self._wall_clock())
        count = self._rebuild_all(self.journal.unfinished(), unsent)
        self._commit()
        return count

    def _adopt(self, event: Adopt) -> None:
        conversations, unsent = event.load()
        count = self._rebuild_all(conversations, unsent if self._confirming else [])
        log.info("adopted %d conversation(s) from the journal", count)

    def _drop(self, event: Drop) -> None:
        leaving = [key for key in self._chats if event.leaving(key)]
        for key in leaving:
            del self._chats[key]  # its timers and late results find it gone
            self._overflowing.discard(key)
            self.journal.dropped(key)
        self._expired = {key for key in self._expired if not event.leaving(key)}
        self._later(event.done.set)  # once this batch, the last written here, is committed

    def _rebuild_all(
        self, conversations: Iterable[Saved], unsent: list[tuple[int, str, Delivery, Any]]
    ) -> int:
        """Send `unsent` again, then rebuild `conversations`; how many."""
        if unsent:
            log.info("sending again %d message(s) not sent before the restart", len(unsent))
        for receipt, key, kind, item in unsent:  # lost in the crash: out first, in order
            self._outbox.append((self._shown[kind][1], key, item, receipt))
        count = 0
        # One reading of both clocks for all: overdue timers keep their order.
        self._wall_to_clock = self._clock() - self._wall_clock()
        for saved in conversations:
            try:
                self._rebuild(saved)
            except Diverged as reason:
                log.warning("conversation %s starts over: %s", saved.key, reason)
                self.journal.ended(saved.key)
                self._observer.ended(saved.key, RESTARTED)
                self._notify(saved.key, Notice.RESTARTED)
                self._launch(saved.key)
            count += 1
        self._due_after_restart.clear()
        self._observer.rebuilt(count)
        return count

    def _rebuild(self, saved: Saved) -> None:
        now = self._clock()
        if saved.last_active is not None:  # idle since then, restart or not
            now = min(now, saved.last_active + self._wall_to_clock)
        if saved.deadline is not None:
            self._due_after_restart[saved.key] = saved.deadline
        chat = _Chat(saved.key, Runner.restored(saved.snapshot), now)
        chat.replay(saved.steps)
        if saved.notes:  # before it asks again: `restored` may need them
            self._later(self.frontend.reopened, saved.key, saved.notes)
        chat.entered = self._on_enter
        chat.replaying = True
        if saved.mailbox:
            chat.mailbox = deque(saved.mailbox)
        self._chats[saved.key] = chat
        self._arm_expiry(chat)
        self._go_on(chat)
