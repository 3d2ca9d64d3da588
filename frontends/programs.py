"""What both programs (``weather-cli`` and ``weather-bot``) share.

The options every program has (``--flow``, ``--state``, ``-v``) and the
``--help`` text about the flow, exit statuses, the log format, backoff,
numbers from options and the environment, and starting up: loading the flow
and opening the journal, where anything wrong is a :class:`ConfigError`, told
in one line with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from engine import journals
from engine.journal import Journal, JournalError
from engine.states import Flow, load_flow

#: The flow a program runs without ``--flow``: the only flow a frontend names.
DEFAULT_FLOW = "flows.weather:WeatherFlow"

EXIT_OK = 0
#: The flow or the program failed.
EXIT_FAILED = 1
#: Bad options or configuration (:class:`ConfigError`).
EXIT_USAGE = 2
#: Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

#: Every log line, in both programs (the terminal's quiet mode has its own, shorter one).
LOG_FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"

#: Said of a flow with no ``help`` of its own.
GENERIC_HELP = "I hold a short conversation with you."

#: The width ``--help`` text is wrapped to.
HELP_WIDTH = 79


class ConfigError(Exception):
    """A one-line reason a program cannot start (exit status 2)."""


def fail(prog: str, error: ConfigError | str) -> int:
    """Tell why the program cannot start, in one line on stderr; return :data:`EXIT_USAGE`."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return EXIT_USAGE


# -- numbers ------------------------------------------------------------------------


def parse_number(
    raw: str, *, whole: bool = False, minimum: float = 0.0, above: bool = False
) -> Any:
    """`raw` as a number of at least `minimum` (more than it, if `above`); ValueError if not.

    A whole number (an ``int``) with `whole`, else a ``float``. The error says
    what is wrong in words that fit after an option's or a variable's name.
    """
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        raise ValueError(f"not a {'whole ' if whole else ''}number: {raw!r}") from None
    if above and value <= minimum:
        raise ValueError(f"must be more than {minimum:g}")
    if value < minimum:
        raise ValueError(
            "must not be negative" if minimum == 0 else f"must be at least {minimum:g}"
        )
    return value


def number_option(
    *, whole: bool = False, minimum: float = 0.0, above: bool = False
) -> Callable[[str], Any]:
    """An argparse ``type`` for :func:`parse_number` with these rules."""

    def parse(raw: str) -> Any:
        try:
            return parse_number(raw, whole=whole, minimum=minimum, above=above)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


#: ``type`` of an option that takes seconds or a rate, 0 included.
NON_NEGATIVE = number_option()
#: ``type`` of an option that takes a number of seconds above 0.
POSITIVE = number_option(above=True)
#: ``type`` of an option that takes a count of 1 or more.
POSITIVE_INT = number_option(whole=True, minimum=1)


def env_number(environ: Mapping[str, str], name: str, default: float) -> float:
    """A non-negative number from variable `name`, or `default` if unset; else ConfigError."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(parse_number(raw))
    except ValueError as error:
        reason = str(error)
        if reason.startswith("not a number"):
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        raise ConfigError(f"{name} {reason}") from None


# -- backoff --------------------------------------------------------------------------


def backoff(failures: int, first: float, maximum: float) -> float:
    """Seconds to wait after the `failures`-th failure in a row: doubling, capped, jittered.

    The jitter (±20 %) keeps many clients that failed together from retrying together.
    """
    return min(maximum, first * 2.0 ** max(0, failures - 1)) * random.uniform(0.8, 1.2)


# -- options and --help ----------------------------------------------------------------


def add_common_options(
    parser: argparse.ArgumentParser,
    *,
    state_help: str,
    state_default: str | None = None,
    verbose_help: str,
) -> None:
    """Add ``--flow``, ``--state`` and ``-v`` (whose meaning differs per program) to `parser`."""
    parser.add_argument(
        "--flow",
        metavar="MODULE:ATTR",
        default=DEFAULT_FLOW,
        help="the flow to run: a State class, or a callable making the first state "
        f"(default: {DEFAULT_FLOW})",
    )
    parser.add_argument("--state", metavar="PATH", default=state_default, help=state_help)
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)


def flow_help(flow: object) -> str:
    """What `flow` does, in its own words (its ``help``), or a generic line."""
    described = getattr(flow, "help", None)
    if isinstance(described, str) and described.strip():
        return described.strip()
    return GENERIC_HELP


def flow_settings(flow: object) -> list[tuple[str, str]]:
    """The environment variables `flow` reads (its ``settings``), as (name, meaning) pairs."""
    settings = getattr(flow, "settings", None)
    if not isinstance(settings, Mapping):
        return []
    return [(str(name), str(meaning)) for name, meaning in settings.items()]


def wrap(text: str, width: int = HELP_WIDTH) -> str:
    """Paragraphs (separated by blank lines) wrapped for ``--help``; URLs are not cut."""
    paragraphs = [" ".join(part.split()) for part in text.split("\n\n") if part.strip()]
    return "\n\n".join(
        textwrap.fill(paragraph, width, break_on_hyphens=False) for paragraph in paragraphs
    )


def flow_epilog(spec: str = DEFAULT_FLOW) -> str:
    """The ``--help`` section about the flow `spec`: what it does and what it reads."""
    try:
        flow = load_flow(spec)
    except ValueError:  # then --help still works; running will say what is wrong
        return f"the flow ({spec}) cannot be loaded"
    lines = [f"the flow ({spec}):", textwrap.indent(wrap(flow_help(flow), HELP_WIDTH - 2), "  ")]
    settings = flow_settings(flow)
    if settings:
        lines += ["", "its settings (environment):"]
        width = max(len(name) for name, _ in settings) + 2
        for name, meaning in settings:
            text = textwrap.wrap(meaning, HELP_WIDTH - width - 2, break_on_hyphens=False) or [""]
            lines.append(f"  {name:<{width}}{text[0]}")
            lines += [" " * (width + 2) + more for more in text[1:]]
    return "\n".join(lines)


class ProgramParser(argparse.ArgumentParser):
    """An argument parser whose ``--help`` ends with the default flow's help.

    The flow is loaded only when help is shown. `description` and `epilog`
    are wrapped as paragraphs (text separated by blank lines).
    """

    def __init__(self, *, prog: str | None, description: str, epilog: str) -> None:
        super().__init__(
            prog=prog,
            description=wrap(description),
            epilog=wrap(epilog),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def format_help(self) -> str:
        own = self.epilog
        self.epilog = f"{flow_epilog()}\n\n{own}" if own else flow_epilog()
        try:
            return super().format_help()
        finally:
            self.epilog = own


# -- starting up ------------------------------------------------------------------------


def load(spec: str, environ: Mapping[str, str] | None = None) -> Flow:
    """The flow `spec` names (``MODULE:ATTR``), its settings checked; else ConfigError.

    The flow's own ``check(environ)`` (see :func:`check_flow_settings`) runs
    against `environ` (default ``os.environ``), so a bad setting is told in
    one line at start rather than looking like an outage to every user later.
    """
    try:
        flow = load_flow(spec)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_flow_settings(flow, os.environ if environ is None else environ)
    return flow


def check_flow_settings(flow: object, environ: Mapping[str, str]) -> None:
    """Run `flow`'s ``check(environ)``, if it has one; its ValueError becomes a ConfigError.

    A flow (its first state class, or the callable making it) may define
    ``check`` as a static method that reads the variables its ``settings``
    name and raises ``ValueError`` with a one-line reason for a bad value.
    """
    check = getattr(flow, "check", None)
    if not callable(check):
        return
    try:
        check(environ)
    except ValueError as error:
        raise ConfigError(" ".join(str(error).split())) from None


#: Where the programs find a PostgreSQL URL when ``--state`` is not given.
DATABASE_URL = "DATABASE_URL"


def state_spec(option: str | None, environ: Mapping[str, str], default: str | None) -> str | None:
    """What to keep state in: ``--state``, else ``$DATABASE_URL``, else `default`."""
    if option:
        return option
    return environ.get(DATABASE_URL, "").strip() or default


def open_journal(spec: str, flow: str | None = None, *, shared: bool = False) -> Journal:
    """The journal `spec` names: a SQLite file path, or a ``postgresql://`` URL.

    With `flow` (the ``--flow`` spec), a journal written for another flow is
    refused; `shared`, one of several instances on one database. ConfigError
    in one line if it cannot be used: a bad URL, a refused login, an
    unreachable server, a file or database in use...
    """
    try:
        journal = journals.open_journal(spec, shared=shared)
    except JournalError as error:
        raise ConfigError(str(error)) from None
    if flow is not None:
        try:
            journal.claim(flow)
        except JournalError as error:
            journal.close()
            raise ConfigError(str(error)) from None
    return journal


def log_to_stderr(
    level: int, formatter: logging.Formatter | None = None, filters: Iterable[logging.Filter] = ()
) -> None:
    """Every log record at `level` or above to stderr, through one handler (replacing any).

    Warnings (``warnings.warn``) are logged too. `formatter` defaults to
    :data:`LOG_FORMAT`; `filters` go on the handler, so they see every record.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter or logging.Formatter(LOG_FORMAT))
    for one in filters:
        handler.addFilter(one)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
