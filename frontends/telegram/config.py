"""The bot's configuration: the token and Bot API URL from the environment, the options."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from engine.scheduler import DEFAULT_IDLE_TIMEOUT
from frontends.programs import (
    DEFAULT_FLOW,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    ConfigError,
    ProgramParser,
    add_common_options,
    env_number,
)
from frontends.telegram.sending import Pacing

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_FLOW",
    "DEFAULT_STATE",
    "PROGRAM",
    "ConfigError",
    "Settings",
    "build_parser",
    "pacing_from",
    "read_settings",
]

PROGRAM = "weather-bot"
DEFAULT_STATE = "weather-bot.sqlite3"
DEFAULT_API_URL = "https://api.telegram.org"
TOKEN_VARIABLES = ("TELEGRAM_BOT_TOKEN", "TELEGRAM_BOT_API_KEY")
TOKEN_PATTERN = re.compile(r"^\d+:[A-Za-z0-9_-]{30,}$")


@dataclass(frozen=True)
class Settings:
    """What the bot reads from the environment."""

    token: str
    api_url: str


def read_settings(environ: Mapping[str, str]) -> Settings:
    """The token and Bot API URL from the environment; never echoes the token."""
    token, variable = "", TOKEN_VARIABLES[0]
    for name in TOKEN_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            token, variable = value, name
            break
    if not token:
        raise ConfigError(
            f"no bot token: set {TOKEN_VARIABLES[0]} (or {TOKEN_VARIABLES[1]}) "
            "to the token @BotFather gave you"
        )
    if not TOKEN_PATTERN.match(token):
        raise ConfigError(
            f"{variable} does not look like a bot token "
            "(expected digits, a colon and at least 30 letters, digits, '_' or '-')"
        )
    api_url = environ.get("TELEGRAM_API_URL", "").strip().rstrip("/") or DEFAULT_API_URL
    if not re.match(r"^https?://[^\s/]+(/\S*)?$", api_url):
        raise ConfigError("TELEGRAM_API_URL must be an http:// or https:// URL")
    return Settings(token, api_url)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``weather-bot``."""
    parser = ProgramParser(
        prog=PROGRAM,
        description=(
            "Run a conversation flow as a Telegram bot, by long polling. "
            "/start begins a conversation, /cancel ends it, /help says what the bot does. "
            "Stop it with Ctrl-C or SIGTERM: messages being sent get a few seconds to go out."
        ),
        epilog=(
            "environment: TELEGRAM_BOT_TOKEN (or TELEGRAM_BOT_API_KEY) is the bot's token from "
            "@BotFather, required; TELEGRAM_API_URL is the Bot API server (default "
            f"{DEFAULT_API_URL}); TELEGRAM_CHAT_RATE, TELEGRAM_CHAT_BURST, TELEGRAM_GROUP_RATE "
            "and TELEGRAM_GLOBAL_RATE set the defaults of the pacing options; DATABASE_URL "
            "(postgresql://...) is where state is kept when --state is not given."
            "\n\n"
            "exit status: 0 after a stop; 2 for a missing, malformed or rejected token, a flow "
            "that cannot be loaded, a state file or database that cannot be used (a bad URL, a "
            "refused login, an unreachable server), or bad options; 1 if the "
            "bot failed."
        ),
    )
    add_common_options(
        parser,
        state_help=(
            f"SQLite file, or postgresql://USER:PASSWORD@HOST/DB database, where conversations "
            f"are kept, so that they survive a restart or a crash (default: $DATABASE_URL if "
            f"set, else {DEFAULT_STATE} in the working directory); one bot per file"
        ),
        verbose_help="debug logging",
    )
    pacing = parser.add_argument_group(
        "pacing", "Telegram limits how fast a bot may send; 0 switches a limit off"
    )
    pacing.add_argument(
        "--chat-rate",
        type=NON_NEGATIVE,
        metavar="N",
        help="messages a second to one chat, after a burst (default 1, env TELEGRAM_CHAT_RATE)",
    )
    pacing.add_argument(
        "--chat-burst",
        type=NON_NEGATIVE,
        metavar="N",
        help="messages one chat may get at once (default 3, env TELEGRAM_CHAT_BURST)",
    )
    pacing.add_argument(
        "--group-rate",
        type=NON_NEGATIVE,
        metavar="N",
        help="messages a minute to one group (default 20, env TELEGRAM_GROUP_RATE)",
    )
    pacing.add_argument(
        "--global-rate",
        type=NON_NEGATIVE,
        metavar="N",
        help="messages a second to all chats together (default 30, env TELEGRAM_GLOBAL_RATE)",
    )
    pacing.add_argument(
        "--no-pacing",
        action="store_true",
        help="switch all pacing off (for a test server; 429 answers are still honoured)",
    )
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument(
        "--senders", type=POSITIVE_INT, default=8, metavar="N",
        help="threads sending to Telegram, each one request at a time: as many chats may "
        "have one in flight (default 8; button answers have one more)",
    )  # fmt: skip
    tuning.add_argument(
        "--workers", type=POSITIVE_INT, default=8, metavar="N",
        help="threads running the flow's calls, e.g. weather lookups (default 8)",
    )  # fmt: skip
    tuning.add_argument(
        "--idle-timeout", type=POSITIVE, default=DEFAULT_IDLE_TIMEOUT, metavar="SECONDS",
        help="end a conversation after this long without an answer (default one day)",
    )  # fmt: skip
    tuning.add_argument(
        "--poll-timeout", type=POSITIVE_INT, default=25, metavar="SECONDS",
        help="how long one getUpdates long poll may wait for updates (default 25)",
    )  # fmt: skip
    tuning.add_argument(
        "--retry-cap", type=POSITIVE, default=30.0, metavar="SECONDS",
        help="the longest wait between attempts of a send that failed; a send is retried "
        "until it works, however long Telegram is down (default 30)",
    )  # fmt: skip
    tuning.add_argument(
        "--drain-timeout", type=NON_NEGATIVE, default=3.0, metavar="SECONDS",
        help="on stop, how long queued messages may take to go out (default 3)",
    )  # fmt: skip
    from frontends.telegram import webhook  # late: it builds on the other modules

    webhook.add_webhook_options(parser)
    add_shared_options(parser)
    return parser


def add_shared_options(parser: argparse.ArgumentParser) -> None:
    """``--shared`` and ``--shard-interval``."""
    group = parser.add_argument_group("several instances")
    group.add_argument(
        "--shared", action="store_true",
        help="run as one of several instances of the bot on one PostgreSQL --state: "
        "conversations are split between the running instances; with --webhook each "
        "takes updates, else one at a time polls Telegram",
    )  # fmt: skip
    group.add_argument(
        "--shard-interval", type=POSITIVE, default=2.0, metavar="SECONDS",
        help="with --shared: how often instances rebalance, so how soon a dead "
        "instance's conversations move (default 2)",
    )  # fmt: skip



def pacing_from(args: argparse.Namespace) -> Pacing:
    """Pacing from the options, falling back to the environment, then the defaults."""
    if args.no_pacing:
        return Pacing.off()
    defaults = Pacing()

    def pick(option: float | None, variable: str, default: float) -> float:
        return option if option is not None else env_number(os.environ, variable, default)

    return Pacing(
        chat_rate=pick(args.chat_rate, "TELEGRAM_CHAT_RATE", defaults.chat_rate),
        chat_burst=pick(args.chat_burst, "TELEGRAM_CHAT_BURST", defaults.chat_burst),
        group_per_minute=pick(args.group_rate, "TELEGRAM_GROUP_RATE", defaults.group_per_minute),
        global_rate=pick(args.global_rate, "TELEGRAM_GLOBAL_RATE", defaults.global_rate),
    )
