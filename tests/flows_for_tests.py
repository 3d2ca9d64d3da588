"""The flow ``tests/fixtures/state_v1.db`` was written with: it must stay at this path.

A state file names its states' classes (``tests.flows_for_tests:Park``) and
its Calls' functions by module; moving them would make the upgrade test's
conversations start over instead of resuming.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from engine import Call, Choose, Input, Print, Sleep, State, Steps

#: Set to let :func:`parked_call` return; the v1 state file was written with it unset.
RELEASE = threading.Event()


def parked_call() -> str:
    """A Call that waits until :data:`RELEASE` is set (for at most a minute)."""
    RELEASE.wait(60.0)
    return "released"


@dataclass(frozen=True)
class Park(State):
    """Parks where the first answer says: ``input``, ``choose``, ``call`` or ``sleep``.

    ``tests/fixtures/state_v1.db`` holds one conversation parked at each, as
    the first release wrote them; the upgrade test resumes them all.
    """

    def run(self) -> Steps:
        where = yield Input("Park where?")
        if where == "choose":
            picked = yield Choose("Pick one", ["red", "blue"])
            yield Print(f"picked {picked}")
        elif where == "call":
            result = yield Call(parked_call)
            yield Print(f"call {result}")
        elif where == "sleep":
            yield Sleep(3600.0)
            yield Print("woke")
        else:
            text = yield Input("Say something")
            yield Print(f"said {text}")
        return None
