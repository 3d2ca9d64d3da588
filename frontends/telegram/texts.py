"""What the bot says of its own: engine notices, command replies, ``/help``."""

from __future__ import annotations

from engine.frontend import Notice
from engine.states import Flow
from frontends.programs import flow_help

NOTICES: dict[Notice, str] = {
    Notice.NOT_STARTED: "Not started, call /start first",
    Notice.ALREADY_RUNNING: "Already running, call /cancel to exit",
    Notice.CANCELLED: "Exiting...",
    Notice.TRY_AGAIN: "Try again: press one of the buttons, or type an option or its number.",
    Notice.EXPIRED: (
        "Your conversation ended after a long time without an answer. Call /start to begin again."
    ),
    Notice.FAILED: (
        "Sorry, something went wrong on our side. The conversation has ended. "
        "Call /start to try again."
    ),
    Notice.RESTARTED: "The bot was updated, so this conversation starts over.",
    Notice.TOO_MANY_WAITING: (
        "You sent many messages while I was busy, so I dropped the latest ones. "
        "Please wait for my answer, then send again what I missed."
    ),
}
TEXT_PLEASE = "Please answer with text."
UNKNOWN_COMMAND = "Unknown command {command}. I know /start, /cancel, /forget and /help."
#: Under a question's buttons when it also takes a location (the keyboard's message).
LOCATION_HINT = "Or share a location with the button below."
#: When a photo a question asked for could not be fetched from Telegram.
PHOTO_FAILED = "Sorry, I could not get that photo. Please try again."
#: The reply to ``/forget``.
FORGOTTEN = "Done: I have forgotten everything I remembered about you."
#: Under the commands in ``/help``: what is kept, and how to have it deleted.
KEPT_NOTE = (
    "What I remember about you (see above) is kept until you send /forget; "
    "nothing else outlives a conversation."
)
PRESS_ENDED = "This conversation has ended. Call /start to begin a new one."
PRESS_STALE = "That question was already answered."
PRESS_NOT_YOURS = "This question is for {name}."
COMMANDS = (
    ("start", "Begin a conversation"),
    ("cancel", "Stop the current conversation"),
    ("forget", "Forget what I remember about you"),
    ("help", "What this bot does"),
)
GROUP_NOTE = (
    "In a group, each person has a conversation of their own; answer my questions by "
    "replying to them."
)


def help_text(flow: Flow) -> str:
    """What ``/help`` says: what the flow does (its ``help``), the commands, what is kept,
    how groups work."""
    commands = "\n".join(f"/{name} - {what.lower()}" for name, what in COMMANDS)
    return f"{flow_help(flow)}\n\n{commands}\n\n{KEPT_NOTE}\n\n{GROUP_NOTE}"
