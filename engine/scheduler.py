"""The scheduler: many conversations, one thread, no asyncio.

Each conversation is a generator (see :func:`engine.states.conversation`).
The scheduler sends a value in, gets a command out, and looks the command's
type up in one table of handlers, as curio's kernel does with its traps. A
handler either answers at once (a ``Print`` is delivered and the generator
goes on) or parks the conversation until something arrives in the inbox: a
user's message, a ``Call``'s result from a worker thread, a timer.

The inbox is the only way in. Other threads (a polling thread, the workers)
put events in it and never touch a generator, so no generator is ever run by
two threads and no flow needs a lock.

Events are taken in batches: everything waiting in the inbox at once. A batch
is one journal transaction, committed before anything it caused leaves the
engine. Until then, messages for the frontend and ``Call``s for the workers
wait in an outbox. So after a crash the world has seen nothing that the
journal cannot replay.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from engine.commands import (
    Call,
    Cancelled,
    Choose,
    Command,
    Input,
    Print,
    Sleep,
    UnsupportedCommand,
)
from engine.frontend import Frontend, Notice
from engine.journal import Journal, JournalError, Saved, fingerprint
from engine.states import Conversation, Entered, Flow, State, conversation, restore
from engine.workers import WorkerPool

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 24 * 3600.0

# Inbox event kinds. Events are plain tuples: (kind, target, payload, source).
_BEGIN, _TEXT, _CANCEL, _DONE, _POST, _SENT, _STOP = range(7)
# Timer kinds.
_WAKE, _EXPIRE = range(2)

#: How many expired conversations are remembered, to tell them so.
_MAX_EXPIRED_KEYS = 100_000

#: The most inbox events taken in one batch. Everything a batch sends waits in
#: the outbox until its commit; with thousands of events those entries outlive
#: the young garbage collections, get promoted, and set off full collections
#: that walk every live conversation. 256 keeps them young; one SQLite commit
#: per 256 events costs next to nothing.
_MAX_BATCH = 256

#: Sources (Telegram update ids) increase by one per update, so one that is
#: not above the last taken was taken before, and is skipped. Not if it is far
#: below, though: after a week without updates Telegram starts again from a
#: random id, which must be taken.
_REDELIVERY_WINDOW = 1_000_000

#: A handler's answer meaning "no value yet: park until an event arrives".
_PARK = object()


class _Chat:
    """One running conversation: its generator and what it waits on."""

    __slots__ = (
        "key", "last_active", "mailbox", "replaying", "state", "steps", "ticket", "waiting",
    )

    def __init__(self, key: str, steps: Conversation, now: float) -> None:
        self.key = key
        self.steps = steps
        self.waiting: Command | None = None  # the command it is parked on
        self.mailbox: deque[str] | None = None  # made on first use: most never need one
        self.ticket = 0  # which Call/Sleep result it waits for; older ones are stale
        self.last_active = now
        self.state: State | None = None
        self.replaying = False  # rebuilding after a restart: Prints were already shown


class Scheduler:
    """Runs conversations of `flow` for a `frontend`, on one thread.

    ``begin``, ``send`` and ``cancel`` are safe to call from any thread; they
    only post an event. `source` is an optional, increasing id of what caused
    the event (Telegram's update id): with a journal, an event whose source
    was already committed is skipped, so a redelivered update is taken once.
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
    ) -> None:
        self.frontend = frontend
        self.flow = flow
        self.idle_timeout = idle_timeout
        self.journal = journal or Journal()
        self._clock = clock
        self._inbox: queue.SimpleQueue[tuple[int, Any, Any, int | None]] = queue.SimpleQueue()
        self._chats: dict[str, _Chat] = {}
        self._expired: set[str] = set()
        self._timers: list[tuple[float, int, int, _Chat, int]] = []
        self._timer_order = itertools.count()
        self._tickets = itertools.count(1)
        self._outbox: list[tuple[Any, ...]] = []
        self._workers = WorkerPool(workers)
        self._thread: threading.Thread | None = None
        self._last_source = self.journal.last_source()
        self._committed_source = self._last_source
        self._batch_source: int | None = None
        #: Why the scheduler stopped by itself (its journal failed), or None.
        self.halted: str | None = None
        # The table: what to do with each kind of command a flow yields.
        self._handlers: dict[type, Callable[[_Chat, Any], Any]] = {
            Print: self._print,
            Input: self._ask,
            Choose: self._ask,
            Call: self._call,
            Sleep: self._sleep,
        }
        for extra in frontend.extra_commands:
            self._handlers[extra] = self._print
        # Bound once: an outbox entry then costs one tuple, not three objects.
        self._deliver = frontend.deliver
        self._ask_user = frontend.ask
        # With a frontend that confirms what it sent, each output is journaled
        # until confirmed, so one lost in a crash is sent again after it.
        self._confirmed_outputs = frontend.confirms_delivery and journal is not None
        self._receipts = itertools.count(1)
        if self._confirmed_outputs:
            frontend.bind(self._output_sent)

    # -- the thread-safe API --------------------------------------------

    def begin(self, key: str, *, source: int | None = None) -> None:
        """Start a conversation for `key` (tells the user if one is running)."""
        self._inbox.put((_BEGIN, key, None, source))

    def send(self, key: str, text: str, *, source: int | None = None) -> None:
        """Hand a user's message to `key`'s conversation, in order."""
        self._inbox.put((_TEXT, key, text, source))

    def cancel(self, key: str, *, source: int | None = None) -> None:
        """End `key`'s conversation: its flow sees :class:`Cancelled` at its ``yield``."""
        self._inbox.put((_CANCEL, key, None, source))

    def post(self, action: Callable[[], Any] | None, *, source: int | None = None) -> None:
        """Run `action` on the scheduler's thread, after the current batch commits.

        For a frontend's own replies (``/help``, a hint): they then keep their
        place among the conversations' messages and, with a `source`, are
        taken once like everything else. With no `action` it only marks
        `source` as taken (an update the frontend ignores).
        """
        self._inbox.put((_POST, None, action, source))

    def already_taken(self, source: int) -> bool:
        """Whether an event from `source` was taken before (so would be skipped)."""
        last = self._last_source
        return last is not None and last - _REDELIVERY_WINDOW < source <= last

    @property
    def committed_source(self) -> int | None:
        """The highest source whose effects are durable (with a journal), from any thread.

        A frontend confirms its updates to their sender no further than this.
        """
        return self._committed_source

    @property
    def last_source(self) -> int | None:
        """The highest event source taken so far (and journaled, with a journal)."""
        return self._last_source

    def running(self) -> int:
        """How many conversations are in progress (a snapshot, from any thread)."""
        return len(self._chats)

    # -- owning the thread ------------------------------------------------

    def start(self) -> None:
        """Rebuild journaled conversations, then run on a thread of its own."""
        if self._thread is not None:
            raise RuntimeError("the scheduler is already started")
        self._workers.start()
        try:
            self.recover()
        except JournalError as error:
            self._halt(str(error))
            return
        self._thread = threading.Thread(target=self.run, name="engine-scheduler")
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the thread and the workers; returns within about `timeout` seconds.

        Conversations are left as they are: with a journal they go on after
        the next start.
        """
        deadline = time.monotonic() + timeout
        self._inbox.put((_STOP, None, None, None))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.error("the scheduler thread did not stop in time")
        self._workers.stop(deadline)

    def run(self) -> None:
        """The loop: take a batch of events, handle it, commit, release the outbox."""
        while True:
            batch = self._take_batch()
            stopping = False
            self._batch_source = None
            for event in batch:
                if event[0] == _STOP:
                    stopping = True
                    break
                try:
                    self._handle(event)
                except Exception:  # a bug here must not stop every other conversation
                    log.exception("error handling event %r", event[:2])
            self._fire_timers()
            try:
                self._commit()
            except JournalError as error:
                self._halt(str(error))
                return
            if stopping:
                return

    def _halt(self, reason: str) -> None:
        """The journal cannot be written: going on would lose what users say. Stop."""
        self.halted = reason
        log.error("%s; the engine stops, since nothing more could be kept", reason)
        try:
            self.frontend.halted(reason)
        except Exception:
            log.exception("the %s frontend failed", self.frontend.name)

    # -- events -------------------------------------------------------------

    def _take_batch(self) -> list[tuple[int, Any, Any, int | None]]:
        timeout = 1.0
        if self._timers:
            timeout = min(timeout, max(0.0, self._timers[0][0] - self._clock()))
        try:
            batch = [self._inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        try:
            while len(batch) < _MAX_BATCH:
                batch.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        return batch

    def _handle(self, event: tuple[int, Any, Any, int | None]) -> None:
        kind, target, payload, source = event
        if source is not None:
            if self.already_taken(source):
                log.debug("skipping event from source %s: already taken", source)
                return
            self._last_source = self._batch_source = source
        if kind == _TEXT:
            self._text(target, payload)
        elif kind == _DONE:
            self._call_done(target, payload)
        elif kind == _BEGIN:
            self._begin(target)
        elif kind == _CANCEL:
            self._cancel(target)
        elif kind == _POST and payload is not None:
            self._later(payload)
        elif kind == _SENT:
            self.journal.delivered(payload)

    def _begin(self, key: str) -> None:
        self._expired.discard(key)
        if key in self._chats:
            self._notify(key, Notice.ALREADY_RUNNING)
            return
        self._launch(key)

    def _launch(self, key: str) -> None:
        chat = _Chat(key, conversation(self.flow), self._clock())
        self._chats[key] = chat
        self._arm_expiry(chat)
        log.debug("conversation %s begins", key)
        self._resume(chat, None)

    def _text(self, key: str, text: str) -> None:
        chat = self._chats.get(key)
        if chat is None:
            if key in self._expired:
                self._expired.discard(key)
                self._notify(key, Notice.EXPIRED)
            else:
                self._notify(key, Notice.NOT_STARTED)
            return
        chat.last_active = self._clock()
        waiting = chat.waiting
        if type(waiting) is Input and not chat.mailbox:  # the common case, inlined
            self.journal.step(key, waiting, text, None)
            self._resume(chat, text)
        elif isinstance(waiting, (Input, Choose)) and not chat.mailbox:
            self._answer(chat, waiting, text)
        else:
            if chat.mailbox is None:
                chat.mailbox = deque()
            chat.mailbox.append(text)
            self.journal.queued(key, text)

    def _answer(self, chat: _Chat, question: Input | Choose, text: str) -> None:
        """Send an answer in, or re-ask when it names no option."""
        value = self._validate(chat, question, text)
        if value is None:
            self._show("ask", chat.key, question)
        else:
            self.journal.step(chat.key, question, value, None)
            self._resume(chat, value)

    def _validate(self, chat: _Chat, question: Input | Choose, text: str) -> str | None:
        if isinstance(question, Input):
            return text
        option = question.match(text)
        if option is None:
            self._notify(chat.key, Notice.TRY_AGAIN)
        return option

    def _cancel(self, key: str) -> None:
        chat = self._chats.get(key)
        if chat is None:
            self._expired.discard(key)
            self._notify(key, Notice.NOT_STARTED)
            return
        self._close(chat, Cancelled())
        self._notify(key, Notice.CANCELLED)
        self._forget(chat)

    def _call_done(self, chat: _Chat, payload: tuple[int, Any, BaseException | None]) -> None:
        ticket, value, error = payload
        if self._chats.get(chat.key) is not chat or chat.ticket != ticket:
            log.debug("ignoring a late result for %s (ticket %s)", chat.key, ticket)
            return
        assert chat.waiting is not None
        self.journal.step(chat.key, chat.waiting, value, error)
        self._resume(chat, value, error)

    # -- running a generator ------------------------------------------------

    def _resume(self, chat: _Chat, value: Any, error: BaseException | None = None) -> None:
        """Send `value` (or throw `error`) in and run until the flow must wait."""
        chat.waiting = None
        while True:
            try:
                command = chat.steps.throw(error) if error is not None else chat.steps.send(value)
            except StopIteration:
                log.debug("conversation %s finished", chat.key)
                self._forget(chat)
                return
            except BaseException:  # even SystemExit: it must not stop everyone's thread
                self._crashed(chat)
                return
            error = None
            if isinstance(command, Entered):
                chat.state = command.state
                try:
                    self.journal.entered(chat.key, command.state)
                except Exception:  # e.g. a field that cannot be saved: a bug in the flow
                    self._crashed(chat)
                    return
                value = None
                continue
            handler = self._handlers.get(type(command))
            if handler is None:
                value, error = None, UnsupportedCommand(command, self.frontend.name)
                continue
            try:
                outcome = handler(chat, command)
            except Exception as failure:  # a malformed command, e.g. Sleep("1"): at its yield
                value, error = None, failure
                continue
            if outcome is _PARK:
                chat.waiting = command
                chat.replaying = False
                return
            value = outcome

    def _crashed(self, chat: _Chat) -> None:
        state = type(chat.state).__name__ if chat.state is not None else "?"
        log.exception("conversation %s failed in state %s", chat.key, state)
        self._notify(chat.key, Notice.FAILED)
        self._forget(chat)

    def _close(self, chat: _Chat, error: BaseException) -> None:
        """Throw `error` in so the flow's ``finally`` blocks run, then drop it."""
        try:
            chat.steps.throw(error)
        except (StopIteration, type(error)):
            return
        except BaseException:
            log.exception("conversation %s failed while closing", chat.key)
            return
        log.warning("conversation %s went on after %s; closing it", chat.key, type(error).__name__)
        chat.steps.close()

    def _forget(self, chat: _Chat) -> None:
        if self._chats.get(chat.key) is chat:
            del self._chats[chat.key]
        chat.ticket = -1
        self.journal.ended(chat.key)
        self._later(self.frontend.ended, chat.key)

    # -- the handlers: one per command type -------------------------------

    def _print(self, chat: _Chat, command: Command) -> Any:
        if not chat.replaying:
            if self._confirmed_outputs:
                self._show("deliver", chat.key, command)
            else:
                self._outbox.append((self._deliver, chat.key, command))
        return None

    def _ask(self, chat: _Chat, question: Input | Choose) -> Any:
        while chat.mailbox:
            text = chat.mailbox.popleft()
            self.journal.dequeued(chat.key)
            value = self._validate(chat, question, text)
            if value is not None:
                self.journal.step(chat.key, question, value, None)
                return value
        if chat.replaying:  # asked before the restart: don't ask twice
            self._later(self.frontend.restored, chat.key, question)
        else:
            if self._confirmed_outputs:
                self._show("ask", chat.key, question)
            else:
                self._outbox.append((self._ask_user, chat.key, question))
        return _PARK

    def _call(self, chat: _Chat, call: Call) -> Any:
        ticket = chat.ticket = next(self._tickets)
        self._later(self.frontend.working, chat.key, call)
        self._later(self._workers.submit, call.run, (chat, ticket), self._post_result)
        return _PARK

    def _sleep(self, chat: _Chat, sleep: Sleep) -> Any:
        ticket = chat.ticket = next(self._tickets)
        self._later(self.frontend.working, chat.key, sleep)
        self._push_timer(self._clock() + sleep.seconds, _WAKE, chat, ticket)
        return _PARK

    def _post_result(
        self, ticket: tuple[_Chat, int], value: Any, error: BaseException | None
    ) -> None:
        """Runs on a worker thread: the result goes through the inbox like anything else."""
        chat, number = ticket
        self._inbox.put((_DONE, chat, (number, value, error), None))

    # -- timers ---------------------------------------------------------------

    def _push_timer(self, when: float, kind: int, chat: _Chat, ticket: int) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_order), kind, chat, ticket))

    def _arm_expiry(self, chat: _Chat) -> None:
        self._push_timer(chat.last_active + self.idle_timeout, _EXPIRE, chat, 0)

    def _fire_timers(self) -> None:
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, chat, ticket = heapq.heappop(self._timers)
            if self._chats.get(chat.key) is not chat:
                continue
            if kind == _WAKE and chat.ticket == ticket:
                assert chat.waiting is not None
                self.journal.step(chat.key, chat.waiting, None, None)
                self._resume(chat, None)
            elif kind == _EXPIRE:
                self._expire_if_idle(chat, now)

    def _expire_if_idle(self, chat: _Chat, now: float) -> None:
        # One expiry timer per conversation, moved on lazily: cheaper than
        # re-arming it on every message.
        waits_on_user = isinstance(chat.waiting, (Input, Choose))
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
        self._forget(chat)

    # -- the outbox -----------------------------------------------------------

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Do `fn(*args)` once this batch is committed."""
        self._outbox.append((fn, *args))

    def _notify(self, key: str, notice: Notice) -> None:
        if self.frontend.notices.get(notice, notice.value):  # an empty text says nothing
            self._show("notify", key, notice)

    def _show(self, kind: str, key: str, item: Any) -> None:
        """Hand `item` to the frontend's `kind` method once this batch is committed."""
        if not self._confirmed_outputs:
            self._later(getattr(self.frontend, kind), key, item)
            return
        receipt = next(self._receipts)
        self.journal.outgoing(receipt, key, kind, item)
        self._later(self._hand_over, receipt, kind, key, item)

    def _hand_over(self, receipt: int, kind: str, key: str, item: Any) -> None:
        self.frontend.receipt = receipt
        try:
            getattr(self.frontend, kind)(key, item)
        finally:
            self.frontend.receipt = None

    def _output_sent(self, receipt: int) -> None:
        """The frontend's confirmation, from its thread: through the inbox, like anything."""
        self._inbox.put((_SENT, None, receipt, None))

    def _commit(self) -> None:
        self.journal.commit(self._batch_source)
        if self._batch_source is not None:
            self._committed_source = self._batch_source
        outbox, self._outbox = self._outbox, []
        for entry in outbox:
            try:
                entry[0](*entry[1:])
            except Exception:  # a frontend bug must not stop the scheduler
                log.exception("the %s frontend failed", self.frontend.name)
        try:
            self.frontend.committed(self._committed_source)
        except Exception:
            log.exception("the %s frontend failed", self.frontend.name)

    # -- recovery -------------------------------------------------------------

    def recover(self) -> int:
        """Rebuild every unfinished conversation the journal holds; returns how many.

        Each is rebuilt by sending its recorded values into a fresh generator.
        Nothing is repeated: ``Print``s were shown before and are skipped, a
        recorded ``Call`` result is sent in instead of calling again. Where the
        flow now yields something other than what was recorded, its code has
        changed: the user is told, and the conversation starts over.
        """
        unsent = self.journal.undelivered() if self._confirmed_outputs else []
        if unsent:
            self._receipts = itertools.count(unsent[-1][0] + 1)
        for receipt, key, kind, item in unsent:  # lost in the crash: out first, in order
            self._later(self._hand_over, receipt, kind, key, item)
        if unsent:
            log.info("sending again %d message(s) not sent before the restart", len(unsent))
        count = 0
        for saved in self.journal.unfinished():
            try:
                self._rebuild(saved)
            except _Diverged as reason:
                log.warning("conversation %s starts over: %s", saved.key, reason)
                stale = self._chats.pop(saved.key, None)
                if stale is not None:
                    stale.steps.close()
                self.journal.ended(saved.key)
                self._notify(saved.key, Notice.RESTARTED)
                self._launch(saved.key)
            count += 1
        self._commit()
        return count

    def _rebuild(self, saved: Saved) -> None:
        try:
            state = restore(saved.state_class, saved.state_fields)
        except LookupError as gone:
            raise _Diverged(str(gone)) from None
        chat = _Chat(saved.key, conversation(state), self._clock())
        chat.replaying = True
        chat.state = state
        self._chats[saved.key] = chat
        next(chat.steps)  # the Entered marker of the snapshot's own state
        value: Any = None
        error: BaseException | None = None
        for step in saved.steps:
            command = self._next_command(chat, value, error)
            if command is None or fingerprint(command) != step.fingerprint:
                raise _Diverged(f"expected {step.fingerprint}, the flow gave {command!r}")
            value, error = step.value, step.error
        if saved.mailbox:
            chat.mailbox = deque(saved.mailbox)
        self._arm_expiry(chat)
        self._resume(chat, value, error)

    def _next_command(self, chat: _Chat, value: Any, error: BaseException | None) -> Command | None:
        """Replay one step: the next command that takes a value, skipping Prints."""
        try:
            command = chat.steps.throw(error) if error is not None else chat.steps.send(value)
            while isinstance(command, Entered) or self._handlers.get(type(command)) == self._print:
                command = next(chat.steps)
        except StopIteration:
            return None
        except Exception as failure:
            raise _Diverged(f"the flow failed during replay: {failure!r}") from None
        return command


class _Diverged(Exception):
    """A journaled conversation no longer replays as recorded."""
