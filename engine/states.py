"""States and the conversation loop that runs them.

A state is a small class (usually a dataclass of plain-data fields) whose
``run()`` is a generator: it yields commands and returns the next state, or
``None`` to end the conversation. Plain-data fields matter: they let a state
be named in logs and saved as a snapshot by the journal.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Callable, Generator
from typing import Any

from engine.commands import Command

#: What a state's ``run()`` returns: a generator of commands whose return
#: value is the next state.
Steps = Generator[Command, Any, "State | None"]


class State:
    """Base class of a conversation's states.

    Subclasses implement :meth:`run`; they are normally dataclasses so that
    their fields can be saved and restored (see :func:`snapshot`).
    """

    def run(self) -> Steps:
        """Yield commands; return the next state, or ``None`` to finish."""
        raise NotImplementedError(f"{type(self).__name__}.run() is not written")
        yield  # pragma: no cover - makes this a generator


@dataclasses.dataclass(frozen=True, slots=True)
class Entered:
    """Yielded by :func:`conversation` each time a new state begins.

    It is not a command: the engine uses it to snapshot the conversation and
    never shows it to a frontend. :func:`engine.testing` skips it too.
    """

    state: State


#: What a conversation generator yields.
Conversation = Generator[Command | Entered, Any, None]

#: A flow: the first state, or anything that makes it when called.
Flow = State | Callable[[], State]


def first_state(flow: Flow) -> State:
    """The state a conversation of `flow` starts in."""
    state = flow if isinstance(flow, State) else flow()
    if not isinstance(state, State):
        raise TypeError(f"a flow must be a State or make one, got {state!r}")
    return state


def conversation(start: Flow) -> Conversation:
    """Run states one after the other, from `start` until one returns ``None``.

    This is the single stream of commands a frontend sees: sub-flows compose
    inside a state with ``yield from``, and this loop is the only place that
    moves from one state to the next.
    """
    state: State | None = first_state(start)
    while state is not None:
        yield Entered(state)
        state = yield from state.run()
        if state is not None and not isinstance(state, State):
            raise TypeError(f"run() must return a State or None, got {state!r}")


def load_flow(spec: str) -> Flow:
    """Import a flow named ``package.module:attribute`` (for ``--flow``).

    The current directory is searched too, as ``python -m`` does, so that
    ``--flow myflow:Start`` finds ``./myflow.py`` from an installed script.
    The flow's first state is made once, so a broken flow fails now rather
    than in front of its first user. Raises ``ValueError`` with a one-line
    reason when anything goes wrong.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--flow must look like MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import flow module {module_name!r}: {error}") from None
    except Exception as error:  # the module itself is broken
        raise ValueError(
            f"cannot load flow module {module_name!r}: {type(error).__name__}: {error}"
        ) from None
    try:
        flow = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not (isinstance(flow, State) or callable(flow)):
        raise ValueError(f"{spec} is neither a State nor a callable that makes one")
    try:
        first_state(flow)
    except Exception as error:
        raise ValueError(f"cannot start flow {spec}: {type(error).__name__}: {error}") from None
    return flow  # type: ignore[no-any-return]
