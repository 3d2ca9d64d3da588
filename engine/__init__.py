"""Write a conversation once as a plain generator; run it anywhere.

What a flow author uses, all of it::

    from engine import State, Steps, Print, Input, Choose, Call, Sleep, Cancelled, Timeout
    from engine import Who, User, Location, Photo, Recall, Remember, Forget, Picture

A frontend (a terminal, a bot) needs more: see :mod:`engine.hosting`.
"""

from engine.commands import (
    MEMORY_LIMIT,
    Answer,
    Call,
    Cancelled,
    Choose,
    Forget,
    Input,
    Location,
    Photo,
    Picture,
    Print,
    Recall,
    Remember,
    Sleep,
    Timeout,
    UnsupportedCommand,
    User,
    Who,
)
from engine.states import State, Steps

__all__ = [
    "MEMORY_LIMIT",
    "Answer",
    "Call",
    "Cancelled",
    "Choose",
    "Forget",
    "Input",
    "Location",
    "Photo",
    "Picture",
    "Print",
    "Recall",
    "Remember",
    "Sleep",
    "State",
    "Steps",
    "Timeout",
    "UnsupportedCommand",
    "User",
    "Who",
]
