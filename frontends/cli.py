"""The terminal frontend: one conversation on stdin/stdout, on the main thread.

Run it as ``weather-cli`` or ``python -m frontends.cli``. It is a thin
driver around the engine's :class:`~engine.scheduler.Scheduler`, with one
conversation under the key ``"terminal"``: answers to a ``Choose`` are
validated, failed ``Call``\\ s are handled and everything else is done by the
engine; this module only shows what the engine gives it and types the user's
lines back in.

No threads: the scheduler runs here, on the main thread, one batch at a
time (:meth:`Scheduler.run_once`), with no worker pool, so a ``Call`` runs
inline and Ctrl-C (a ``KeyboardInterrupt``, always raised in the main
thread) interrupts it at once. Between batches the driver reads one line when
a question is on screen, waiting no longer than the next timer (a ``Sleep``,
a question's deadline), so timers fire on time while the user types.

Exit status: 0 when the conversation ends; 3 when the input ends first
(Ctrl-D, or the end of a piped file, in the middle of the dialogue); 1 when
the flow fails, the state file cannot be written or the output cannot be
written (a closed pipe, a full disk); 2 for a bad option or an unusable
``--state`` file; 130 on Ctrl-C (with ``--state``, the conversation is kept
for the next run; without, it is cancelled).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import getpass
import io
import logging
import os
import select
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
    state_spec,
)

__all__ = [
    "DEFAULT_FLOW",
    "EXIT_INPUT_ENDED",
    "KEY",
    "LineReader",
    "TerminalFrontend",
    "main",
    "run",
]

log = logging.getLogger("frontends.cli")  # the same name run as a module or a script

#: The one conversation's key.
KEY: Key = "terminal"
#: Where pictures are saved without ``--pictures``: beside the user, easy to find.
DEFAULT_PICTURES = "weather-pictures"
#: Shown after a Choose's options, and for an Input without a prompt.
ANSWER_PROMPT = "> "
#: The input ended (Ctrl-D, the end of a piped file) before the conversation did.
EXIT_INPUT_ENDED = 3


class TerminalFrontend(Frontend):
    """Writes the dialogue to `out`; the engine calls it on the main thread.

    The driver reads what it needs between batches: `asking` (a question is
    on screen), `finished`, `failed` and `gone` (the output cannot be written).
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
        #: Whether a question is on screen, waiting for a line.
        self.asking = False
        #: Whether the conversation is over (finished, cancelled or failed).
        self.finished = False
        #: Whether the flow failed (the engine said ``Notice.FAILED``) or the engine halted.
        self.failed = False
        #: Why writing to `out` failed (a full disk; ``""`` for a closed pipe), or None.
        self.gone: str | None = None
        #: Whether the cursor is after a prompt, not at the start of a line.
        self.mid_line = False

    # -- called by the engine ---------------------------------------------

    def deliver(self, key: Key, command: Command, receipt: Receipt = None) -> None:
        """Print a ``Print``'s text on its own line(s); save a ``Picture`` and say where."""
        if isinstance(command, Print):
            self.write(command.text + "\n")
        elif isinstance(command, Picture):
            self.write(self._save(command) + "\n")
        else:  # the engine sends nothing else
            self.write(f"{command!r}\n")

    def ask(self, key: Key, question: Input | Choose, receipt: Receipt = None) -> None:
        """Show the question; the driver then reads the answer."""
        if isinstance(question, Choose):
            lines = [question.prompt, *question.numbered()]
            self.write("\n".join(lines) + "\n" + ANSWER_PROMPT)
        else:
            self.write(question.prompt or ANSWER_PROMPT)
        self.asking = True

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
        self.finished = True

    def ended(self, key: Key) -> None:
        """The conversation is over."""
        self.finished = True
        self.asking = False

    # -- called by the driver ------------------------------------------------

    def write(self, text: str) -> None:
        """Write and flush `text`; an output that cannot be written ends the program."""
        if self.gone is not None or not text:
            return
        try:
            # Set before writing: a Ctrl-C may land the moment the text is out.
            self.mid_line = not text.endswith("\n")
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:  # the reader left (`| head`): nobody to tell, quietly
            self.gone = ""
        except (OSError, ValueError) as error:  # a full disk, a closed file
            self.gone = getattr(error, "strerror", None) or str(error) or type(error).__name__

    def end_line(self) -> None:
        """Finish a prompt's line (before exiting on Ctrl-C or Ctrl-D)."""
        if self.mid_line:
            self.write("\n")


def _locale_language() -> str | None:
    """The user's language from the locale (``LANG=en_GB.UTF-8`` gives ``en-GB``), if any."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name)
        if value:
            code = value.split(".")[0].split("@")[0]
            return None if code in ("C", "POSIX") else code.replace("_", "-")
    return None


class LineReader:
    """Reads `stream` a line at a time, waiting at most a given time for one.

    A text stream's own buffer hides what it has read ahead from ``select``,
    so a stream with a file descriptor (a terminal, a pipe, a file) is read
    here from the descriptor, with a buffer of our own; others (a
    ``StringIO`` in a test) are read as they are, without a time limit.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # no descriptor
            self.fd = None
        encoding = getattr(stream, "encoding", None) or "utf-8"
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._text = ""
        self._ended = False

    def readline(self, timeout: float | None = None) -> str | None:
        """The next line with its newline; ``""`` at the end; ``None`` if `timeout` passed."""
        if self.fd is None:
            return self.stream.readline()
        while "\n" not in self._text and not self._ended:
            if timeout is not None and not select.select([self.fd], [], [], timeout)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            self._text += self._decoder.decode(chunk, final=not chunk)
            self._ended = not chunk
        line, newline, self._text = self._text.partition("\n")
        return line + newline


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
        workers=0,  # Calls run inline, here: Ctrl-C interrupts them at once
        idle_timeout=float("inf"),  # one user at their own terminal: never expire
        journal=journal,
    )
    begun = False
    status = EXIT_FAILED
    try:
        if scheduler.open():
            scheduler.begin(KEY)  # silent if --state restored a conversation
            begun = True
            status = _converse(scheduler, frontend, LineReader(stdin), echo)
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    finally:
        keep = journal is not None and status == EXIT_INTERRUPTED
        _shut_down(scheduler, frontend, cancel=begun and not keep)
    if frontend.gone:
        log.error("cannot write to the output: %s", frontend.gone)
    return status


def _converse(
    scheduler: Scheduler, frontend: TerminalFrontend, reader: LineReader, echo: bool
) -> int:
    """Run the engine, reading a line each time the flow asks, until it ends or the input does."""
    while True:
        if not scheduler.run_once(wait=0):  # halted: the state file cannot be written
            return EXIT_FAILED
        if frontend.gone is not None:
            return EXIT_FAILED
        if frontend.finished:
            return EXIT_FAILED if frontend.failed else EXIT_OK
        if scheduler.has_events():  # a Call's result: take it first
            continue
        if not frontend.asking:  # a Sleep: wait for its timer
            scheduler.run_once(wait=scheduler.next_timer() or 0.5)
            continue
        line = reader.readline(timeout=scheduler.next_timer())
        if line is None:  # a timer is due first (a question's deadline)
            continue
        if not line:  # end of input
            frontend.end_line()
            return EXIT_INPUT_ENDED
        text = line.rstrip("\r\n")
        if echo:
            frontend.write(text + "\n")
        elif line.endswith("\n"):
            frontend.mid_line = False  # the terminal echoed the user's Enter
        else:  # a last line without Enter (text, then Ctrl-D twice)
            frontend.end_line()
        frontend.asking = False
        scheduler.send(KEY, text)


def _shut_down(scheduler: Scheduler, frontend: TerminalFrontend, *, cancel: bool) -> None:
    """Cancel the conversation (so its ``finally`` blocks run) and let the engine finish.

    A second Ctrl-C meanwhile is ignored: this takes a moment at most.
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        frontend.end_line()
        if cancel and not frontend.finished and scheduler.halted is None:
            scheduler.cancel(KEY)
            scheduler.run_once(wait=0)
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
exit status: 0 when the conversation ends, 3 when the input ends before it,
1 when the flow fails or the output or state file cannot be written, 2 for a
bad option or state file, 130 on Ctrl-C.
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
        state_help="keep the conversation in this journal file (or postgresql:// database; "
        "default: $DATABASE_URL if set), so that after Ctrl-C or a crash the next run with "
        "the same PATH goes on where it was (Ctrl-D ends it)",
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
        state = state_spec(args.state, os.environ, None)
        if state is not None:
            journal = open_journal(state, args.flow)
    except ConfigError as error:
        return fail(parser.prog, error)
    if sys.stdout is None:  # `>&-`: nowhere to hold a conversation
        print(f"{parser.prog}: error: the standard output is closed", file=sys.stderr)
        return EXIT_FAILED
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
    """After a closed pipe or a full disk, stop Python's last flush of stdout from complaining."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
