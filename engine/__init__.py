"""Write a conversation once as a plain generator; run it anywhere.

The whole public surface::

    from engine import State, Print, Input, Choose, Call, Sleep
"""

from engine.commands import (
    Call,
    Cancelled,
    Choose,
    Command,
    Input,
    Print,
    Sleep,
    UnsupportedCommand,
)
from engine.states import State, conversation

__all__ = [
    "Call",
    "Cancelled",
    "Choose",
    "Command",
    "Input",
    "Print",
    "Sleep",
    "State",
    "UnsupportedCommand",
    "conversation",
]
