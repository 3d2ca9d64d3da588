"""Helpers for tests that run the engine's scheduler (used by ``tests/conftest.py``)."""

from __future__ import annotations

import threading

from engine.scheduler import Scheduler
from engine.testing import RecordingFrontend

#: A started scheduler and the frontend it talks to.
Engine = tuple[Scheduler, RecordingFrontend]


def engine_threads() -> list[str]:
    """Names of the engine's threads still alive (scheduler and workers)."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("engine-"))
