"""What durability costs: the journal's price per step, and recovery time.

Run from the repository root::

    python bench/journal_bench.py [--conversations 10000] [--answers 20]

It prints, from one run, side by side:

* the scheduler's cost per step in memory and with the SQLite journal, on
  the engine benchmark's workload (N conversations x M answers fed from
  another thread), and their ratio (target: the journal keeps at least half
  the in-memory throughput);
* the time to rebuild N conversations from the journal after a restart,
  each parked on a question after a ``Call`` (target: under 5 seconds).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import Call, Choose, Input, Print, State
from engine.commands import Command
from engine.frontend import Frontend
from engine.journal import Journal, SqliteJournal
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
    return conversations * answers / elapsed


def recovery(conversations: int, path: Path) -> tuple[float, int]:
    """Seconds to rebuild `conversations` parked conversations from `path`."""
    journal = SqliteJournal(path)
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
    journal = SqliteJournal(path)
    frontend = Counting(conversations)
    scheduler = Scheduler(frontend, Parked, journal=journal)
    rebuilt = scheduler.recover()
    elapsed = time.perf_counter() - started
    journal.close()
    if frontend.asked != conversations:
        raise SystemExit(f"only {frontend.asked} of {conversations} conversations came back")
    return elapsed, rebuilt


def main(argv: list[str] | None = None) -> None:
    """Run both measurements and print them."""
    global ANSWERS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--answers", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    options = parser.parse_args(argv)
    ANSWERS = options.answers
    n, m = options.conversations, options.answers
    memory = journaled = 0.0
    with tempfile.TemporaryDirectory() as folder:
        for run in range(options.repeat):  # interleaved, so both see the same machine
            memory = max(memory, throughput(n, m, None))
            path = Path(folder) / f"throughput-{run}.sqlite3"
            journaled = max(journaled, throughput(n, m, SqliteJournal(path)))
        seconds, rebuilt = recovery(n, Path(folder) / "recovery.sqlite3")
    print(
        f"journal benchmark: {n} conversations x {m} answers, fed from another thread; "
        f"best of {options.repeat}"
    )
    print(f"  in memory      {memory:>10,.0f} steps/s  {1e6 / memory:6.2f} µs/step")
    print(f"  SQLite journal {journaled:>10,.0f} steps/s  {1e6 / journaled:6.2f} µs/step")
    ratio = journaled / memory
    verdict = "PASS" if ratio >= 0.5 else "FAIL"
    print(f"  journaled / in memory: {ratio:.2f}  (target >= 0.50: {verdict})")
    verdict = "PASS" if seconds < 5 else "FAIL"
    print(f"  recovery of {rebuilt} conversations: {seconds:.2f} s  (target < 5 s: {verdict})")


if __name__ == "__main__":
    main()
