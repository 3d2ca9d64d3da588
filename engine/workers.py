"""A small pool of worker threads for blocking ``Call``s.

Why not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined at
interpreter exit, so one HTTP request stuck on a slow server would hold the
whole program open. Ours are daemon threads, joined on :meth:`stop` up to a
deadline: a call still running then is abandoned, which is harmless because
the scheduler ignores late results and a journaled conversation runs its
pending call again after a restart.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Receives (ticket, value, error) when a job ends; called on the worker thread.
Reply = Callable[[Any, Any, BaseException | None], None]

_STOP = object()


class WorkerPool:
    """`size` named threads running jobs from one queue.

    With `size` 0 there are no threads: :meth:`submit` runs each job at once
    on the caller's thread (the terminal runs its one conversation so, and a
    Ctrl-C interrupts a call at once).
    """

    def __init__(self, size: int, name: str = "engine-worker") -> None:
        if size < 0:
            raise ValueError("a worker pool cannot have fewer than no threads")
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
            for n in range(size)
        ]

    def start(self) -> None:
        """Start the threads."""
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], Any], ticket: Any, reply: Reply) -> None:
        """Run ``fn()`` on a worker (here, with none); then ``reply(ticket, value, error)``."""
        if not self._threads:  # a Ctrl-C (KeyboardInterrupt) goes through to the caller
            _run(fn, ticket, reply, Exception)
            return
        self._jobs.put((fn, ticket, reply))

    def stop(self, deadline: float) -> None:
        """Ask every thread to finish and join them until `deadline` (monotonic)."""
        try:  # calls not started yet never will be: no side effect after stop
            while True:
                self._jobs.get_nowait()
        except queue.Empty:
            pass
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._threads if t.is_alive()]
        if busy:
            log.warning("abandoning %d worker(s) still inside a call: %s", len(busy), busy)

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=5.0)
            except queue.Empty:
                continue
            if job is _STOP:
                return
            fn, ticket, reply = job
            _run(fn, ticket, reply, BaseException)  # on a worker even SystemExit goes to the flow


def _run(
    fn: Callable[[], Any], ticket: Any, reply: Reply, caught: type[BaseException]
) -> None:
    try:
        value = fn()
    except caught as error:  # delivered into the flow
        reply(ticket, None, error)
    else:
        reply(ticket, value, None)
