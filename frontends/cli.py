"""The terminal frontend: one conversation on stdin/stdout.

Run it as ``weather-cli`` or ``python -m frontends.cli``. It is a thin
driver around the engine's :class:`~engine.scheduler.Scheduler`, with one
conversation under the key ``"terminal"``: answers to a ``Choose`` are
validated, failed ``Call``\\ s are handled and everything else is done by the
engine; this module only shows what the engine gives it and types the user's
lines back in.

Threads: the scheduler calls :class:`TerminalFrontend` on its own thread,
which writes to stdout and puts an event in a queue when a line is wanted or
the conversation is over. The main thread waits on that queue and reads
stdin only when asked, so a piped file is read one answer at a time and
Ctrl-C (a ``KeyboardInterrupt``, always raised in the main thread) is seen
wherever the program is.

Exit status: 0 when the conversation ends or stdin does (Ctrl-D, end of a
piped file); 1 when the flow fails or stdout is closed; 2 for a bad option
or an unusable ``--state`` file; 130 on Ctrl-C (with ``--state``, the
conversation is kept for the next run; without, it is cancelled).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Sequence
from typing import ClassVar, TextIO

from engine.commands import Choose, Command, Input, Picture, Print, User
from engine.frontend import Frontend, Key, Notice, Receipt
from engine.journal import Journal
from engine.scheduler import Scheduler
from engine.states import Flow
from frontends.programs import (
    DEFAULT_FLOW,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    LOG_FORMAT,
    ConfigError,
    ProgramParser,
    add_common_options,
    fail,
    load,
    log_to_stderr,
    open_journal,
)

__all__ = ["DEFAULT_FLOW", "KEY", "TerminalFrontend", "main", "run"]

log = logging.getLogger(__name__)

#: The one conversation's key.
KEY: Key = "terminal"
#: Where pictures are saved without ``--pictures``: beside the user, easy to find.
DEFAULT_PICTURES = "weather-pictures"
#: Shown after a Choose's options, and for an Input without a prompt.
ANSWER_PROMPT = "> "

# What the frontend tells the main thread.
ASK = "ask"  # a question is on screen: read one line
ENDED = "ended"  # the conversation is over
GONE = "gone"  # stdout is closed: nobody can see the conversation any more

#: How long to wait for a cancelled conversation to run its ``finally`` blocks.
_CANCEL_WAIT = 2.0
#: The main thread wakes this often while it waits (so Ctrl-C is always seen).
_POLL = 0.25


class TerminalFrontend(Frontend):
    """Writes the dialogue to `out` and tells the main thread when to read.

    The scheduler calls it on its thread; the main thread takes events
    (:data:`ASK`, :data:`ENDED`, :data:`GONE`) with :meth:`next_event`.
    """

    name = "terminal"
    extra_commands: tuple[type[Command], ...] = (Picture,)
    notices: ClassVar[dict[Notice, str]] = {
        Notice.TRY_AGAIN: "Try again",
        Notice.CANCELLED: "",  # the user ended it: there is nobody to tell
        Notice.NOT_STARTED: "",
        Notice.ALREADY_RUNNING: "",  # a conversation restored from --state goes on
        Notice.RESTARTED: "The saved conversation no longer fits this program, so it starts over.",
    }

    def __init__(
        self, out: TextIO, *, start: str | None = None, pictures: str = DEFAULT_PICTURES
    ) -> None:
        self.out = out
        #: The ``--start`` payload, as a deep link would give it.
        self.start = start
        #: The directory pictures are saved in (made when the first one comes).
        self.pictures = pictures
        self.events: queue.Queue[str] = queue.Queue()
        #: Set once the conversation is over (finished, cancelled or failed).
        self.finished = threading.Event()
        #: Whether the flow failed (the engine said ``Notice.FAILED``).
        self.failed = False
        #: Whether writing to `out` failed (a closed pipe).
        self.gone = False
        #: Whether the cursor is after a prompt, not at the start of a line.
        self.mid_line = False
        self._lock = threading.Lock()

    # -- called by the engine ---------------------------------------------

    def deliver(self, key: Key, command: Command, receipt: Receipt = None) -> None:
        """Print a ``Print``'s text on its own line(s)."""
        if isinstance(command, Print):
            self.write(command.text + "\n")
        elif isinstance(command, Picture):
            self.write(self._save(command) + "\n")
        else:  # the engine sends nothing else
            self.write(f"{command!r}\n")

    def ask(self, key: Key, question: Input | Choose, receipt: Receipt = None) -> None:
        """Show the question, then let the main thread read the answer."""
        if isinstance(question, Choose):
            lines = [question.prompt, *question.numbered()]
            self.write("\n".join(lines) + "\n" + ANSWER_PROMPT)
        else:
            self.write(question.prompt or ANSWER_PROMPT)
        self.events.put(ASK)

    def user(self, key: Key) -> User:
        """The local user: the login name, the language of the locale, ``--start``."""
        try:
            login = getpass.getuser()
        except (OSError, KeyError):  # no login name anywhere (a bare container)
            login = "user"
        return User(id=login, name=login, language=_locale_language(), start=self.start)

    def _save(self, picture: Picture) -> str:
        """Save `picture` as the next free ``picture-N.png``; say where (or why not)."""
        try:
            os.makedirs(self.pictures, exist_ok=True)
            for number in range(1, 100_000):
                path = os.path.join(self.pictures, f"picture-{number}.png")
                try:
                    with open(path, "xb") as file:  # never overwrite an earlier one
                        file.write(picture.png)
                except FileExistsError:
                    continue
                break
            else:
                raise OSError(f"{self.pictures} is full of pictures")
        except OSError as error:
            log.warning("cannot save a picture in %s: %s", self.pictures, error)
            return f"Could not save a picture in {self.pictures}: {error.strerror or error}"
        caption = f": {picture.caption}" if picture.caption else ""
        return f"Picture saved to {path}{caption}"

    def restored(self, key: Key, question: Input | Choose) -> None:
        """A conversation from ``--state`` waits on `question`: ask it again here."""
        self.ask(key, question)

    def notify(self, key: Key, notice: Notice, receipt: Receipt = None) -> None:
        """Show an engine notice (some are silent here); note a failure."""
        if notice is Notice.FAILED:
            self.failed = True
        super().notify(key, notice)

    def halted(self, reason: str) -> None:
        """The engine stopped (its state file failed; it logged why): end, with status 1."""
        self.failed = True
        self.finished.set()
        self.events.put(ENDED)

    def ended(self, key: Key) -> None:
        """The conversation is over: the main thread can finish."""
        self.finished.set()
        self.events.put(ENDED)

    # -- called by the main thread ----------------------------------------

    def next_event(self) -> str:
        """Wait for what the engine wants next (waking often, for Ctrl-C)."""
        while True:
            try:
                return self.events.get(timeout=_POLL)
            except queue.Empty:
                continue

    def write(self, text: str) -> None:
        """Write and flush `text`; a closed stdout ends the program, quietly."""
        with self._lock:
            self._write(text)

    def end_line(self) -> None:
        """Finish a prompt's line (before exiting on Ctrl-C or Ctrl-D)."""
        with self._lock:
            if self.mid_line:
                self._write("\n")

    def _write(self, text: str) -> None:
        if self.gone or not text:
            return
        try:
            self.out.write(text)
            self.mid_line = not text.endswith("\n")  # before it can be seen
            self.out.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the file is closed
            self.gone = True
            self.events.put(GONE)


def _locale_language() -> str | None:
    """The user's language from the locale (``LANG=en_GB.UTF-8`` gives ``en-GB``), if any."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name)
        if value:
            code = value.split(".")[0].split("@")[0]
            return None if code in ("C", "POSIX") else code.replace("_", "-")
    return None


def run(
    flow: Flow,
    stdin: TextIO,
    stdout: TextIO,
    *,
    journal: Journal | None = None,
    echo: bool = False,
    start: str | None = None,
    pictures: str = DEFAULT_PICTURES,
) -> int:
    """Hold one conversation of `flow` on `stdin`/`stdout`; return the exit status.

    With `echo`, each line read is written back after its prompt, so that a
    piped session reads as a dialogue. With a `journal`, a conversation left
    by Ctrl-C (or a crash) goes on at the next run; end of input always ends
    it. ``KeyboardInterrupt`` gives 130. `start` is the flow's start
    payload (``User.start``); pictures are saved in `pictures`.
    """
    frontend = TerminalFrontend(stdout, start=start, pictures=pictures)
    scheduler = Scheduler(
        frontend,
        flow,
        workers=2,
        idle_timeout=float("inf"),  # one user at their own terminal: never expire
        journal=journal,
    )
    begun = False
    status = EXIT_FAILED
    try:
        scheduler.start()
        scheduler.begin(KEY)  # silent if --state restored a conversation
        begun = True
        status = _converse(scheduler, frontend, stdin, echo)
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    finally:
        keep = journal is not None and status == EXIT_INTERRUPTED
        _shut_down(scheduler, frontend, cancel=begun and not keep)
    return status


def _converse(scheduler: Scheduler, frontend: TerminalFrontend, stdin: TextIO, echo: bool) -> int:
    """Read a line each time the flow asks, until it ends or stdin does."""
    while True:
        event = frontend.next_event()
        if event == ENDED:
            return EXIT_FAILED if frontend.failed else EXIT_OK
        if event == GONE:
            return EXIT_FAILED
        try:
            line = stdin.readline()
        except OSError as error:  # e.g. the terminal went away: as good as the end
            log.warning("cannot read the answer: %s", error)
            line = ""
        if not line:  # end of input
            frontend.end_line()
            return EXIT_OK
        text = line.rstrip("\r\n")
        if echo:
            frontend.write(text + "\n")
        elif line.endswith("\n"):
            frontend.mid_line = False  # the terminal echoed the user's Enter
        else:  # a last line without Enter (text, then Ctrl-D twice)
            frontend.end_line()
        scheduler.send(KEY, text)


def _shut_down(scheduler: Scheduler, frontend: TerminalFrontend, *, cancel: bool) -> None:
    """Cancel the conversation (so its ``finally`` blocks run), stop the engine.

    A second Ctrl-C meanwhile is ignored: this takes at most a few seconds.
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        frontend.end_line()
        if cancel and not frontend.finished.is_set():
            scheduler.cancel(KEY)
            if not frontend.finished.wait(_CANCEL_WAIT):
                log.warning("the conversation did not end within %s s", _CANCEL_WAIT)
        scheduler.stop()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


# -- the command line ---------------------------------------------------------

DESCRIPTION = """\
Hold a conversation in the terminal. Answer a choice by its number or its
text. Ctrl-D (or the end of piped input) ends the conversation; Ctrl-C
interrupts it.
"""

EPILOG = """\
exit status: 0 when the conversation or the input ends, 1 when the flow
fails, 2 for a bad option or state file, 130 on Ctrl-C.
"""


def _program_name() -> str:
    base = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if base in ("", "-c", "__main__.py", "cli.py"):
        return "python -m frontends.cli"
    return base


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The options of ``weather-cli``."""
    parser = ProgramParser(prog=prog or _program_name(), description=DESCRIPTION, epilog=EPILOG)
    add_common_options(
        parser,
        state_help="keep the conversation in this journal file, so that after Ctrl-C or a "
        "crash the next run with the same PATH goes on where it was (Ctrl-D ends it)",
        verbose_help="log debugging details (engine steps, HTTP requests, warnings) to stderr; "
        "without it only errors are logged",
    )
    parser.add_argument(
        "--start",
        metavar="PAYLOAD",
        help="start the conversation as a deep link with this payload would "
        "(t.me/<bot>?start=PAYLOAD); the flow sees it as User.start",
    )
    parser.add_argument(
        "--pictures",
        metavar="DIR",
        default=DEFAULT_PICTURES,
        help="save pictures the flow shows (charts) in DIR, as picture-N.png "
        f"(default: ./{DEFAULT_PICTURES}, made when the first one comes)",
    )
    return parser


class _TerminalLogFormatter(logging.Formatter):
    """Without ``-v``, an exception is one line, not a traceback among the dialogue."""

    def __init__(self, fmt: str, *, tracebacks: bool) -> None:
        super().__init__(fmt)
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if self.tracebacks or not record.exc_info:
            return super().format(record)
        error = record.exc_info[1]
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            text = super().format(record)
        finally:
            record.exc_info, record.exc_text = saved
        return f"{text}: {type(error).__name__}: {error} (-v shows the traceback)"


def _configure_logging(prog: str, verbose: bool) -> None:
    # Without -v the terminal shows the dialogue and real errors only, each in
    # one short line: a failed request is already told to the user by the flow.
    fmt = LOG_FORMAT if verbose else f"{prog}: %(levelname)s: %(name)s: %(message)s"
    log_to_stderr(
        logging.DEBUG if verbose else logging.ERROR,
        _TerminalLogFormatter(fmt, tracebacks=verbose),
    )


def _reconfigure(stream: TextIO) -> None:
    """Never fail on a character the terminal's encoding lacks (or a bad byte typed)."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(ValueError, OSError):  # an unusual stream: leave it
            reconfigure(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    """``weather-cli``: parse options, run the conversation, return the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the conversation began, or after it ended
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(parser.prog, args.verbose)
    journal: Journal | None = None
    try:
        flow = load(args.flow)
        if args.state is not None:
            journal = open_journal(args.state, args.flow)
    except ConfigError as error:
        return fail(parser.prog, error)
    stdin: TextIO = sys.stdin if sys.stdin is not None else io.StringIO()  # `<&-`: no input
    _reconfigure(stdin)
    _reconfigure(sys.stdout)
    try:
        status = run(
            flow,
            stdin,
            sys.stdout,
            journal=journal,
            echo=not stdin.isatty(),
            start=args.start,
            pictures=args.pictures,
        )
    finally:
        if journal is not None:
            journal.close()
    if status == EXIT_FAILED:
        _silence_closed_stdout()
    return status


def _silence_closed_stdout() -> None:
    """After a closed pipe, stop Python's last flush of stdout from complaining."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
