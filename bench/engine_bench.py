"""How much a conversation step costs: the scheduler against a bare loop and asyncio.

Run from the repository root::

    python bench/engine_bench.py                # 10,000 conversations x 20 answers
    python bench/engine_bench.py --quick        # a small run, a few seconds
    python bench/engine_bench.py --profile      # also cProfile the scheduler thread

A *step* is one user answer taken by one conversation: its ``Input`` is
resolved and the flow runs on to its next ``Input`` (in the ``+Print`` rows,
echoing the answer with a ``Print`` first). Every design runs the same
workload in the same process, one after the other, repeated and interleaved;
each row shows its best repetition. That damps a busy machine's noise but does
not remove it: expect ratios to move by a fifth or so from run to run.

The rows:

* ``gen.send floor``: the very generators the scheduler runs, driven by a
  plain loop on one thread. Nothing can be cheaper.
* ``scheduler``: :class:`engine.scheduler.Scheduler` on its thread; every
  conversation is begun first, then the answers are fed from the main thread
  with ``scheduler.send(key, text)``, round-robin over the keys, one round per
  answer. Timed from the first send until the frontend hears the last
  conversation ended.
* ``asyncio``: the same workload written the tutorial's way: one Task per
  conversation, ``await conv.next_answer()`` on a Future made per question,
  answers fed from the main thread with ``loop.call_soon_threadsafe``, one
  call per answer. This is the baseline of the "vs asyncio" column.
* ``asyncio batch-fed``: the same, but :data:`FEED_BATCH` answers per
  ``call_soon_threadsafe``. Not a target; it shows how much of asyncio's cost
  is the per-message hand-over between threads (a self-pipe write that
  releases the GIL, and a loop wake-up) rather than Tasks and Futures.
* ``scheduler + SQLite journal``: when the engine has one (see
  :func:`find_sqlite_journal`), the scheduler writing to a temporary file.

* ``scheduler+timers``: the ``scheduler`` row on a scheduler that also holds
  ``--timers`` conversations (100,000) parked on ``Sleep(3600)``.

Memory: tracemalloc's traced total before and after N conversations park on
their first question, divided by N, with the keys made beforehand (they
belong to the frontend); and the same for ``--timers`` conversations parked
on a ``Sleep``, whose timer entry (a heap tuple and its ``Wake`` event) is
measured on its own too. Then how fast those timers fire when all fall due at
once (the clock is a fake one, moved past them).

asyncio lives here only: the engine never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import importlib
import io
import itertools
import pstats
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.commands import Choose, Command, Input, Print, Sleep
from engine.frontend import Frontend, Key, Notice
from engine.journal import Journal
from engine.scheduler import Scheduler, Wake
from engine.states import Flow, State, Steps, conversation, first_state

#: What every user answers (one shared string: the feeders allocate nothing).
ANSWER = "a"
#: How long any wait may take before the benchmark gives up.
TIMEOUT = 600.0

#: Answers per hand-over in the "asyncio batch-fed" rows (a Telegram getUpdates page).
FEED_BATCH = 100

SPEED_TARGET = 3.0  # scheduler steps/s over asyncio steps/s, at least
MEMORY_TARGET = 2048  # bytes per parked conversation, at most


# -- the workload ---------------------------------------------------------------


@dataclass(frozen=True)
class AnswerMany(State):
    """Ask `answers` times, then end; with `prints`, echo each answer first."""

    answers: int = 20
    prints: bool = False

    def run(self) -> Steps:
        for _ in range(self.answers):
            text = yield Input("?")
            if self.prints:
                yield Print(text)
        return None


def make_flow(answers: int, prints: bool) -> Flow:
    """A flow making a fresh state per conversation, as real flows do."""
    return functools.partial(AnswerMany, answers, prints)


#: How long the parked timers sleep: far beyond any run.
NAP_SECONDS = 3600.0


@dataclass(frozen=True)
class Nap(State):
    """Sleeps (a timer, no thread), then ends."""

    def run(self) -> Steps:
        yield Sleep(NAP_SECONDS)
        return None


def naps_first(naps: int, then: Flow) -> Flow:
    """A flow whose first `naps` conversations are a :class:`Nap`, the rest `then`'s."""
    made = itertools.count()

    def make() -> State:
        return Nap() if next(made) < naps else first_state(then)

    return make


def make_keys(conversations: int) -> list[str]:
    """The conversations' keys, as a frontend would have them."""
    return [f"chat{number}" for number in range(conversations)]


class CountingFrontend(Frontend):
    """Does nothing but count; sets events when targets are reached.

    `parked` is set when `ask` has been called `park_target` times (every
    conversation waits on a question), `all_ended` when `conversations` have
    ended, `noticed` on any notice (used as a round-trip barrier).
    """

    name = "counting"

    def __init__(self, conversations: int) -> None:
        self.conversations = conversations
        self.asked = 0
        self.delivered = 0
        self.ended_count = 0
        self.notified = 0
        self.park_target = conversations
        self.parked = threading.Event()
        self.all_ended = threading.Event()
        self.noticed = threading.Event()

    def deliver(self, key: Key, command: Command, receipt: int | None = None) -> None:
        self.delivered += 1

    def ask(self, key: Key, question: Input | Choose, receipt: int | None = None) -> None:
        self.asked += 1
        if self.asked == self.park_target:
            self.parked.set()

    def ended(self, key: Key) -> None:
        self.ended_count += 1
        if self.ended_count == self.conversations:
            self.all_ended.set()

    def notify(self, key: Key, notice: Notice, receipt: int | None = None) -> None:
        self.notified += 1
        self.noticed.set()


@dataclass
class Result:
    """One timed run: `steps` answers taken in `seconds`, and what the frontend saw."""

    name: str
    conversations: int
    answers: int
    steps: int
    seconds: float
    asked: int
    delivered: int
    ended: int

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("inf")

    @property
    def microseconds_per_step(self) -> float:
        return self.seconds / self.steps * 1e6 if self.steps else float("nan")


#: What each timed design is: (conversations, answers, prints) -> its run.
Runner = Callable[[int, int, bool], Result]


def _wait(event: threading.Event, what: str) -> None:
    if not event.wait(TIMEOUT):
        raise TimeoutError(f"gave up after {TIMEOUT:.0f} s waiting for {what}")


def _fresh() -> None:
    """Start a timed run without the previous run's garbage."""
    gc.collect()


# -- (b) the floor: the same generators, a bare loop --------------------------------


def run_floor(conversations: int, answers: int, prints: bool = False) -> Result:
    """Drive the scheduler's own generators (``conversation(flow)``) in a plain loop."""
    flow = make_flow(answers, prints)
    generators = [conversation(flow) for _ in range(conversations)]
    asked = delivered = ended = steps = 0
    for generator in generators:  # run each to its first question, as `begin` does
        command = next(generator)
        while type(command) is not Input:
            command = next(generator)
        asked += 1
    _fresh()
    start = time.perf_counter()
    live = generators
    for _ in range(answers):
        waiting = []
        for generator in live:
            steps += 1
            try:
                command = generator.send(ANSWER)
                while type(command) is not Input:  # a Print, or a new state's Entered
                    if type(command) is Print:
                        delivered += 1
                    command = generator.send(None)
            except StopIteration:
                ended += 1
                continue
            asked += 1
            waiting.append(generator)
        live = waiting
    seconds = time.perf_counter() - start
    name = "gen.send floor" + (" +Print" if prints else "")
    return Result(name, conversations, answers, steps, seconds, asked, delivered, ended)


# -- (a) and (e) the scheduler ------------------------------------------------------


def run_scheduler(
    conversations: int,
    answers: int,
    prints: bool = False,
    *,
    journal: Journal | None = None,
    name: str | None = None,
    profiler: cProfile.Profile | None = None,
    timers: int = 0,
) -> Result:
    """Begin every conversation, then feed the answers from this thread, round-robin.

    With `profiler`, the scheduler's thread runs under it. With `timers`,
    that many conversations are parked on a ``Sleep`` first, and stay so.
    """
    frontend = CountingFrontend(conversations)
    flow = naps_first(timers, make_flow(answers, prints))
    scheduler = Scheduler(frontend, flow, workers=1, journal=journal)
    if profiler is not None:
        scheduler.run = _profiled(scheduler.run, profiler)  # type: ignore[method-assign]
    keys = make_keys(conversations)
    scheduler.start()
    try:
        for number in range(timers):
            scheduler.begin(f"nap{number}")
        if timers:
            _scheduler_barrier(scheduler, frontend)
        for key in keys:
            scheduler.begin(key)
        _wait(frontend.parked, "every conversation to ask its first question")
        _fresh()
        send = scheduler.send
        start = time.perf_counter()
        for _ in range(answers):
            for key in keys:
                send(key, ANSWER)
        _wait(frontend.all_ended, "every conversation to end")
        seconds = time.perf_counter() - start
    finally:
        scheduler.stop(timeout=5.0)
    name = name or "scheduler" + ("+timers" if timers else "") + (" +Print" if prints else "")
    return Result(
        name, conversations, answers, conversations * answers, seconds,
        frontend.asked, frontend.delivered, frontend.ended_count,
    )


def _profiled(run: Callable[[], None], profiler: cProfile.Profile) -> Callable[[], None]:
    def profiled_run() -> None:
        profiler.enable()
        try:
            run()
        finally:
            profiler.disable()

    return profiled_run


def find_sqlite_journal() -> type[Journal] | None:
    """The engine's SQLite journal class, if it has one yet (plug-in point of row (e)).

    Looks in the modules such a journal would be written in for a
    :class:`~engine.journal.Journal` subclass with "sqlite" in its name or
    module. Adjust :func:`make_sqlite_journal` if its constructor differs.
    """
    candidates = (
        "engine.sqlite_journal", "engine.journal_sqlite", "engine.sqlite", "engine.journal",
    )
    for module_name in candidates:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Journal)
                and value is not Journal
                and value.__module__ == module_name
                and "sqlite" in f"{module_name}.{value.__name__}".lower()
            ):
                return value
    return None


def make_sqlite_journal(cls: type[Journal], path: Path) -> Journal:
    """Open the SQLite journal at `path` (a file that does not exist yet)."""
    return cls(str(path))  # type: ignore[call-arg]


def run_journaled(conversations: int, answers: int, prints: bool = False) -> Result | str:
    """The scheduler with the SQLite journal on a temporary file, or why it cannot run."""
    cls = find_sqlite_journal()
    if cls is None:
        return "no SQLite journal in engine/ yet (plug it in at find_sqlite_journal)"
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as directory:
        try:
            journal = make_sqlite_journal(cls, Path(directory) / "journal.sqlite3")
        except Exception as error:
            return f"cannot open {cls.__module__}.{cls.__name__}: {error!r}"
        try:
            name = "scheduler+SQLite" + (" +Print" if prints else "")
            return run_scheduler(conversations, answers, prints, journal=journal, name=name)
        finally:
            journal.close()


# -- (c) asyncio, the tutorial's way -------------------------------------------------


class AsyncConversation:
    """One conversation's side of the asyncio design: a Future per question."""

    __slots__ = ("_early", "_waiter", "frontend", "key", "loop", "task")

    def __init__(self, key: Key, frontend: Frontend, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.frontend = frontend
        self.loop = loop
        self.task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[str] | None = None
        self._early: deque[str] | None = None  # answers that came before their question

    async def next_answer(self) -> str:
        """Wait for the user's next message."""
        if self._early:
            return self._early.popleft()
        self._waiter = self.loop.create_future()
        return await self._waiter

    async def input(self, prompt: str) -> str:
        """Ask, then wait for the answer."""
        self.frontend.ask(self.key, Input(prompt))
        return await self.next_answer()

    def print(self, text: str) -> None:
        """Show `text`."""
        self.frontend.deliver(self.key, Print(text))

    def feed(self, text: str) -> None:
        """A message arrived (on the loop's thread): wake the waiting question."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(text)
        else:
            if self._early is None:
                self._early = deque()
            self._early.append(text)


async def answer_many(conv: AsyncConversation, answers: int, prints: bool) -> None:
    """:class:`AnswerMany`, as a coroutine."""
    for _ in range(answers):
        text = await conv.input("?")
        if prints:
            conv.print(text)


class AsyncioEngine:
    """The asyncio design: its loop on a thread; ``begin``/``send`` are thread-safe."""

    def __init__(self, frontend: Frontend, answers: int, prints: bool) -> None:
        self.frontend = frontend
        self.answers = answers
        self.prints = prints
        self.loop = asyncio.new_event_loop()
        self.conversations: dict[Key, AsyncConversation] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, name="asyncio-loop")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Cancel what still runs, stop the loop, close it."""
        asyncio.run_coroutine_threadsafe(self._cancel_all(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()

    def begin(self, key: Key) -> None:
        self.loop.call_soon_threadsafe(self._begin, key)

    def send(self, key: Key, text: str) -> None:
        self.loop.call_soon_threadsafe(self._text, key, text)

    def send_each(self, keys: list[Key], text: str) -> None:
        """`text` to each of `keys`, in one hand-over (as a poller hands over a page)."""
        self.loop.call_soon_threadsafe(self._text_each, keys, text)

    def barrier(self) -> None:
        """Return once the loop has run everything posted before."""
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result(TIMEOUT)

    def _begin(self, key: Key) -> None:
        conv = AsyncConversation(key, self.frontend, self.loop)
        self.conversations[key] = conv
        conv.task = self.loop.create_task(self._run(conv))

    def _text(self, key: Key, text: str) -> None:
        conv = self.conversations.get(key)
        if conv is not None:
            conv.feed(text)

    def _text_each(self, keys: list[Key], text: str) -> None:
        for key in keys:
            self._text(key, text)

    async def _run(self, conv: AsyncConversation) -> None:
        try:
            await answer_many(conv, self.answers, self.prints)
        finally:
            del self.conversations[conv.key]
            self.frontend.ended(conv.key)

    async def _cancel_all(self) -> None:
        tasks = [c.task for c in self.conversations.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def run_asyncio(
    conversations: int, answers: int, prints: bool = False, *, batch: int = 0
) -> Result:
    """The same workload, one asyncio Task and one Future per answer.

    Each answer is handed to the loop with its own ``call_soon_threadsafe``,
    the idiomatic way; with `batch`, `batch` answers share one (the
    ``asyncio batch-fed`` rows), which shows what the hand-over itself costs.
    """
    frontend = CountingFrontend(conversations)
    engine = AsyncioEngine(frontend, answers, prints)
    keys = make_keys(conversations)
    engine.start()
    try:
        for key in keys:
            engine.begin(key)
        _wait(frontend.parked, "every task to ask its first question")
        _fresh()
        send, send_each = engine.send, engine.send_each
        start = time.perf_counter()
        for _ in range(answers):
            if batch:
                for first in range(0, conversations, batch):
                    send_each(keys[first:first + batch], ANSWER)
            else:
                for key in keys:
                    send(key, ANSWER)
        _wait(frontend.all_ended, "every task to end")
        seconds = time.perf_counter() - start
    finally:
        engine.stop()
    name = ("asyncio batch-fed" if batch else "asyncio") + (" +Print" if prints else "")
    return Result(
        name, conversations, answers, conversations * answers, seconds,
        frontend.asked, frontend.delivered, frontend.ended_count,
    )


def run_asyncio_batch_fed(conversations: int, answers: int, prints: bool = False) -> Result:
    """:func:`run_asyncio` handing answers over :data:`FEED_BATCH` at a time."""
    return run_asyncio(conversations, answers, prints, batch=FEED_BATCH)


# -- (d) memory per parked conversation ----------------------------------------------


@dataclass
class Memory:
    """Traced bytes per conversation parked on a question, and how many parked."""

    name: str
    conversations: int
    parked: int
    bytes_per_conversation: float
    top: list[str]


def _traced(top: int) -> tuple[int, tracemalloc.Snapshot | None]:
    gc.collect()
    snapshot = tracemalloc.take_snapshot() if top else None
    return tracemalloc.get_traced_memory()[0], snapshot


def _top_lines(
    before: tracemalloc.Snapshot | None, after: tracemalloc.Snapshot | None, n: int, top: int
) -> list[str]:
    if before is None or after is None:
        return []
    stats = after.compare_to(before, "lineno")
    lines = []
    for stat in stats[:top]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        lines.append(f"{stat.size_diff / n:8.1f} B  {where}")
    return lines


def memory_scheduler(conversations: int, top: int = 0) -> Memory:
    """Bytes per conversation the scheduler holds while it waits on an Input."""
    frontend = CountingFrontend(conversations)
    scheduler = Scheduler(frontend, make_flow(20, False), workers=1)
    keys = make_keys(conversations)
    tracemalloc.start()
    try:
        scheduler.start()
        _scheduler_barrier(scheduler, frontend)
        before, first = _traced(top)
        for key in keys:
            scheduler.begin(key)
        _wait(frontend.parked, "every conversation to park")
        _scheduler_barrier(scheduler, frontend)  # the batch's outbox is gone too
        after, second = _traced(top)
        parked = scheduler.running()
    finally:
        tracemalloc.stop()
        scheduler.stop(timeout=5.0)
    lines = _top_lines(first, second, conversations, top)
    per = (after - before) / conversations
    return Memory("scheduler (_Chat + generators)", conversations, parked, per, lines)


def memory_timers(conversations: int, top: int = 0) -> Memory:
    """Bytes per conversation the scheduler holds while it waits on a ``Sleep``."""
    frontend = CountingFrontend(conversations)
    scheduler = Scheduler(frontend, Nap, workers=1)
    keys = make_keys(conversations)
    tracemalloc.start()
    try:
        scheduler.start()
        _scheduler_barrier(scheduler, frontend)
        threads = threading.active_count()
        before, first = _traced(top)
        for key in keys:
            scheduler.begin(key)
        _scheduler_barrier(scheduler, frontend)  # every begin is handled: all asleep
        after, second = _traced(top)
        parked = scheduler.running()
        if threading.active_count() != threads:
            raise AssertionError("parking on a timer started a thread")
    finally:
        tracemalloc.stop()
        scheduler.stop(timeout=5.0)
    lines = _top_lines(first, second, conversations, top)
    per = (after - before) / conversations
    return Memory("scheduler on a Sleep (+ its timer)", conversations, parked, per, lines)


def timer_entry_bytes(count: int = 10_000) -> float:
    """Bytes one timer costs: a heap entry ``(when, order, Wake(chat, ticket))``, as queued."""
    order = itertools.count(10**6)  # past the small ints Python shares
    heap: list[tuple[float, int, Wake]] = []
    tracemalloc.start()
    try:
        before, _ = _traced(0)
        for number in range(count):
            heap.append((time.monotonic() + NAP_SECONDS, next(order), Wake(None, 10**6 + number)))  # type: ignore[arg-type]
        after, _ = _traced(0)
    finally:
        tracemalloc.stop()
    return (after - before) / count


@dataclass
class Firing:
    """How fast timers that all fall due at once fire (each wakes its flow, which ends)."""

    timers: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.timers / self.seconds if self.seconds > 0 else float("inf")


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def fire_timers(timers: int) -> Firing:
    """Park `timers` conversations on a Sleep, move the clock past them, time until all end."""
    frontend = CountingFrontend(timers)
    clock = _FakeClock()
    scheduler = Scheduler(frontend, Nap, workers=1, clock=clock)
    scheduler.start()
    try:
        for key in make_keys(timers):
            scheduler.begin(key)
        _scheduler_barrier(scheduler, frontend)
        _fresh()
        start = time.perf_counter()
        clock.now += NAP_SECONDS
        scheduler.post(None)  # wake the loop now rather than at its next one-second check
        _wait(frontend.all_ended, "every timer to fire")
        seconds = time.perf_counter() - start
    finally:
        scheduler.stop(timeout=5.0)
    return Firing(timers, seconds)


def _scheduler_barrier(scheduler: Scheduler, frontend: CountingFrontend) -> None:
    """Return once the scheduler has handled everything posted before (via a notice)."""
    frontend.noticed.clear()
    scheduler.send("no such conversation", ANSWER)
    _wait(frontend.noticed, "the scheduler to answer a barrier")


def memory_asyncio(conversations: int, top: int = 0) -> Memory:
    """Bytes per conversation the asyncio design holds while it waits on an Input."""
    frontend = CountingFrontend(conversations)
    engine = AsyncioEngine(frontend, 20, False)
    keys = make_keys(conversations)
    tracemalloc.start()
    try:
        engine.start()
        engine.barrier()
        before, first = _traced(top)
        for key in keys:
            engine.begin(key)
        _wait(frontend.parked, "every task to park")
        engine.barrier()
        after, second = _traced(top)
        parked = len(engine.conversations)
    finally:
        tracemalloc.stop()
        engine.stop()
    lines = _top_lines(first, second, conversations, top)
    per = (after - before) / conversations
    return Memory("asyncio (Task + coroutines + Future)", conversations, parked, per, lines)


# -- the report ------------------------------------------------------------------------


def run_all(
    conversations: int, answers: int, repeat: int, journaled: bool = True, timers: int = 0
) -> tuple[dict[str, Result], str | None]:
    """Every timed row, `repeat` times interleaved; the best run of each, by name."""
    runners: list[Callable[[], Result | str]] = [
        functools.partial(run_floor, conversations, answers),
        functools.partial(run_scheduler, conversations, answers),
        functools.partial(run_asyncio, conversations, answers),
        functools.partial(run_asyncio_batch_fed, conversations, answers),
        functools.partial(run_floor, conversations, answers, True),
        functools.partial(run_scheduler, conversations, answers, True),
        functools.partial(run_asyncio, conversations, answers, True),
        functools.partial(run_asyncio_batch_fed, conversations, answers, True),
    ]
    if journaled:
        runners.append(functools.partial(run_journaled, conversations, answers))
    if timers:
        runners.append(functools.partial(run_scheduler, conversations, answers, timers=timers))
    best: dict[str, Result] = {}
    skipped: str | None = None
    for _ in range(repeat):
        for runner in runners:
            result = runner()
            if isinstance(result, str):
                skipped = result
                continue
            _check_counts(result)
            if result.name not in best or result.seconds < best[result.name].seconds:
                best[result.name] = result
    return best, skipped


def _check_counts(result: Result) -> None:
    expected_prints = result.steps if "+Print" in result.name else 0
    wanted = (result.conversations * result.answers, expected_prints, result.conversations)
    got = (result.asked, result.delivered, result.ended)
    if got != wanted:
        raise AssertionError(f"{result.name}: (asked, delivered, ended) = {got}, wanted {wanted}")


def _row(result: Result, baseline: Result | None) -> str:
    ratio = f"{'-':>12}"
    if baseline is not None:
        ratio = f"{result.steps_per_second / baseline.steps_per_second:11.2f}x"
    return (
        f"{result.name:<24}{result.steps_per_second:>12,.0f}"
        f"{result.microseconds_per_step:>10.2f}{ratio}"
    )


def report(
    results: dict[str, Result],
    skipped: str | None,
    memories: list[Memory],
    repeat: int,
    timers: Timers | None = None,
) -> Iterator[str]:
    """The lines the benchmark prints."""
    any_result = next(iter(results.values()))
    steps = any_result.conversations * any_result.answers
    yield (
        f"engine benchmark: {any_result.conversations:,} conversations x {any_result.answers} "
        f"answers = {steps:,} steps per row; best of {repeat}; Python "
        f"{sys.version.split()[0]}"
    )
    yield f"{'name':<24}{'steps/s':>12}{'us/step':>10}{'vs asyncio':>12}"
    for suffix in ("", " +Print"):
        baseline = results.get("asyncio" + suffix)
        names = (
            "gen.send floor", "scheduler", "scheduler+timers", "asyncio", "asyncio batch-fed",
            "scheduler+SQLite",
        )
        for name in names:
            result = results.get(name + suffix)
            if result is not None:
                yield _row(result, baseline)
    journaled = results.get("scheduler+SQLite")
    if journaled is not None:
        ratio = journaled.steps_per_second / results["scheduler"].steps_per_second
        yield f"SQLite journal: {ratio:.2f}x the in-memory scheduler's throughput"
    elif skipped:
        yield f"SQLite journal: skipped, {skipped}"
    with_timers = results.get("scheduler+timers")
    if with_timers is not None and timers is not None:
        ratio = with_timers.steps_per_second / results["scheduler"].steps_per_second
        yield (
            f"{timers.parked.conversations:,} conversations parked on Sleep({NAP_SECONDS:g}) "
            f"beside: {ratio:.2f}x the scheduler's throughput"
        )
    for memory in memories:
        yield (
            f"memory per parked conversation, {memory.name}: "
            f"{memory.bytes_per_conversation:,.0f} B ({memory.parked:,} parked)"
        )
        yield from (f"    {line}" for line in memory.top)
    yield "targets:"
    for suffix in ("", " +Print"):
        scheduler, asyncio_ = results.get("scheduler" + suffix), results.get("asyncio" + suffix)
        if scheduler and asyncio_:
            ratio = scheduler.steps_per_second / asyncio_.steps_per_second
            verdict = "PASS" if ratio >= SPEED_TARGET else "FAIL"
            yield (
                f"  scheduler{suffix} >= {SPEED_TARGET:g}x asyncio throughput: "
                f"{ratio:.2f}x  {verdict}"
            )
    for memory in memories:
        if memory.name.startswith("scheduler"):
            per = memory.bytes_per_conversation
            verdict = "PASS" if per <= MEMORY_TARGET else "FAIL"
            yield (
                f"  scheduler <= {MEMORY_TARGET} B per parked conversation: "
                f"{per:,.0f} B  {verdict}"
            )
    if timers is not None:
        yield from timers.lines()


@dataclass
class Timers:
    """What conversations parked on timers cost, beside the same number parked on a question."""

    parked: Memory
    asking: Memory
    entry: float
    firing: Firing

    def lines(self) -> Iterator[str]:
        """The report's lines about timers (after the other targets)."""
        n = self.parked.conversations
        yield (
            f"timers: {n:,} parked on Sleep: {self.parked.bytes_per_conversation:,.0f} B each, "
            f"{n:,} parked on a question: {self.asking.bytes_per_conversation:,.0f} B each, "
            f"one timer entry: {self.entry:,.0f} B; no thread each"
        )
        yield from (f"    {line}" for line in self.parked.top)
        yield (
            f"timers: {self.firing.timers:,} falling due at once fired in "
            f"{self.firing.seconds:.2f} s ({self.firing.per_second:,.0f}/s)"
        )
        budget = self.asking.bytes_per_conversation + self.entry
        per = self.parked.bytes_per_conversation
        verdict = "PASS" if per <= budget else "FAIL"
        yield (
            f"  parked on a timer <= parked on a question + a timer entry ({budget:,.0f} B): "
            f"{per:,.0f} B  {verdict}"
        )


def measure_timers(timers: int, top: int = 0) -> Timers:
    """Memory of `timers` conversations parked on a Sleep and on a question; firing speed."""
    return Timers(
        memory_timers(timers, top),
        memory_scheduler(timers),
        timer_entry_bytes(),
        fire_timers(timers),
    )


def profile_scheduler(conversations: int, answers: int, prints: bool, top: int = 30) -> str:
    """cProfile of the scheduler's thread over one run, by own time."""
    profiler = cProfile.Profile()
    run_scheduler(conversations, answers, prints, profiler=profiler)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--answers", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; best is shown")
    parser.add_argument("--timers", type=int, default=100_000,
                        help="conversations parked on a Sleep for the timer rows (0: none)")
    parser.add_argument("--quick", action="store_true", help="1,000 x 5, once, 2,000 timers")
    parser.add_argument("--memory-detail", type=int, default=0, metavar="N",
                        help="show the N source lines holding the most memory per conversation")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of the scheduler's thread")
    args = parser.parse_args(argv)
    if args.quick:
        args.conversations, args.answers, args.repeat, args.timers = 1_000, 5, 1, 2_000
    results, skipped = run_all(
        args.conversations, args.answers, args.repeat, timers=args.timers
    )
    memories = [
        memory_scheduler(args.conversations, args.memory_detail),
        memory_asyncio(args.conversations, args.memory_detail),
    ]
    timers = measure_timers(args.timers, args.memory_detail) if args.timers else None
    for line in report(results, skipped, memories, args.repeat, timers):
        print(line)
    if args.profile:
        print(profile_scheduler(args.conversations, args.answers, prints=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
