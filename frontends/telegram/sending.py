"""The Telegram bot's outbox: ordered, paced, retried sending on a few threads.

Nothing here knows about pyTelegramBotAPI: the outbox calls a :class:`BotApi`
(see ``frontends.telegram.api`` for the real one) that turns every failure into
:class:`RetryAfter`, :class:`TransientError` or :class:`PermanentError`. That
keeps the ordering, pacing and retry rules testable without any HTTP.

* Each chat is pinned to one sender thread (by hash), and within a thread
  each chat has its own *lane*: a FIFO of jobs. A lane waiting for its pace,
  a ``retry_after`` or a backoff never holds up the other chats of its thread.
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
"""

from __future__ import annotations

import collections
import hashlib
import logging
import queue
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


@dataclass(eq=False)
class Job:
    """One Bot API call for one chat."""

    chat_id: int
    paced = False  # whether it counts against the message rates

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


_STOP = object()


# ---------------------------------------------------------------- lanes and senders


class _Lane:
    """The queued jobs of one chat, and when the next one may go."""

    def __init__(self, chat_id: int, pacing: Pacing, now: float) -> None:
        self.chat_id = chat_id
        self.jobs: collections.deque[Job] = collections.deque()
        self.not_before = 0.0  # retry_after / backoff
        self.failures = 0  # transient failures of the head job
        self.throttled = 0  # 429s of the head job
        self.buckets = [Bucket(pacing.chat_rate, pacing.chat_burst, now)]
        if chat_id < 0:  # groups and supergroups have negative ids
            per_minute = pacing.group_per_minute
            self.buckets.append(Bucket(per_minute / 60.0, per_minute, now))
        self.typing_next: float | None = None  # when to send "typing" again
        self.typing_until = 0.0

    def ready_at(self, now: float) -> float | None:
        """When this lane has something to do (None: nothing)."""
        if self.jobs:
            at = self.not_before
            if self.jobs[0].paced:
                at = max(at, now + max(bucket.wait(now) for bucket in self.buckets))
            return at
        if self.typing_next is not None:
            return max(self.typing_next, self.not_before)
        return None

    def idle(self, now: float) -> bool:
        return (
            not self.jobs
            and self.typing_next is None
            and self.not_before <= now
            and all(bucket.full(now) for bucket in self.buckets)
        )


class _Sender(threading.Thread):
    """One sender thread: serves the lanes of the chats pinned to it."""

    def __init__(self, outbox: Outbox, index: int | str) -> None:
        super().__init__(name=f"telegram-sender-{index}", daemon=True)
        self.outbox = outbox
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.lanes: dict[int, _Lane] = {}
        self.current: Job | None = None
        self.stopping = False

    # -- the loop

    def run(self) -> None:
        wait = 0.0
        while True:
            self._take_new(wait)
            now = self.outbox.clock()
            if self.stopping:
                if not any(lane.jobs for lane in self.lanes.values()):
                    return
                if now >= self.outbox.deadline:
                    self.outbox.left_unsent(self._abandon_all())
                    return
            wait = self._step(now)
            if self.stopping:
                wait = min(wait, max(0.0, self.outbox.deadline - now))

    def _take_new(self, wait: float) -> None:
        """Move newly queued jobs into their lanes, waiting up to `wait` for the first."""
        try:
            item = self.inbox.get(timeout=wait) if wait > 0 else self.inbox.get_nowait()
            while True:
                self._accept(item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass

    def _accept(self, item: object) -> None:
        if item is _STOP:
            self.stopping = True
            for lane in self.lanes.values():
                lane.typing_next = None
            return
        assert isinstance(item, Job)
        now = self.outbox.clock()
        found = self.lanes.get(item.chat_id)
        lane = found or _Lane(item.chat_id, self.outbox.pacing, now)
        self.lanes.setdefault(item.chat_id, lane)
        if isinstance(item, _Typing):
            if item.on and not self.stopping:
                lane.typing_next = now
                lane.typing_until = now + TYPING_AT_MOST
            else:
                lane.typing_next = None
            return
        if isinstance(item, SendText):
            lane.typing_next = None  # a message ends "typing" anyway
        lane.jobs.append(item)

    def _step(self, now: float) -> float:
        """Do the next due job, if any; return how long to wait before the next step."""
        soonest: float | None = None
        for chat_id in list(self.lanes):
            lane = self.lanes[chat_id]
            at = lane.ready_at(now)
            if at is None:
                if lane.idle(now):
                    del self.lanes[chat_id]
                continue
            if at > now:
                soonest = at if soonest is None else min(soonest, at)
                continue
            if lane.jobs and lane.jobs[0].paced:
                global_wait = self.outbox.global_bucket.try_take(now)
                if global_wait > 0:
                    return global_wait
            self._serve(lane, now)
            # Round robin: the served lane goes to the back.
            self.lanes[chat_id] = self.lanes.pop(chat_id)
            return 0.0
        return 0.5 if soonest is None else min(0.5, soonest - now)

    def _serve(self, lane: _Lane, now: float) -> None:
        if not lane.jobs:  # only "typing" to repeat
            lane.typing_next = (
                now + TYPING_EVERY if now + TYPING_EVERY < lane.typing_until else None
            )
            try:
                self.outbox.api.send_chat_action(lane.chat_id, "typing")
            except Exception as error:  # only a hint: never worth a thread
                log.debug("chat %s: typing action failed: %r", lane.chat_id, error)
            return
        job = lane.jobs[0]
        if job.paced:
            for bucket in lane.buckets:
                bucket.take(now)
        self.current = job
        try:
            job.run(self.outbox.api)
        except RetryAfter as error:
            lane.throttled += 1
            wait = min(MAX_RETRY_AFTER, max(0.0, error.seconds))
            self.outbox.failed(lane.chat_id, job, f"rate limited, waiting {wait:g}s")
            lane.not_before = self.outbox.clock() + wait
        except TransientError as error:
            lane.failures += 1
            delay = self.outbox.backoff(lane.failures)
            self.outbox.failed(lane.chat_id, job, f"{error}; retry {lane.failures} in {delay:.2f}s")
            lane.not_before = self.outbox.clock() + delay
        except ChatGone as error:
            self._chat_gone(lane, str(error))
        except PermanentError as error:
            self._refused(lane, str(error))
        except Exception:
            log.exception("chat %s: unexpected error sending the %s", lane.chat_id, job.describe())
            self._refused(lane, "unexpected error (see above)")
        else:
            if lane.failures or lane.throttled:
                self.outbox.recovered(lane.chat_id)
            self._done(lane)
        finally:
            self.current = None

    def _done(self, lane: _Lane, *, finished: bool = True) -> None:
        job = lane.jobs.popleft()
        lane.failures = lane.throttled = 0
        on_done = getattr(job, "on_done", None)
        if finished and on_done is not None:
            on_done()

    def _refused(self, lane: _Lane, reason: str) -> None:
        """Telegram refused the head job for good (a bug of ours): log it, go on with the next."""
        job = lane.jobs[0]
        level = logging.ERROR if isinstance(job, SendText) else logging.WARNING
        log.log(level, "chat %s: NOT SENT: the %s: %s", lane.chat_id, job.describe(), reason)
        self._done(lane)

    def _chat_gone(self, lane: _Lane, reason: str) -> None:
        """The chat can take nothing more: drop all its queued jobs, with one line."""
        count = len(lane.jobs)
        log.info("chat %s: %s; dropping %d queued job(s) for it", lane.chat_id, reason, count)
        while lane.jobs:
            self._done(lane)
        lane.typing_next = None

    def _abandon_all(self) -> int:
        """At the stop deadline: leave every queued job unconfirmed (sent after a restart)."""
        count = 0
        for lane in self.lanes.values():
            while lane.jobs:
                if isinstance(lane.jobs[0], SendText):
                    count += 1
                log.debug("chat %s: not sent before the stop: the %s", lane.chat_id,
                          lane.jobs[0].describe())  # fmt: skip
                self._done(lane, finished=False)
        return count


class Outbox:
    """Thread-safe, non-blocking sending to Telegram on `senders` threads."""

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
        self._senders = [_Sender(self, index) for index in range(senders)]
        #: Answers to button presses go on a thread of their own, never behind messages.
        self._answers = _Sender(self, "answers")
        self._senders.append(self._answers)
        self._lock = threading.Lock()
        self._closed = False
        #: Chats whose head job last failed for now, and whether that was said.
        self._failing: set[int] = set()
        self._unsent_at_stop = 0

    @property
    def failing(self) -> bool:
        """Whether some chat's sends are failing for now (Telegram unreachable, 5xx, 429)."""
        return bool(self._failing)

    def failed(self, chat_id: int, job: Job, reason: str) -> None:
        """A job failed for now and will be tried again (from a sender thread).

        One WARNING when sending starts failing, not one per attempt: an
        outage of minutes would otherwise fill the log.
        """
        with self._lock:
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
        with self._lock:
            self._failing.discard(chat_id)
            last = not self._failing
        if last:
            log.info("sending to Telegram works again")

    def left_unsent(self, count: int) -> None:
        """A sender stopped with `count` messages unsent: counted for one line at the end."""
        with self._lock:
            self._unsent_at_stop += count

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th transient failure in a row (jittered)."""
        return backoff(failures, self.retrying.first_backoff, self.retrying.max_backoff)

    def start(self) -> None:
        for sender in self._senders:
            sender.start()

    def _sender_of(self, job: Job) -> _Sender:
        if isinstance(job, AnswerCallback):
            return self._answers
        digest = hashlib.blake2b(str(job.chat_id).encode(), digest_size=4).digest()
        return self._senders[int.from_bytes(digest, "big") % (len(self._senders) - 1)]

    def put(self, job: Job) -> None:
        """Queue `job` behind the chat's earlier jobs."""
        with self._lock:
            if not self._closed:
                self._sender_of(job).inbox.put(job)
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
        `on_sent` and `on_done` with the last (where the question is).
        """
        pieces = split_text(text)
        if not pieces:
            log.debug("chat %s: not sending a blank message", chat_id)
            if on_done is not None:
                on_done()
            return
        last = len(pieces) - 1
        for index, piece in enumerate(pieces):
            self.put(
                SendText(
                    chat_id,
                    piece,
                    reply_to=reply_to if index == 0 else None,
                    keyboard=keyboard if index == last else None,
                    force_reply=force_reply and index == last,
                    on_sent=on_sent if index == last else None,
                    on_done=on_done if index == last else None,
                )
            )

    def typing(self, chat_id: int, on: bool = True) -> None:
        """Show "typing" in the chat until its next message (or ``on=False``)."""
        self.put(_Typing(chat_id, on=on))

    def halt(self) -> None:
        """Send nothing more, from now on: the journal can no longer record what went out.

        Called when the engine halted (its journal cannot be written). Every
        job still queued was journaled as unsent, and goes out after the
        restart; sending it now would send it twice. Only requests already
        in flight finish. Does not wait: :meth:`close` still stops the threads.
        """
        self._stop_senders(deadline=self.clock())

    def _stop_senders(self, deadline: float) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.deadline = deadline
            for sender in self._senders:
                sender.inbox.put(_STOP)

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
