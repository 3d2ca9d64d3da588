"""Write a conversation once as a plain generator; run it anywhere.

What a flow author uses, all of it::

    from engine import State, Steps, Print, Input, Choose, Call, Sleep, Cancelled, Timeout

A frontend (a terminal, a bot) needs more: see :mod:`engine.hosting`.
"""

from engine.commands import (
    Call,
    Cancelled,
    Choose,
    Input,
    Print,
    Sleep,
    Timeout,
    UnsupportedCommand,
)
from engine.states import State, Steps

__all__ = [
    "Call",
    "Cancelled",
    "Choose",
    "Input",
    "Print",
    "Sleep",
    "State",
    "Steps",
    "Timeout",
    "UnsupportedCommand",
]
