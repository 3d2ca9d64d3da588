"""The Telegram bot's outbox: ordered, paced, retried sending on a few threads.

Nothing here knows about pyTelegramBotAPI: the outbox calls a :class:`BotApi`
(see ``frontends.telegram.api`` for the real one) that turns every failure into
:class:`RetryAfter`, :class:`TransientError` or :class:`PermanentError`. That
keeps the ordering, pacing and retry rules testable without any HTTP.

* Each chat has its own *lane*: a FIFO of jobs, at most one of them in
  flight. Lanes wait on a timeline (a heap) until they are due, and any free
  sender thread takes the next due lane: a slow request holds up its own
  chat only, never the chats beside it, and a lane waiting for its pace, a
  ``retry_after`` or a backoff holds no thread at all.
* Answers to button presses have lanes of their own, never paced, that any
  sender takes first, plus a sender of their own: Telegram rejects an answer
  that comes late, so it never waits behind the chat's messages.
* Pacing: a token bucket per chat (about one message a second with short
  bursts), another per group chat (Telegram allows about 20 a minute there)
  and one shared by all threads (about 30 a second). Rate ``0`` turns a
  bucket off.
* A failure that may pass (a 5xx, a timeout, a 429) is never a reason to
  give up: the job waits, with backoff capped at ``Retrying.max_backoff``
  (``retry_after`` capped at :data:`MAX_RETRY_AFTER`), for as long as it
  takes, and the chat's later jobs wait behind it, in order. A lane waiting
  costs nothing but a timer. Staying up is never less safe than crashing:
  a message is confirmed (``on_done``) only once Telegram took it.
* Only an answer that can never succeed ends a job: the chat is gone
  (:class:`ChatGone`: 403 blocked, 400 chat not found), which drops every
  job queued for it with one log line, or a request Telegram refuses
  (another :class:`PermanentError`), logged as the bug it is.
* Jobs still queued when the bot stops are not confirmed, so with a journal
  they are sent after the restart; one INFO line counts them.
* When a conversation moves to another instance (shared mode), its jobs not
  yet started are left to the new owner and those in flight are waited for,
  with the rest of a reply in several messages under way (:meth:`Outbox.settle`),
  so a reply is not sent by both.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from frontends.programs import backoff

log = logging.getLogger("frontends.telegram.outbox")

#: Telegram's limit on a message's text, in UTF-16 code units.
MESSAGE_LIMIT = 4096
#: How often to repeat the "typing" action while a Call runs (it shows for 5 s).
TYPING_EVERY = 4.5
#: Stop repeating "typing" after this long even if the Call still runs.
TYPING_AT_MOST = 300.0
#: "typing" starts only once a Call has run this long: one answered sooner (a lookup takes
#: milliseconds) shows its answer instead, without a Bot API call. The webhook bot sent 940
#: "typing" calls for 1,400 updates in bench/telegram_bench.py, about 190 µs of CPU per update.
TYPING_AFTER = 0.5

#: Inline keyboard: rows of one (button text, callback data) each.
Keyboard = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------- errors


class SendError(Exception):
    """Base of the errors a :class:`BotApi` raises."""


class RetryAfter(SendError):
    """HTTP 429: Telegram asks to wait `seconds` before trying again."""

    def __init__(self, seconds: float, reason: str = "") -> None:
        super().__init__(reason or f"retry after {seconds:g}s")
        self.seconds = seconds


class TransientError(SendError):
    """Worth retrying with backoff: 5xx, connection errors, timeouts."""


class PermanentError(SendError):
    """Retrying cannot help: 400 Bad Request, 403 Forbidden (blocked), ..."""


class ChatGone(PermanentError):
    """The chat can take nothing more: the user blocked the bot, or the chat is gone."""


#: The longest wait a ``retry_after`` may impose, in seconds. A server asking
#: for more (a misbehaving proxy, ``1e400``) is waited this long, then tried again.
MAX_RETRY_AFTER = 300.0


class BotApi(Protocol):
    """The few Bot API calls the outbox makes. Failures raise :class:`SendError`."""

    def send_message(
        self,
        chat_id: int,
        text: str,
        *,
        reply_to: int | None,
        keyboard: Keyboard | None,
        force_reply: bool,
    ) -> int:
        """Send a plain-text message; return its message_id."""
        ...

    def send_chat_action(self, chat_id: int, action: str) -> None: ...

    def edit_text(self, chat_id: int, message_id: int, text: str) -> None:
        """Replace a message's text (which also removes its inline keyboard)."""
        ...

    def remove_keyboard(self, chat_id: int, message_id: int) -> None: ...

    def answer_callback(self, callback_id: str, text: str | None) -> None: ...


# ---------------------------------------------------------------- splitting

_SENTENCE_END = re.compile(r"[.!?\u2026][\"')\]\u00bb\u201d]*\s+")
_WHITESPACE = re.compile(r"\s+")


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int) -> int:
    """The largest n such that ``text[:n]`` is at most `limit` UTF-16 units."""
    units = 0
    for n, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return n
    return len(text)


def _cut_point(text: str, fits: int) -> int:
    """Where to cut `text`, of which the first `fits` characters fit a message.

    Paragraph, then line, then sentence, then word boundaries, provided the
    cut keeps at least half of what fits; otherwise a hard cut (not between
    a character and a combining mark or joiner that follows it).
    """
    window = text[:fits]
    least = max(1, fits // 2)
    for separator in ("\n\n", "\n"):
        at = window.rfind(separator)
        if at >= least:
            return at
    sentence = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() >= least]
    if sentence:
        return sentence[-1]
    words = [m.start() for m in _WHITESPACE.finditer(window) if m.start() >= least]
    if words:
        return words[-1]
    cut = fits
    while cut > least and _joins_previous(text[cut - 1 : cut + 1]):
        cut -= 1
    return cut


def _joins_previous(pair: str) -> bool:
    """Whether the second character of `pair` belongs with the first."""
    if len(pair) < 2:
        return False
    char = pair[1]
    return bool(unicodedata.combining(char)) or char in "\u200d\ufe0f" or pair[0] == "\u200d"


def split_text(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split `text` into messages of at most `limit` UTF-16 units each.

    Cuts on paragraph, line, sentence or word boundaries where it can; the
    blanks at a cut are dropped, and blank-only pieces are left out (Telegram
    rejects empty messages).
    """
    if limit < 2:
        raise ValueError("limit must be at least 2")
    pieces: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        cut = _cut_point(rest, _fit(rest, limit))
        piece = rest[:cut].rstrip()
        if piece.strip():
            pieces.append(piece)
        rest = rest[cut:].lstrip()
    if rest.strip():
        pieces.append(rest)
    return pieces


# ---------------------------------------------------------------- pacing


class Bucket:
    """A token bucket: `rate` tokens a second, holding at most `capacity`.

    ``rate <= 0`` means unlimited. Not thread-safe by itself (lanes belong to
    one thread); :class:`SharedBucket` adds a lock.
    """

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, capacity)
        self.tokens = self.capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0 if one is now)."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        """Use a token (call after :meth:`wait` returned 0)."""
        if self.rate > 0:
            self._refill(now)
            self.tokens -= 1.0

    def full(self, now: float) -> bool:
        if self.rate <= 0:
            return True
        self._refill(now)
        return self.tokens >= self.capacity


class SharedBucket(Bucket):
    """A :class:`Bucket` shared by all sender threads (the global rate)."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        super().__init__(rate, capacity, now)
        self._lock = threading.Lock()

    def try_take(self, now: float) -> float:
        """Take a token if there is one and return 0, else the seconds to wait."""
        with self._lock:
            wait = self.wait(now)
            if wait == 0.0:
                self.take(now)
            return wait


@dataclass(frozen=True)
class Pacing:
    """Sending rates; any rate ``0`` switches that limit off."""

    chat_rate: float = 1.0  # messages a second to one chat ...
    chat_burst: float = 3.0  # ... after a burst of this many
    group_per_minute: float = 20.0  # messages a minute to one group
    global_rate: float = 30.0  # messages a second overall (also the burst)

    @classmethod
    def off(cls) -> Pacing:
        return cls(chat_rate=0.0, chat_burst=1.0, group_per_minute=0.0, global_rate=0.0)


@dataclass(frozen=True)
class Retrying:
    """How long to wait between attempts of a job that failed for now (it is never given up)."""

    first_backoff: float = 0.25  # seconds, doubled each transient failure ...
    max_backoff: float = 30.0  # ... up to this


# ---------------------------------------------------------------- jobs


def _leaves(output: Callable[[], None] | None, leaving: Callable[[str], bool]) -> bool:
    """Whether `output` (its ``on_done``) names a conversation, and `leaving` names that one."""
    owner: str | None = getattr(output, "key", None)
    return owner is not None and leaving(owner)


@dataclass(eq=False)
class Job:
    """One Bot API call for one chat."""

    chat_id: int
    #: The output it is (a part of), named by the ``on_done`` that confirms that
    #: output once its last job is done; a :class:`Confirmation` also names the
    #: conversation whose output it is (see :meth:`Outbox.settle`).
    part_of: Callable[[], None] | None = field(default=None, kw_only=True, repr=False)
    paced = False  # whether it counts against the message rates

    def __post_init__(self) -> None:
        if self.part_of is None:  # a job that confirms an output alone is all of it
            self.part_of = getattr(self, "on_done", None)

    def leaves(self, leaving: Callable[[str], bool]) -> bool:
        """Whether it is a journaled output of a conversation that `leaving` names."""
        return _leaves(self.part_of, leaving)

    def run(self, api: BotApi) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


@dataclass(eq=False)
class SendText(Job):
    text: str
    reply_to: int | None = None
    keyboard: Keyboard | None = None
    force_reply: bool = False
    #: Called on the sender thread with the new message's id and text.
    on_sent: Callable[[int, str], None] | None = None
    #: Called on the sender thread once the message is out, or given up for
    #: good (not when it is dropped because the bot is stopping).
    on_done: Callable[[], None] | None = None
    paced = True

    def run(self, api: BotApi) -> None:
        message_id = api.send_message(
            self.chat_id,
            self.text,
            reply_to=self.reply_to,
            keyboard=self.keyboard,
            force_reply=self.force_reply,
        )
        if self.on_sent is not None:
            self.on_sent(message_id, self.text)

    def describe(self) -> str:
        preview = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        return f"message {preview!r}"


@dataclass(eq=False)
class ChatAction(Job):
    action: str = "typing"

    def run(self, api: BotApi) -> None:
        api.send_chat_action(self.chat_id, self.action)

    def describe(self) -> str:
        return f"chat action {self.action!r}"


@dataclass(eq=False)
class EditMessage(Job):
    """Remove a message's inline keyboard, or replace its text (which does too).

    The message id comes from `message_id` when the job runs, because the
    message may have been queued, not yet sent, when the edit was decided;
    both go through the same lane, so the send has happened by then.
    """

    message_id: Callable[[], int | None] = field(default=lambda: None)
    text: str | None = None
    #: Called once it is done, or given up for good (see :attr:`SendText.on_done`).
    on_done: Callable[[], None] | None = None
    paced = True

    def run(self, api: BotApi) -> None:
        message_id = self.message_id()
        if message_id is None:  # the message itself was never sent (logged then)
            return
        if self.text is None:
            api.remove_keyboard(self.chat_id, message_id)
        else:
            api.edit_text(self.chat_id, message_id, self.text)

    def describe(self) -> str:
        return "keyboard removal" if self.text is None else "message edit"


@dataclass(eq=False)
class AnswerCallback(Job):
    """The answer to a button press: sent at once by a thread of its own, never paced.

    Telegram shows a spinner on the button until it comes, and rejects one
    that comes late, so it never waits behind the chat's messages.
    """

    callback_id: str = ""
    text: str | None = None
    on_done: Callable[[], None] | None = None

    def run(self, api: BotApi) -> None:
        api.answer_callback(self.callback_id, self.text)

    def describe(self) -> str:
        return f"answer to a button press ({self.text or 'no text'})"


@dataclass(eq=False)
class _Typing(Job):
    """Internal: start (or with ``on=False`` stop) repeating "typing" in a chat."""

    on: bool = True


@dataclass(frozen=True, slots=True)
class Confirmation:
    """An ``on_done`` that confirms output `receipt` of the conversation `key`.

    The outbox reads `key` to know whose jobs they are: when that conversation
    moves to another instance, its jobs not yet started are left to the new
    owner (see :meth:`Outbox.settle`).
    """

    key: str
    receipt: int
    confirm: Callable[[int], None]

    def __call__(self) -> None:
        self.confirm(self.receipt)


# ---------------------------------------------------------------- lanes and senders


class _Lane:
    """The queued jobs of one chat (or of one chat's button answers), and when the next may go.

    At most one request of a lane is in flight at a time (`busy`), which keeps
    the chat's order. A lane that is not busy and has something to do (or
    buckets still refilling) is on its timeline, at the moment it may go
    (`entry`, the heap entry that is current; older ones are stale).
    """

    __slots__ = ("buckets", "busy", "chat_id", "current", "entry", "failures", "jobs",
                 "not_before", "started", "throttled", "timeline", "typing_next",
                 "typing_until")  # fmt: skip

    def __init__(self, chat_id: int, buckets: list[Bucket], timeline: _Timeline) -> None:
        self.chat_id = chat_id
        self.timeline = timeline
        self.jobs: collections.deque[Job] = collections.deque()
        self.not_before = 0.0  # retry_after / backoff
        self.failures = 0  # transient failures of the head job
        self.throttled = 0  # 429s of the head job
        self.buckets = buckets
        self.typing_next: float | None = None  # when to send "typing" again
        self.typing_until = 0.0
        self.busy = False
        self.current: Job | None = None  # the job in flight (None: none, or "typing")
        #: The output (``part_of``) of the job begun last: the rest of it is under way.
        self.started: Callable[[], None] | None = None
        self.entry: tuple[float, int, _Lane] | None = None

    def continues(self, job: Job) -> bool:
        """Whether `job` is a later part of the output under way (a long text's next message)."""
        return job is not self.current and job.part_of is not None and job.part_of is self.started

    def under_way(self) -> int:
        """How many jobs are left of the output under way, not counting the one in flight."""
        return sum(1 for job in self.jobs if self.continues(job))

    def ready_at(self, now: float) -> float | None:
        """When this lane has something to do (None: nothing)."""
        if self.jobs:
            at = self.not_before
            if self.jobs[0].paced:
                at = max(at, now + max((bucket.wait(now) for bucket in self.buckets), default=0.0))
            return at
        if self.typing_next is not None:
            return max(self.typing_next, self.not_before)
        return None

    def idle_at(self, now: float) -> float:
        """When, with nothing more queued, it can be forgotten (its buckets full again)."""
        at = self.not_before
        for bucket in self.buckets:
            if bucket.rate > 0:
                bucket.wait(now)  # refills it
                at = max(at, now + (bucket.capacity - bucket.tokens) / bucket.rate)
        return at

    def idle(self, now: float) -> bool:
        return (
            not self.jobs
            and self.typing_next is None
            and self.not_before <= now
            and all(bucket.full(now) for bucket in self.buckets)
        )


class _Timeline:
    """Lanes of one kind by chat, and a heap of when each may go next."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.lanes: dict[int, _Lane] = {}
        self.heap: list[tuple[float, int, _Lane]] = []


class _Sender(threading.Thread):
    """One sender thread: takes whichever lane is due, sends its next job, and so on.

    A lane is served by one sender at a time, so a slow request holds up its
    own chat only. The answers' sender serves button answers only: a press is
    answered at once even while every other sender waits on a slow request.
    """

    def __init__(self, outbox: Outbox, index: int | str, *, answers_only: bool = False) -> None:
        super().__init__(name=f"telegram-sender-{index}", daemon=True)
        self.outbox = outbox
        self.answers_only = answers_only
        self.current: Job | None = None

    def run(self) -> None:
        outbox = self.outbox
        lane: _Lane | None = None
        while True:
            picked = outbox._next(self, lane)
            if picked is None:
                return
            lane, job = picked
            self.current = job
            try:
                outbox._serve(lane, job)
            finally:
                self.current = None


class Outbox:
    """Thread-safe, non-blocking sending to Telegram on `senders` threads (and one for answers).

    Each chat has a lane of jobs; a lane due (its pace, backoff or
    ``retry_after`` passed) is taken by whichever sender is free, one request
    per chat at a time. Button answers have lanes of their own, unpaced, that
    any sender takes first.
    """

    def __init__(
        self,
        api: BotApi,
        *,
        senders: int = 4,
        pacing: Pacing | None = None,
        retrying: Retrying | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if senders < 1:
            raise ValueError("senders must be at least 1")
        self.api = api
        self.pacing = pacing or Pacing()
        self.retrying = retrying or Retrying()
        self.clock = clock
        self.global_bucket = SharedBucket(self.pacing.global_rate, self.pacing.global_rate, clock())
        self.deadline = float("inf")
        self._lock = threading.Lock()  # guards the lanes, the timelines and the counts
        self._work = threading.Condition(self._lock)  # idle senders wait here
        self._answer_work = threading.Condition(self._lock)  # the answers' sender waits here
        self._answerer_waiting = False
        self._settled = threading.Condition(self._lock)  # settle() waits here
        self._settling: Callable[[str], bool] | None = None
        self._messages = _Timeline(answers=False)
        self._answers = _Timeline(answers=True)
        self._order = itertools.count()  # ties on the timelines go first come, first served
        self._queued = 0  # jobs in lanes, in flight included
        self._closed = False
        self._senders = [_Sender(self, index) for index in range(senders)]
        self._senders.append(_Sender(self, "answers", answers_only=True))
        #: Chats whose head job last failed for now (under its own lock: logged from anywhere).
        self._failing: set[int] = set()
        self._failing_lock = threading.Lock()
        self._unsent_at_stop = 0

    # -- what the rest of the bot sees

    @property
    def failing(self) -> bool:
        """Whether some chat's sends are failing for now (Telegram unreachable, 5xx, 429)."""
        return bool(self._failing)

    def queued(self) -> int:
        """Jobs waiting to be sent or in flight (a snapshot)."""
        return self._queued

    def failed(self, chat_id: int, job: Job, reason: str) -> None:
        """A job failed for now and will be tried again (from a sender thread).

        One WARNING when sending starts failing, not one per attempt: an
        outage of minutes would otherwise fill the log.
        """
        with self._failing_lock:
            first = not self._failing
            self._failing.add(chat_id)
        if first:
            log.warning(
                "sending to Telegram fails (chat %s, the %s: %s); retrying until it works, "
                "nothing is dropped", chat_id, job.describe(), reason,
            )  # fmt: skip
        else:
            log.debug("chat %s: the %s failed: %s", chat_id, job.describe(), reason)

    def recovered(self, chat_id: int) -> None:
        """A chat's job went out after failures (from a sender thread)."""
        with self._failing_lock:
            self._failing.discard(chat_id)
            last = not self._failing
        if last:
            log.info("sending to Telegram works again")

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th transient failure in a row (jittered)."""
        return backoff(failures, self.retrying.first_backoff, self.retrying.max_backoff)

    def start(self) -> None:
        for sender in self._senders:
            sender.start()

    def put(self, job: Job) -> None:
        """Queue `job` behind the chat's earlier jobs."""
        timeline = self._answers if isinstance(job, AnswerCallback) else self._messages
        with self._lock:
            if not self._closed:
                self._queue(timeline, job)
                return
        if not isinstance(job, _Typing):  # not confirmed: sent after the restart
            log.debug("chat %s: not sent, stopping: the %s", job.chat_id, job.describe())

    def send_text(
        self,
        chat_id: int,
        text: str,
        *,
        reply_to: int | None = None,
        keyboard: Keyboard | None = None,
        force_reply: bool = False,
        on_sent: Callable[[int, str], None] | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Queue `text`, split into as many messages as it needs.

        The reply goes with the first piece; the keyboard, the force-reply,
        `on_sent` and `on_done` with the last (where the question is). Every
        piece is part of the output `on_done` confirms.
        """
        pieces = split_text(text)
        if not pieces:
            log.debug("chat %s: not sending a blank message", chat_id)
            if on_done is not None:
                on_done()
            return
        last = len(pieces) - 1
        for index, piece in enumerate(pieces):
            job = SendText(
                chat_id,
                piece,
                reply_to=reply_to if index == 0 else None,
                keyboard=keyboard if index == last else None,
                force_reply=force_reply and index == last,
                on_sent=on_sent if index == last else None,
                on_done=on_done if index == last else None,
                part_of=on_done,
            )
            self.put(job)

    def typing(self, chat_id: int, on: bool = True) -> None:
        """Show "typing" in the chat until its next message (or ``on=False``)."""
        self.put(_Typing(chat_id, on=on))

    def settle(self, leaving: Callable[[str], bool], timeout: float = 5.0) -> bool:
        """Let go of the conversations `leaving` names: another instance sends for them now.

        Their jobs not yet started are dropped unconfirmed (their new owner
        sends them, from the journal); those in flight are waited for, up to
        `timeout` seconds (not at all once stopped: :meth:`close` waited), and
        confirmed as usual if they went out (one that failed for now is
        dropped too). An output in several messages (a long text) that has
        begun going out is finished within that time too, since its new owner
        would send it whole again; what is not by then is dropped. Returns
        whether none was left in flight: one still out may be sent by both.
        """
        with self._lock:
            dropped = self._drop_all_leaving(leaving, finish_started=not self._closed)
            if self._closed:  # stopped: what is in flight had its time (see close)
                return not self._owed_for(leaving)
            if self._owed_for(leaving):
                log.info(
                    "handing conversations over: %d queued send(s) left to their new owner, "
                    "waiting for %d in flight or finishing a reply under way", dropped,
                    self._owed_for(leaving),
                )  # fmt: skip
            deadline = time.monotonic() + timeout
            self._settling = leaving
            try:
                while self._owed_for(leaving):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._drop_all_leaving(leaving, finish_started=False)
                        log.warning(
                            "handing conversations over: %d send(s) still in flight after "
                            "%.0fs; their new owner sends them too, so they may arrive twice",
                            self._owed_for(leaving), timeout,
                        )  # fmt: skip
                        return False
                    self._settled.wait(left)
            finally:
                self._settling = None
        return True

    def halt(self) -> None:
        """Send nothing more, from now on: the journal can no longer record what went out.

        Called when the engine halted (its journal cannot be written). Every
        job still queued was journaled as unsent, and goes out after the
        restart; sending it now would send it twice. Only requests already
        in flight finish. Does not wait: :meth:`close` still stops the threads.
        """
        self._stop_senders(deadline=self.clock())

    def close(self, timeout: float = 5.0) -> bool:
        """Stop taking jobs, send what is queued within `timeout`, stop the threads.

        Whatever is still unsent at the deadline is left unconfirmed (with a
        journal it goes out after the restart) and counted in one INFO line.
        After :meth:`halt`, nothing more is sent. Returns whether every
        thread finished in time.
        """
        self._stop_senders(deadline=self.clock() + timeout)
        finished = True
        for sender in self._senders:
            if not sender.is_alive():
                continue
            sender.join(max(0.0, self.deadline - self.clock()) + 1.0)
            if sender.is_alive():
                finished = False
                job = sender.current
                if job is not None:  # unconfirmed: it goes again after the restart
                    log.warning(
                        "chat %s: the %s was still being sent at the stop; it is sent again "
                        "after the restart, so it may arrive twice", job.chat_id, job.describe(),
                    )  # fmt: skip
        if self._unsent_at_stop:
            log.info(
                "%d message(s) not sent before the stop; they go out after the restart",
                self._unsent_at_stop,
            )
        return finished

    # -- queueing (under the lock)

    def _queue(self, timeline: _Timeline, job: Job) -> None:
        now = self.clock()
        lane = timeline.lanes.get(job.chat_id)
        if lane is None:
            lane = _Lane(job.chat_id, self._buckets(job, now), timeline)
            timeline.lanes[job.chat_id] = lane
        if isinstance(job, _Typing):
            if job.on:
                lane.typing_next = now + TYPING_AFTER
                lane.typing_until = now + TYPING_AT_MOST
            else:
                lane.typing_next = None
        else:
            if isinstance(job, SendText):
                lane.typing_next = None  # a message ends "typing" anyway
            lane.jobs.append(job)
            self._queued += 1
            if len(lane.jobs) > 1 and lane.entry is not None:
                return  # behind others: when the lane goes is unchanged
        self._schedule(timeline, lane, now)

    def _buckets(self, job: Job, now: float) -> list[Bucket]:
        if isinstance(job, AnswerCallback):
            return []  # never paced
        buckets = [Bucket(self.pacing.chat_rate, self.pacing.chat_burst, now)]
        if job.chat_id < 0:  # groups and supergroups have negative ids
            per_minute = self.pacing.group_per_minute
            buckets.append(Bucket(per_minute / 60.0, per_minute, now))
        return buckets

    def _schedule(self, timeline: _Timeline, lane: _Lane, now: float) -> None:
        """Put `lane` on its timeline at the moment it may go (forget it if it is idle)."""
        if lane.busy:
            return  # rescheduled when its request ends
        at = lane.ready_at(now)
        if at is None:  # nothing to do: kept until its buckets are full again
            if lane.idle(now):
                if timeline.lanes.get(lane.chat_id) is lane:
                    del timeline.lanes[lane.chat_id]
                lane.entry = None
                return
            at = max(lane.idle_at(now), now + 0.001)
        if lane.entry is not None and lane.entry[0] == at:
            return
        entry = (at, next(self._order), lane)
        lane.entry = entry
        heapq.heappush(timeline.heap, entry)
        if at <= now or timeline.heap[0] is entry:  # someone must take it, or wait less
            if timeline.answers and self._answerer_waiting:
                self._answer_work.notify()
            else:
                self._work.notify()

    def _drop_all_leaving(self, leaving: Callable[[str], bool], *, finish_started: bool) -> int:
        """Drop every lane's jobs that `leaving` names (see :meth:`_drop_leaving`); how many."""
        dropped = sum(
            self._drop_leaving(timeline, lane, leaving, finish_started=finish_started)
            for timeline in (self._messages, self._answers)
            for lane in list(timeline.lanes.values())
        )
        self._queued -= dropped
        return dropped

    def _drop_leaving(
        self,
        timeline: _Timeline,
        lane: _Lane,
        leaving: Callable[[str], bool],
        *,
        finish_started: bool,
    ) -> int:
        """Drop `lane`'s jobs that `leaving` names; how many (not counted off `_queued`).

        The one in flight is kept, and with `finish_started` the rest of the
        output it (or the job before) began.
        """
        kept = collections.deque(
            job for job in lane.jobs
            if job is lane.current or not job.leaves(leaving)
            or (finish_started and lane.continues(job))
        )  # fmt: skip
        dropped = len(lane.jobs) - len(kept)
        if dropped:
            if not kept or kept[0] is not lane.jobs[0]:
                lane.failures = lane.throttled = 0  # those were the dropped head's
            lane.jobs = kept
            self._schedule(timeline, lane, self.clock())
        return dropped

    def _owed_for(self, leaving: Callable[[str], bool]) -> int:
        """How many jobs that `leaving` names are in flight or finish an output under way.

        One in flight counts until its confirmation has run (its lane is released).
        """
        return sum(
            (lane.current is not None and lane.current.leaves(leaving))
            + (lane.under_way() if _leaves(lane.started, leaving) else 0)
            for timeline in (self._messages, self._answers)
            for lane in timeline.lanes.values()
        )

    # -- the senders' side

    def _next(self, sender: _Sender, finished: _Lane | None) -> tuple[_Lane, Job | None] | None:
        """Release `finished`, then wait for a due lane and start it; None: the sender stops."""
        with self._lock:
            if finished is not None:
                self._release(finished)
            while True:
                now = self.clock()
                if self._closed and (self._queued == 0 or now >= self.deadline):
                    if now >= self.deadline:
                        self._abandon_queued()
                    self._work.notify_all()  # the others see it too
                    self._answer_work.notify_all()
                    return None
                lane, wait = self._due(sender, now)
                if lane is not None:
                    return lane, self._begin(lane, now)
                if self._closed:
                    wait = min(wait, max(0.0, self.deadline - now))
                if sender.answers_only:
                    self._answerer_waiting = True
                    self._answer_work.wait(wait)
                    self._answerer_waiting = False
                else:
                    self._work.wait(wait)

    def _due(self, sender: _Sender, now: float) -> tuple[_Lane | None, float]:
        """A lane `sender` may serve now (button answers first), or how long to wait."""
        wait = 1.0
        timelines = (self._answers,) if sender.answers_only else (self._answers, self._messages)
        for timeline in timelines:
            lane, until = self._due_in(timeline, now)
            if lane is not None:
                return lane, 0.0
            if until is not None:
                wait = min(wait, until)
        return None, wait

    def _due_in(self, timeline: _Timeline, now: float) -> tuple[_Lane | None, float | None]:
        heap = timeline.heap
        while heap:
            entry = heap[0]
            at, _, lane = entry
            if lane.entry is not entry:  # stale: the lane was scheduled again since
                heapq.heappop(heap)
                continue
            if at > now:
                return None, at - now
            if not lane.jobs and lane.typing_next is None:  # nothing to do: forget it if idle
                heapq.heappop(heap)
                lane.entry = None
                self._schedule(timeline, lane, now)
                continue
            if lane.jobs and lane.jobs[0].paced:
                global_wait = self.global_bucket.try_take(now)
                if global_wait > 0:
                    return None, global_wait
            heapq.heappop(heap)
            lane.entry = None
            return lane, None
        return None, None

    def _begin(self, lane: _Lane, now: float) -> Job | None:
        """Mark `lane` busy with its next job (None: a "typing" to repeat)."""
        lane.busy = True
        if not lane.jobs:
            lane.typing_next = (
                now + TYPING_EVERY if now + TYPING_EVERY < lane.typing_until else None
            )
            return None
        job = lane.jobs[0]
        if job.paced:
            for bucket in lane.buckets:
                bucket.take(now)
        lane.current = job
        lane.started = job.part_of
        return job

    def _release(self, lane: _Lane) -> None:
        lane.busy = False
        lane.current = None
        self._schedule(lane.timeline, lane, self.clock())
        if self._settling is not None:
            self._settled.notify_all()

    def _serve(self, lane: _Lane, job: Job | None) -> None:
        """Send `job` (outside the lock), then settle what it did; callbacks run last."""
        if job is None:  # only "typing" to repeat
            try:
                self.api.send_chat_action(lane.chat_id, "typing")
            except Exception as error:  # only a hint: never worth a thread
                log.debug("chat %s: typing action failed: %r", lane.chat_id, error)
            return
        outcome: SendError | None = None
        try:
            job.run(self.api)
        except SendError as error:
            outcome = error
        except Exception:
            log.exception("chat %s: unexpected error sending the %s", lane.chat_id, job.describe())
            outcome = PermanentError("unexpected error (see above)")
        with self._lock:
            callbacks = self._outcome(lane, job, outcome)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a confirmation must not cost the thread
                log.exception("chat %s: error confirming the %s", lane.chat_id, job.describe())

    def _outcome(self, lane: _Lane, job: Job, error: SendError | None) -> list[Callable[[], None]]:
        """What `job`'s attempt means for its lane (under the lock); the callbacks to run."""
        if error is None:
            if lane.failures or lane.throttled:
                self.recovered(lane.chat_id)
            return self._done(lane)
        if isinstance(error, (RetryAfter, TransientError)):
            return self._failed_for_now(lane, job, error)
        if isinstance(error, ChatGone):
            count = len(lane.jobs)
            log.info("chat %s: %s; dropping %d queued job(s) for it", lane.chat_id, error, count)
            lane.typing_next = None
            callbacks: list[Callable[[], None]] = []
            while lane.jobs:
                callbacks += self._done(lane)
            return callbacks
        # Telegram refused it for good (a bug of ours): log it, go on with the next.
        level = logging.ERROR if isinstance(job, SendText) else logging.WARNING
        log.log(level, "chat %s: NOT SENT: the %s: %s", lane.chat_id, job.describe(), error)
        return self._done(lane)

    def _failed_for_now(self, lane: _Lane, job: Job, error: SendError) -> list[Callable[[], None]]:
        now = self.clock()
        settling = self._settling
        if settling is not None and job.leaves(settling):
            self._done(lane, finished=False)  # its new owner sends it: all of its output
            self._queued -= self._drop_leaving(lane.timeline, lane, settling, finish_started=False)
            return []
        if self._closed and now >= self.deadline:  # sent after the restart
            self._unsent_at_stop += isinstance(job, SendText)
            self._done(lane, finished=False)
            return []
        if isinstance(error, RetryAfter):
            lane.throttled += 1
            wait = min(MAX_RETRY_AFTER, max(0.0, error.seconds))
            self.failed(lane.chat_id, job, f"rate limited, waiting {wait:g}s")
            lane.not_before = now + wait
        else:
            lane.failures += 1
            delay = self.backoff(lane.failures)
            self.failed(lane.chat_id, job, f"{error}; retry {lane.failures} in {delay:.2f}s")
            lane.not_before = now + delay
        return []

    def _done(self, lane: _Lane, *, finished: bool = True) -> list[Callable[[], None]]:
        """The head job is over: out (or given up for good, then `finished`), or left unsent."""
        job = lane.jobs.popleft()
        self._queued -= 1
        lane.failures = lane.throttled = 0
        on_done = getattr(job, "on_done", None)
        return [on_done] if finished and on_done is not None else []

    def _abandon_queued(self) -> None:
        """At the stop deadline: leave each job not in flight unconfirmed (sent after a restart)."""
        for timeline in (self._messages, self._answers):
            for lane in timeline.lanes.values():
                start = 1 if lane.current is not None else 0
                while len(lane.jobs) > start:
                    job = lane.jobs.pop()
                    self._queued -= 1
                    self._unsent_at_stop += isinstance(job, SendText)
                    log.debug("chat %s: not sent before the stop: the %s", lane.chat_id,
                              job.describe())  # fmt: skip

    def _stop_senders(self, deadline: float) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.deadline = deadline
            for lane in self._messages.lanes.values():
                lane.typing_next = None
            self._work.notify_all()
            self._answer_work.notify_all()
