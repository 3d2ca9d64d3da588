"""What durability costs: the journal's price per step, and recovery time.

Run from the repository root::

    python bench/journal_bench.py [--conversations 10000] [--answers 20]

It prints, from one run, side by side:

* the scheduler's cost per step in memory, with the SQLite journal and with
  the PostgreSQL journal, on the engine benchmark's workload (N
  conversations x M answers fed from another thread), and the SQLite
  journal's ratio to memory (target: the journal keeps at least half the
  in-memory throughput);
* the time to rebuild N conversations from each journal after a restart,
  each parked on a question after a ``Call`` (target: under 5 seconds).

PostgreSQL is a local server started for the run from the binaries of the
`pgserver` test dependency (as the tests do), with fsync on, as production
would run; ``--postgres-url URL`` uses an existing database instead.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import Call, Choose, Input, Print, State
from engine.commands import Command
from engine.frontend import Frontend
from engine.journal import Journal, SqliteJournal
from engine.postgres_journal import PostgresJournal
from engine.scheduler import Scheduler
from engine.states import Steps

ANSWERS = 20


@dataclass
class Answers(State):
    """Takes ANSWERS answers, then ends."""

    def run(self) -> Steps:
        for _ in range(ANSWERS):
            yield Input("?")
        return None


def lookup(text: str) -> str:
    """The Call each recovered conversation has already made."""
    return text.upper()


@dataclass
class Parked(State):
    """Answers once, makes a Call, prints, and parks on a Choose."""

    def run(self) -> Steps:
        text = yield Input("Name? ")
        found = yield Call(lookup, text)
        yield Print(f"Found {found}")
        yield Choose("What next?", ["continue", "quit"])
        return None


class Counting(Frontend):
    """A frontend that only counts, and signals when every conversation has ended."""

    name = "counting"

    def __init__(self, conversations: int) -> None:
        self.remaining = conversations
        self.asked = 0
        self.done = threading.Event()

    def deliver(self, key: str, command: Command, receipt: int | None = None) -> None:
        """Count nothing: output is free here."""

    def ask(self, key: str, question: Input | Choose, receipt: int | None = None) -> None:
        """Count the question."""
        self.asked += 1
        if self.asked == self.remaining:
            self.done.set()

    def restored(self, key: str, question: Input | Choose) -> None:
        """Count a rebuilt conversation's question."""
        self.ask(key, question)

    def ended(self, key: str) -> None:
        """Count the end; signal the last one."""
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


def throughput(conversations: int, answers: int, journal: Journal | None) -> float:
    """Steps per second of `conversations` x `answers` fed from another thread."""
    frontend = Counting(conversations)
    frontend.asked = -10**9  # only `ended` signals here
    scheduler = Scheduler(frontend, Answers, journal=journal)
    scheduler.start()
    keys = [f"user{n}" for n in range(conversations)]
    for key in keys:
        scheduler.begin(key)

    def feed() -> None:
        for _ in range(answers):
            for key in keys:
                scheduler.send(key, "answer")

    feeder = threading.Thread(target=feed, name="bench-feeder")
    started = time.perf_counter()
    feeder.start()
    if not frontend.done.wait(600):
        raise SystemExit("the benchmark did not finish in 10 minutes")
    elapsed = time.perf_counter() - started
    feeder.join(10)
    scheduler.stop()
    if journal is not None:
        journal.close()
    return conversations * answers / elapsed


def recovery(conversations: int, open_journal: Callable[[], Journal]) -> tuple[float, int]:
    """Seconds to rebuild `conversations` parked conversations from `open_journal()`'s."""
    journal = open_journal()
    frontend = Counting(conversations)
    scheduler = Scheduler(frontend, Parked, journal=journal)
    scheduler.start()
    for n in range(conversations):
        scheduler.begin(f"user{n}")
        scheduler.send(f"user{n}", f"city {n}")
    # Each parks twice: on "Name?" and on "What next?".
    frontend.remaining = 2 * conversations
    if not frontend.done.wait(600):
        raise SystemExit("setting up the recovery benchmark took over 10 minutes")
    scheduler.stop()
    journal.close()

    started = time.perf_counter()
    journal = open_journal()
    frontend = Counting(conversations)
    scheduler = Scheduler(frontend, Parked, journal=journal)
    rebuilt = scheduler.recover()
    elapsed = time.perf_counter() - started
    journal.close()
    if frontend.asked != conversations:
        raise SystemExit(f"only {frontend.asked} of {conversations} conversations came back")
    return elapsed, rebuilt


#: Where a journal is opened (again, for recovery): a function that opens it.
Place = Callable[[], Journal]


@contextlib.contextmanager
def postgres_places(url: str | None) -> Iterator[Callable[[], Place]]:
    """Yields a maker of empty PostgreSQL journals.

    Each is a new database on a server started here, or, given `url`, a new
    bot in that database (whose rows are left there).
    """
    if url is not None:
        bots = itertools.count(1)
        prefix = f"bench-{time.time_ns()}"

        def new_bot() -> Place:
            bot = f"{prefix}-{next(bots)}"
            return lambda: PostgresJournal(url, bot=bot)

        yield new_bot
        return
    from tests.support.postgres_server import PostgresServer

    with PostgresServer(durable=True) as server:
        print(f"(a local PostgreSQL 16 started in {server.start_seconds:.2f} s)")

        def new_database() -> Place:
            database = server.create_database()
            return lambda: PostgresJournal(database)

        yield new_database


def main(argv: list[str] | None = None) -> None:
    """Run the measurements and print them."""
    global ANSWERS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--answers", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--postgres-url", help="use this database instead of a local server")
    options = parser.parse_args(argv)
    ANSWERS = options.answers
    n, m = options.conversations, options.answers
    memory = sqlite = postgres = 0.0
    with tempfile.TemporaryDirectory() as folder, postgres_places(options.postgres_url) as place:
        for run in range(options.repeat):  # interleaved, so all see the same machine
            memory = max(memory, throughput(n, m, None))
            path = Path(folder) / f"throughput-{run}.sqlite3"
            sqlite = max(sqlite, throughput(n, m, SqliteJournal(path)))
            postgres = max(postgres, throughput(n, m, place()()))
        recovery_file = Path(folder) / "recovery.sqlite3"
        recoveries = {
            "SQLite": recovery(n, lambda: SqliteJournal(recovery_file)),
            "PostgreSQL": recovery(n, place()),
        }
    print(
        f"journal benchmark: {n} conversations x {m} answers, fed from another thread; "
        f"best of {options.repeat}"
    )
    for name, rate in (
        ("in memory", memory), ("SQLite journal", sqlite), ("PostgreSQL journal", postgres)
    ):
        print(f"  {name:<18} {rate:>10,.0f} steps/s  {1e6 / rate:7.2f} µs/step")
    ratio = sqlite / memory
    verdict = "PASS" if ratio >= 0.5 else "FAIL"
    print(f"  SQLite journaled / in memory: {ratio:.2f}  (target >= 0.50: {verdict})")
    print(f"  PostgreSQL journaled / in memory: {postgres / memory:.2f}  (no target)")
    for name, (seconds, rebuilt) in recoveries.items():
        verdict = "PASS" if seconds < 5 else "FAIL"
        print(
            f"  recovery of {rebuilt} conversations from {name}: {seconds:.2f} s  "
            f"(target < 5 s: {verdict})"
        )


if __name__ == "__main__":
    main()
