"""Run a flow as a Telegram bot: ``python -m frontends.telegram`` (or ``weather-bot``).

Threads, and what each may do:

``telegram-polling``
    pyTelegramBotAPI's long polling (``getUpdates``) and its handlers
    (``TeleBot(threaded=False)``, so they run here, one update at a time,
    in update order). Handlers only hand updates to the scheduler
    (``begin``/``send``/``cancel``) or queue an answer in the outbox; no
    flow code runs here. Daemon: when stopping, a long poll in flight is
    abandoned, which loses nothing (updates are confirmed by the next poll).
``engine-scheduler`` and ``engine-worker-N``
    The engine (``engine.scheduler``). It calls :class:`TelegramFrontend`,
    which only queues work in the outbox.
``telegram-sender-N``
    The outbox (``frontends.telegram_sending``): every Bot API call that
    sends, in order per chat, paced and retried.

Every Bot API call pyTelegramBotAPI makes travels on ``frontends.telegram_http``
(urllib3 directly: a quarter of ``requests``' CPU per call).

Configuration comes from the environment (``TELEGRAM_BOT_TOKEN``,
``TELEGRAM_API_URL``, ...) and the options; see ``--help``. The token is
never written anywhere: a filter on the log handlers masks it, including in
the URLs that ``requests`` puts into its exceptions.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
import random
import re
import signal
import sys
import threading
import time
import traceback
import types as pytypes
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import requests
import telebot
from telebot import apihelper, types, util

from engine.commands import Call, Choose, Command, Input, Print
from engine.frontend import Frontend, Key, Notice
from engine.journal import JournalError, SqliteJournal
from engine.scheduler import DEFAULT_IDLE_TIMEOUT, Scheduler
from engine.states import Flow, load_flow
from frontends import telegram_http
from frontends.telegram_sending import (
    MESSAGE_LIMIT,
    AnswerCallback,
    EditMessage,
    Keyboard,
    Outbox,
    Pacing,
    PermanentError,
    RetryAfter,
    SendError,
    TransientError,
    utf16_len,
)

log = logging.getLogger("frontends.telegram")

PROGRAM = "weather-bot"
DEFAULT_FLOW = "flows.weather:WeatherFlow"
DEFAULT_STATE = "weather-bot.sqlite3"
DEFAULT_API_URL = "https://api.telegram.org"
TOKEN_VARIABLES = ("TELEGRAM_BOT_TOKEN", "TELEGRAM_BOT_API_KEY")
TOKEN_PATTERN = re.compile(r"^\d+:[A-Za-z0-9_-]{30,}$")

#: pyTelegramBotAPI's Update, whose ``de_json`` is not annotated.
_update_type: Any = types.Update

#: Seconds a send may take (connect and read) before it counts as failed.
SEND_TIMEOUT = 15
#: The updates this bot asks for; anything else is ignored if it comes anyway.
ALLOWED_UPDATES = ["message", "callback_query"]

# -- what the bot says ----------------------------------------------------------

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
}
TEXT_PLEASE = "Please answer with text."
UNKNOWN_COMMAND = "Unknown command {command}. I know /start, /cancel and /help."
PRESS_ENDED = "This conversation has ended. Call /start to begin a new one."
PRESS_STALE = "That question was already answered."
PRESS_NOT_YOURS = "This question is for {name}."
WEATHER_DESCRIPTION = (
    "I tell you the current weather anywhere in the world: name a city, pick the place "
    "you mean if there are several, and I show its temperature, sky and wind. "
    "Weather data by Open-Meteo.com."
)
GENERIC_DESCRIPTION = "I hold a short conversation with you."
COMMANDS = (
    ("start", "Begin a conversation"),
    ("cancel", "Stop the current conversation"),
    ("help", "What this bot does"),
)
GROUP_NOTE = (
    "In a group, each person has a conversation of their own; answer my questions by "
    "replying to them."
)

#: Message kinds a person sends instead of text (they get :data:`TEXT_PLEASE`).
#: Service messages (someone joined, a pinned message...) are ignored.
NON_TEXT = frozenset(
    {
        "animation", "audio", "contact", "dice", "document", "game", "live_photo", "location",
        "photo", "poll", "sticker", "story", "venue", "video", "video_note", "voice",
    }
)  # fmt: skip


def help_text(flow: Flow, spec: str) -> str:
    """What ``/help`` says: what the flow does (``help`` attribute if it has one)."""
    described = getattr(flow, "help", None)
    if isinstance(described, str) and described.strip():
        about = described.strip()
    elif spec == DEFAULT_FLOW:
        about = WEATHER_DESCRIPTION
    else:
        about = GENERIC_DESCRIPTION
    commands = "\n".join(f"/{name} - {what.lower()}" for name, what in COMMANDS)
    return f"{about}\n\n{commands}\n\n{GROUP_NOTE}"


# -- configuration ----------------------------------------------------------------


class ConfigError(Exception):
    """A one-line reason the bot cannot start (exit status 2)."""


@dataclass(frozen=True)
class Settings:
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


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


def _non_negative(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive(raw: str) -> float:
    value = _non_negative(raw)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
            "and TELEGRAM_GLOBAL_RATE set the defaults of the pacing options; the weather flow "
            "reads OPEN_METEO_GEOCODING_URL, OPEN_METEO_FORECAST_URL and OPEN_METEO_TIMEOUT. Exit "
            "status: 0 after a "
            "stop; 2 for a missing, malformed or rejected token, a flow that cannot be loaded, "
            "a state file that cannot be used, or bad options; 1 if the bot failed."
        ),
    )
    parser.add_argument(
        "--flow",
        default=DEFAULT_FLOW,
        metavar="MODULE:ATTR",
        help=f"the flow to run: a State, or a callable making one (default {DEFAULT_FLOW})",
    )
    parser.add_argument(
        "--state",
        default=DEFAULT_STATE,
        metavar="PATH",
        help=(
            f"SQLite file where conversations are kept, so that they survive a restart or a "
            f"crash (default: {DEFAULT_STATE} in the working directory); one bot per file"
        ),
    )
    pacing = parser.add_argument_group(
        "pacing", "Telegram limits how fast a bot may send; 0 switches a limit off"
    )
    pacing.add_argument(
        "--chat-rate",
        type=_non_negative,
        metavar="N",
        help="messages a second to one chat, after a burst (default 1, env TELEGRAM_CHAT_RATE)",
    )
    pacing.add_argument(
        "--chat-burst",
        type=_non_negative,
        metavar="N",
        help="messages one chat may get at once (default 3, env TELEGRAM_CHAT_BURST)",
    )
    pacing.add_argument(
        "--group-rate",
        type=_non_negative,
        metavar="N",
        help="messages a minute to one group (default 20, env TELEGRAM_GROUP_RATE)",
    )
    pacing.add_argument(
        "--global-rate",
        type=_non_negative,
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
        "--senders", type=_positive_int, default=4, metavar="N",
        help="threads sending to Telegram (default 4)",
    )  # fmt: skip
    tuning.add_argument(
        "--workers", type=_positive_int, default=8, metavar="N",
        help="threads running the flow's calls, e.g. weather lookups (default 8)",
    )  # fmt: skip
    tuning.add_argument(
        "--idle-timeout", type=_positive, default=DEFAULT_IDLE_TIMEOUT, metavar="SECONDS",
        help="end a conversation after this long without an answer (default one day)",
    )  # fmt: skip
    tuning.add_argument(
        "--poll-timeout", type=_positive_int, default=25, metavar="SECONDS",
        help="how long one getUpdates long poll may wait for updates (default 25)",
    )  # fmt: skip
    tuning.add_argument(
        "--drain-timeout", type=_non_negative, default=3.0, metavar="SECONDS",
        help="on stop, how long queued messages may take to go out (default 3)",
    )  # fmt: skip
    from frontends import webhook  # late: it builds on this module

    webhook.add_webhook_options(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def pacing_from(args: argparse.Namespace) -> Pacing:
    """Pacing from the options, falling back to the environment, then the defaults."""
    if args.no_pacing:
        return Pacing.off()
    defaults = Pacing()

    def pick(option: float | None, variable: str, default: float) -> float:
        return option if option is not None else _env_float(variable, default)

    return Pacing(
        chat_rate=pick(args.chat_rate, "TELEGRAM_CHAT_RATE", defaults.chat_rate),
        chat_burst=pick(args.chat_burst, "TELEGRAM_CHAT_BURST", defaults.chat_burst),
        group_per_minute=pick(args.group_rate, "TELEGRAM_GROUP_RATE", defaults.group_per_minute),
        global_rate=pick(args.global_rate, "TELEGRAM_GLOBAL_RATE", defaults.global_rate),
    )


# -- keeping the token out of the logs ----------------------------------------------


class Redactor(logging.Filter):
    """Masks secrets in every record passing a handler (message, args, traceback)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        bot_id, _, secret = token.partition(":")
        self._replacements = [(token, f"{bot_id}:<token>")]
        self._replacements.append((token.replace(":", "%3A"), f"{bot_id}%3A<token>"))
        if secret:
            self._replacements.append((secret, "<token>"))

    def redact(self, text: str) -> str:
        for secret, mask in self._replacements:
            if secret in text:
                text = text.replace(secret, mask)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what can be kept
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def setup_logging(verbose: bool, redactor: Redactor) -> None:
    """One stderr handler, masked by `redactor`; uncaught exceptions go through it too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s")
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
    for existing in logging.getLogger().handlers:
        existing.addFilter(redactor)
    # pyTelegramBotAPI gives its logger a handler of its own, which the filter
    # would not see: let its records reach the root handler instead.
    telebot.logger.handlers.clear()
    telebot.logger.propagate = True
    telebot.logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.captureWarnings(True)

    def uncaught(
        kind: type[BaseException], error: BaseException, tb: pytypes.TracebackType | None
    ) -> None:
        logging.getLogger(PROGRAM).critical("uncaught exception", exc_info=(kind, error, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None:
            return
        name = args.thread.name if args.thread else "?"
        logging.getLogger(PROGRAM).critical(
            "uncaught exception in thread %s",
            name,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread


# -- the Bot API, as the outbox needs it ----------------------------------------------


def classify(error: Exception) -> SendError:
    """Turn a pyTelegramBotAPI or requests failure into retry-after, transient or permanent.

    The reasons never quote the exception's text where it may hold a URL
    (and so the token): requests' errors are named by their type only.
    """
    if isinstance(error, apihelper.ApiTelegramException):
        code = int(error.error_code)
        reason = f"HTTP {code}: {error.description}"
        parameters = error.result_json.get("parameters") or {}
        if code == 429:
            return RetryAfter(_seconds(parameters.get("retry_after"), 1.0), reason)
        if code >= 500:
            return TransientError(reason)
        return PermanentError(reason)
    if isinstance(error, apihelper.ApiHTTPException):
        status = int(error.result.status_code)
        reason = f"HTTP {status} {error.result.reason or ''}".strip()
        if status == 429:
            return RetryAfter(_seconds(error.result.headers.get("Retry-After"), 1.0), reason)
        if status >= 500 or status == 408:
            return TransientError(reason)
        return PermanentError(reason)
    if isinstance(error, apihelper.ApiInvalidJSONException):
        return TransientError("the server's answer was not JSON")
    if isinstance(error, requests.Timeout):
        return TransientError("timed out")
    if isinstance(error, requests.ConnectionError):
        return TransientError("connection failed")
    if isinstance(error, requests.RequestException):
        return TransientError(type(error).__name__)
    return PermanentError(f"{type(error).__name__}")


def _seconds(raw: object, default: float) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return value if value >= 0 else default


class TeleBotApi:
    """The outbox's :class:`~frontends.telegram_sending.BotApi`, over a ``TeleBot``."""

    def __init__(self, bot: telebot.TeleBot) -> None:
        self.bot = bot

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SendError:
            raise
        except Exception as error:
            raise classify(error) from None

    def send_message(
        self,
        chat_id: int,
        text: str,
        *,
        reply_to: int | None,
        keyboard: Keyboard | None,
        force_reply: bool,
    ) -> int:
        markup: types.InlineKeyboardMarkup | types.ForceReply | None = None
        if keyboard:
            markup = types.InlineKeyboardMarkup(
                [
                    [types.InlineKeyboardButton(label, callback_data=data)]
                    for label, data in keyboard
                ]
            )
        elif force_reply:
            markup = types.ForceReply(selective=True)
        reply = None
        if reply_to is not None:
            reply = types.ReplyParameters(reply_to, allow_sending_without_reply=True)
        message = self._call(
            self.bot.send_message,
            chat_id,
            text,
            reply_markup=markup,
            reply_parameters=reply,
            timeout=SEND_TIMEOUT,
        )
        return int(message.message_id)

    def send_chat_action(self, chat_id: int, action: str) -> None:
        self._call(self.bot.send_chat_action, chat_id, action, timeout=SEND_TIMEOUT)

    def edit_text(self, chat_id: int, message_id: int, text: str) -> None:
        self._call(
            self.bot.edit_message_text, text, chat_id=chat_id, message_id=message_id,
            timeout=SEND_TIMEOUT,
        )  # fmt: skip

    def remove_keyboard(self, chat_id: int, message_id: int) -> None:
        self._call(
            self.bot.edit_message_reply_markup, chat_id=chat_id, message_id=message_id,
            timeout=SEND_TIMEOUT,
        )  # fmt: skip

    def answer_callback(self, callback_id: str, text: str | None) -> None:
        self._call(self.bot.answer_callback_query, callback_id, text=text)


# -- who is talking to whom ---------------------------------------------------------


def is_group(chat_type: str | None) -> bool:
    return chat_type in ("group", "supergroup")


def conversation_key(chat_id: int, user_id: int, group: bool) -> Key:
    """One conversation per private chat; in a group, one per (chat, person)."""
    return f"{chat_id}:{user_id}" if group else str(chat_id)


@dataclass
class Route:
    """Where `key`'s messages go: the chat and, in a group, whom to answer."""

    chat_id: int
    user_id: int | None = None  # set in groups only
    reply_to: int | None = None  # the person's latest message (groups)
    name: str | None = None

    @classmethod
    def of(cls, key: Key) -> Route:
        chat, _, user = key.partition(":")
        return cls(int(chat), int(user) if user else None)


@dataclass
class Question:
    """An open ``Choose`` shown with buttons."""

    key: Key
    chat_id: int
    tag: str  # names the question in the buttons' callback data
    options: tuple[str, ...]
    message_id: int | None = None  # the message with the buttons, once sent


def question_tag(question: Choose) -> str:
    """A short, stable name of a question: the same after a restart."""
    digest = hashlib.blake2b(
        "\x00".join((question.prompt, *question.options)).encode(), digest_size=6
    )
    return digest.hexdigest()


class Registry:
    """What the polling thread, the scheduler and the senders share, under one lock."""

    MAX_ROUTES = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: OrderedDict[Key, Route] = OrderedDict()
        self._active: set[Key] = set()
        self._questions: dict[Key, Question] = {}

    def route(self, key: Key) -> Route:
        with self._lock:
            route = self._routes.get(key)
            return Route(**vars(route)) if route else Route.of(key)

    def saw(self, key: Key, route: Route) -> None:
        """The person behind `key` wrote (or pressed): remember where to answer."""
        with self._lock:
            self._routes[key] = route
            self._routes.move_to_end(key)
            while len(self._routes) > self.MAX_ROUTES:
                self._routes.popitem(last=False)

    def activate(self, key: Key) -> None:
        with self._lock:
            self._active.add(key)

    def is_active(self, key: Key) -> bool:
        with self._lock:
            return key in self._active

    def end(self, key: Key) -> Question | None:
        with self._lock:
            self._active.discard(key)
            return self._close(key)

    def open(self, question: Question) -> None:
        with self._lock:
            self._close(question.key)
            self._questions[question.key] = question

    def sent(self, question: Question, message_id: int) -> None:
        """The question's buttons are on screen (called on a sender thread)."""
        with self._lock:
            question.message_id = message_id

    def close(self, key: Key) -> Question | None:
        with self._lock:
            return self._close(key)

    def _close(self, key: Key) -> Question | None:
        return self._questions.pop(key, None)

    def question(self, key: Key) -> Question | None:
        with self._lock:
            return self._questions.get(key)


def retire_buttons(
    outbox: Outbox,
    chat_id: int,
    message_id: Callable[[], int | None],
    text: str | None = None,
    answer: str | None = None,
) -> None:
    """Queue taking the buttons off a message; with `answer`, show it below `text`."""
    edited = None
    if answer is not None and text is not None:
        edited = f"{text}\n\n→ {answer}"
        if utf16_len(edited) > MESSAGE_LIMIT:
            edited = None
    outbox.put(EditMessage(chat_id, message_id=message_id, text=edited))


# -- the engine's side ----------------------------------------------------------------


class TelegramFrontend(Frontend):
    """What the scheduler calls (on its thread): all of it only queues sends."""

    name = "Telegram"
    notices = NOTICES
    confirms_delivery = True

    def __init__(
        self, outbox: Outbox, registry: Registry, on_halt: Callable[[str], None] | None = None
    ) -> None:
        self.outbox = outbox
        self.registry = registry
        self.on_halt = on_halt

    def _send(
        self,
        key: Key,
        text: str,
        *,
        keyboard: Keyboard | None = None,
        force_reply: bool = False,
        on_sent: Callable[[int, str], None] | None = None,
    ) -> None:
        route = self.registry.route(key)
        self.outbox.send_text(
            route.chat_id,
            text,
            reply_to=route.reply_to,
            keyboard=keyboard,
            force_reply=force_reply and route.user_id is not None,
            on_sent=on_sent,
            on_done=self._confirmation(),
        )

    def _confirmation(self) -> Callable[[], None] | None:
        """What tells the engine this output is out (it was handed over with a receipt)."""
        receipt = self.receipt
        return None if receipt is None else functools.partial(self.sent, receipt)

    def _nothing_to_send(self) -> None:
        confirm = self._confirmation()
        if confirm is not None:
            confirm()

    def _retire(self, question: Question | None) -> None:
        """Take the buttons off a question that is over."""
        if question is not None:
            retire_buttons(self.outbox, question.chat_id, lambda: question.message_id)

    def deliver(self, key: Key, command: Command) -> None:
        if not isinstance(command, Print):
            raise TypeError(f"the Telegram frontend cannot show {command!r}")
        self._retire(self.registry.close(key))
        self._send(key, command.text)

    def notify(self, key: Key, notice: Notice) -> None:
        text = self.notices.get(notice, notice.value)
        if not text:
            self._nothing_to_send()
            return
        if notice in (Notice.ALREADY_RUNNING, Notice.NOT_STARTED):
            self._send(key, text)  # the conversation goes on: keep its buttons
        else:
            self.deliver(key, Print(text))

    def ask(self, key: Key, question: Input | Choose) -> None:
        self.registry.activate(key)
        self._retire(self.registry.close(key))
        if isinstance(question, Input):
            if question.prompt and question.prompt.strip():
                self._send(key, question.prompt, force_reply=True)
            else:  # nothing to send, so nothing that would end "typing…" either
                self.outbox.typing(self.registry.route(key).chat_id, on=False)
                self._nothing_to_send()
            return
        route = self.registry.route(key)
        tag = question_tag(question)
        shown = Question(key, route.chat_id, tag, question.options)
        self.registry.open(shown)
        # In a group the buttons name whose they are: anyone there can press them.
        owner = "" if route.user_id is None else f":{route.user_id}"
        keyboard = tuple((option, f"{tag}:{n}{owner}") for n, option in enumerate(question.options))

        def on_sent(message_id: int, text: str) -> None:
            self.registry.sent(shown, message_id)

        prompt = question.prompt if question.prompt.strip() else "Choose one:"
        self._send(key, prompt, keyboard=keyboard, on_sent=on_sent)

    def restored(self, key: Key, question: Input | Choose) -> None:
        """After a restart: the question is on screen already; its buttons work again."""
        self.registry.activate(key)
        if isinstance(question, Choose):
            route = self.registry.route(key)
            tag = question_tag(question)
            self.registry.open(Question(key, route.chat_id, tag, question.options))

    def working(self, key: Key, command: Command) -> None:
        self.registry.activate(key)
        self._retire(self.registry.close(key))
        if isinstance(command, Call):
            self.outbox.typing(self.registry.route(key).chat_id)

    def ended(self, key: Key) -> None:
        self.outbox.typing(self.registry.route(key).chat_id, on=False)
        self._retire(self.registry.end(key))

    def halted(self, reason: str) -> None:
        if self.on_halt is not None:
            self.on_halt(reason)


# -- the Telegram side: updates in -------------------------------------------------------


class Updates:
    """pyTelegramBotAPI handlers: run on the polling thread, one update at a time."""

    def __init__(
        self,
        bot: telebot.TeleBot,
        scheduler: Scheduler,
        outbox: Outbox,
        registry: Registry,
        help_text: str,
    ) -> None:
        self.bot = bot
        self.scheduler = scheduler
        self.outbox = outbox
        self.registry = registry
        self.help_text = help_text
        self.username = ""  # the bot's, set by the poller from getMe
        self.bot_id: int | None = None
        self.source: int | None = None  # update_id of the update being handled
        media = set(util.content_type_media) | set(util.content_type_service) | NON_TEXT
        bot.register_message_handler(self.on_message, content_types=sorted(media))
        bot.register_callback_query_handler(self.on_press, func=lambda press: True)

    def handle(self, update: types.Update) -> None:
        """Dispatch one update to the handlers (or nowhere: other kinds are ignored).

        Its id goes to the scheduler with whatever it caused, or alone, so
        that the journal knows it was taken.
        """
        self.source = update.update_id
        try:
            self.bot.process_new_updates([update])
        finally:
            if self.source is not None:
                self.scheduler.post(None, source=self.source)
            self.source = None

    def taken(self, update_id: int) -> bool:
        """Handled before: after a crash Telegram sends what it was not told of."""
        return self.scheduler.already_taken(update_id)

    def journaled(self) -> int | None:
        """The last update id the journal holds."""
        return self.scheduler.committed_source

    def _take_source(self) -> int | None:
        """The update id, for the one event it causes."""
        source, self.source = self.source, None
        return source

    def _reply(self, key: Key, text: str) -> None:
        """A reply of the bot's own, in its place among the conversation's messages."""
        route = self.registry.route(key)
        send = functools.partial(
            self.outbox.send_text, route.chat_id, text, reply_to=route.reply_to
        )
        self.scheduler.post(send, source=self._take_source())

    def on_message(self, message: types.Message) -> None:
        chat, person = message.chat, message.from_user
        if chat is None or chat.type not in ("private", "group", "supergroup"):
            log.debug("ignoring a message in a %s", getattr(chat, "type", "chat of no type"))
            return
        if person is None or person.is_bot:
            log.debug("ignoring a message from a bot or from no one in chat %s", chat.id)
            return
        group = is_group(chat.type)
        key = conversation_key(chat.id, person.id, group)
        if group:
            route = Route(chat.id, person.id, message.message_id, person.first_name or None)
        else:
            route = Route(chat.id)
        self.registry.saw(key, route)

        if message.content_type != "text" or message.text is None:
            self._not_text(key, group, message.content_type)
            return
        text: str = message.text
        if text.startswith("/"):
            self._command(key, group, text)
            return
        if group and not self._addressed_to_me(key, message):
            log.debug("ignoring group chatter in chat %s", chat.id)
            return
        self.scheduler.send(key, text, source=self._take_source())

    def _addressed_to_me(self, key: Key, message: types.Message) -> bool:
        """In a group: part of a conversation, a reply to the bot, or mentioning it."""
        if self.registry.is_active(key):
            return True
        replied = message.reply_to_message
        if (
            replied is not None
            and replied.from_user is not None
            and self.bot_id is not None
            and replied.from_user.id == self.bot_id
        ):
            return True
        return (
            bool(self.username)
            and f"@{self.username}".casefold() in (message.text or "").casefold()
        )

    def _command(self, key: Key, group: bool, text: str) -> None:
        word = text.split(maxsplit=1)[0][1:]
        name, _, target = word.partition("@")
        if target and self.username and target.casefold() != self.username.casefold():
            log.debug("ignoring /%s addressed to @%s", name, target)
            return
        name = name.casefold()
        if name == "start":
            self.registry.activate(key)
            self.scheduler.begin(key, source=self._take_source())
        elif name == "cancel":
            self.scheduler.cancel(key, source=self._take_source())
        elif name == "help":
            self._reply(key, self.help_text)
        elif not group or target:
            self._reply(key, UNKNOWN_COMMAND.format(command=f"/{name}"))

    def _not_text(self, key: Key, group: bool, kind: str | None) -> None:
        if kind not in NON_TEXT:
            log.debug("ignoring a %s message", kind)
            return
        if self.registry.is_active(key):
            self._reply(key, TEXT_PLEASE)
        elif not group:
            self._reply(key, NOTICES[Notice.NOT_STARTED])

    def on_press(self, press: types.CallbackQuery) -> None:
        message = press.message
        chat = getattr(message, "chat", None)
        if message is None or chat is None:
            self.outbox.put(AnswerCallback(0, callback_id=press.id, text=PRESS_ENDED))
            return
        group = is_group(chat.type)
        key = conversation_key(chat.id, press.from_user.id, group)
        pressed: int = message.message_id

        def answer(text: str | None) -> None:
            self.outbox.put(AnswerCallback(chat.id, callback_id=press.id, text=text))

        tag, number, owner = [*(press.data or "").split(":", 2), "", ""][:3]
        if owner and owner != str(press.from_user.id):
            name = self.registry.route(f"{chat.id}:{owner}").name if owner.isdigit() else None
            answer(PRESS_NOT_YOURS.format(name=name or "someone else"))
            return
        question = self.registry.question(key)
        if (
            question is None
            or question.tag != tag
            or not number.isdigit()
            or int(number) >= len(question.options)
        ):
            answer(PRESS_STALE if self.registry.is_active(key) else PRESS_ENDED)
            if getattr(message, "reply_markup", None) is not None:
                retire_buttons(self.outbox, chat.id, lambda: pressed)
            return
        option = question.options[int(number)]
        self.registry.close(key)
        answer(None)
        if group:  # keep answering this person where they are
            route = self.registry.route(key)
            self.registry.saw(
                key, Route(chat.id, press.from_user.id, route.reply_to, press.from_user.first_name)
            )
        self.scheduler.send(key, option, source=self._take_source())
        # The pressed message shows the choice. (After a restart, or with an
        # older copy of the same question, it need not be the latest one.)
        retire_buttons(
            self.outbox, chat.id, lambda: pressed, getattr(message, "text", None), option
        )
        if question.message_id not in (None, pressed):
            retire_buttons(self.outbox, chat.id, lambda: question.message_id)


# -- polling ------------------------------------------------------------------------------


class Dispatcher(Protocol):
    """Where the poller hands updates (:class:`Updates`, or a test's stand-in)."""

    username: str
    bot_id: int | None

    def handle(self, update: types.Update) -> None: ...

    def taken(self, update_id: int) -> bool:
        """Whether this update was handled before (Telegram sends it again after a crash)."""
        ...

    def journaled(self) -> int | None:
        """The last update id whose effects are durable: confirm no further."""
        ...


class Poller(threading.Thread):
    """Long polling with backoff; the only thread that talks to the handlers."""

    def __init__(
        self,
        bot: telebot.TeleBot,
        updates: Dispatcher,
        stopping: threading.Event,
        *,
        poll_timeout: int,
        redact: Callable[[str], str],
    ) -> None:
        super().__init__(name="telegram-polling", daemon=True)
        self.bot = bot
        self.updates = updates
        self.stopping = stopping
        self.poll_timeout = poll_timeout
        self.redact = redact
        self.fatal: str | None = None  # why the bot cannot run at all
        self.ready = threading.Event()  # set once getMe worked
        self.dispatching = False  # handing a batch of updates over (else waiting)
        self.offset: int | None = None  # after the last update handed over
        self.confirmed: int | None = None  # the offset Telegram was last told

    # -- backoff

    @staticmethod
    def backoff(failures: int) -> float:
        return min(30.0, 0.5 * 2.0 ** max(0, failures - 1)) * random.uniform(0.8, 1.2)

    def _describe(self, error: Exception) -> str:
        return self.redact(str(classify(error)))

    def _retry_delay(self, what: str, error: Exception, failures: int) -> float | None:
        """Log a failed call and say how long to wait before the next; None if fatal."""
        if isinstance(error, apihelper.ApiTelegramException):
            code = int(error.error_code)
            if code == 409:
                delay = self.backoff(failures)
                log.error(
                    "%s: Telegram answered 409 Conflict (%s). Another instance of this bot is "
                    "polling with the same token, or a webhook is set: only one may run. "
                    "Retrying in %.0fs.",
                    what,
                    error.description,
                    delay,
                )
                return delay
            if code in (401, 404):
                return None
        reason = classify(error)
        if isinstance(reason, RetryAfter):
            log.warning("%s: rate limited, waiting %gs as Telegram asks", what, reason.seconds)
            return reason.seconds
        delay = self.backoff(failures)
        log.warning("%s failed (%s); retrying in %.1fs", what, self.redact(str(reason)), delay)
        return delay

    def _fail(self, what: str, error: Exception) -> None:
        self.fatal = (
            f"Telegram rejected the bot token ({what}: {self._describe(error)}); "
            "check TELEGRAM_BOT_TOKEN (and TELEGRAM_API_URL if set)"
        )
        log.error("%s", self.fatal)
        self.stopping.set()

    # -- the thread

    def run(self) -> None:
        try:
            if self._start_up():
                self._poll()
        except Exception:  # a bug: stop the bot rather than poll no more silently
            log.exception("the polling thread failed")
            self.fatal = "the polling thread failed"
            self.stopping.set()

    def _start_up(self) -> bool:
        failures = 0
        while not self.stopping.is_set():
            try:
                me = self.bot.get_me()
                break
            except Exception as error:
                failures += 1
                delay = self._retry_delay("getMe", error, failures)
                if delay is None:
                    self._fail("getMe", error)
                    return False
                self.stopping.wait(delay)
        else:
            return False
        self.updates.username = me.username or ""
        self.updates.bot_id = me.id
        self.ready.set()
        log.info("running as @%s", self.updates.username)
        commands = [types.BotCommand(name, what) for name, what in COMMANDS]
        steps: list[tuple[str, Callable[[], object]]] = [
            ("deleteWebhook", lambda: self.bot.delete_webhook(drop_pending_updates=False)),
            ("setMyCommands", lambda: self.bot.set_my_commands(commands)),
        ]
        for what, call in steps:
            try:
                call()
            except Exception as error:
                log.warning("%s failed (%s); going on without it", what, self._describe(error))
        return True

    def _poll(self) -> None:
        failures = 0
        api: Any = apihelper  # untyped module
        while not self.stopping.is_set():
            offset = self._journaled_offset()
            try:
                raw = api.get_updates(
                    self.bot.token,
                    offset=offset,
                    timeout=self.poll_timeout + 15,  # the request's own read timeout
                    allowed_updates=ALLOWED_UPDATES,
                    long_polling_timeout=self.poll_timeout,
                )
            except Exception as error:
                failures += 1
                delay = self._retry_delay("getUpdates", error, failures)
                if delay is None:
                    log.error("getUpdates: %s; was the token revoked?", self._describe(error))
                    delay = 30.0
                self.stopping.wait(delay)
                continue
            self.confirmed = offset
            if failures:
                log.info("polling works again after %d failure(s)", failures)
                failures = 0
            if self.stopping.is_set():
                return  # not confirmed yet: Telegram sends them again next time
            self.dispatching = True
            try:
                for item in raw or []:
                    self.offset = self._take(item, self.offset)
            finally:
                self.dispatching = False

    def confirm(self, timeout: float = 2.0) -> None:
        """On stop: tell Telegram which updates were handed over, so none comes again.

        A short poll (no waiting) with the next offset; the updates it may
        return are not confirmed and so come again after a restart.
        """
        offset = self._journaled_offset(wait=0.0)
        if self.dispatching or offset is None or offset == self.confirmed:
            return
        api: Any = apihelper
        try:
            api._make_request(
                self.bot.token,
                "getUpdates",
                params={"offset": offset, "limit": 1, "timeout": timeout},
            )
        except Exception as error:
            log.warning(
                "could not confirm the last updates (%s); Telegram will send them again",
                self._describe(error),
            )
        else:
            self.confirmed = offset

    def _journaled_offset(self, wait: float = 5.0) -> int | None:
        """The offset that confirms the updates handed over, once they are journaled.

        Confirming an update tells Telegram to forget it, so it must not
        happen before the journal holds what the update caused: a crash in
        between would lose it. Usually the scheduler commits within
        milliseconds; if it lags, only what it committed is confirmed and
        the rest comes again (and is recognised as taken).
        """
        wanted = self.offset
        if wanted is None:
            return None
        deadline = time.monotonic() + wait
        while True:
            journaled = self.updates.journaled()
            if journaled is not None and journaled >= wanted - 1:
                return wanted
            if time.monotonic() >= deadline or self.stopping.is_set():
                break
            self.stopping.wait(0.005)
        return wanted if journaled is None else min(wanted, journaled + 1)

    def _take(self, item: Any, offset: int | None) -> int | None:
        """Handle one raw update; return the next offset."""
        update_id = item.get("update_id") if isinstance(item, dict) else None
        if not isinstance(update_id, int):
            log.warning("ignoring an update without an update_id")
            return offset
        offset = max(offset or 0, update_id + 1)
        if self.updates.taken(update_id):
            log.info("update %s was handled before the restart: not again", update_id)
            return offset
        try:
            update = _update_type.de_json(item)
        except Exception as error:
            log.warning("ignoring update %s, which could not be read: %r", update_id, error)
            log.debug("the unreadable update %s", update_id, exc_info=True)
            return offset
        try:
            self.updates.handle(update)
        except Exception:
            log.exception("error handling update %s", update_id)
        return offset


# -- running it all -----------------------------------------------------------------------


class Bot:
    """Wires the pieces together and runs them until stopped."""

    def __init__(
        self,
        settings: Settings,
        flow: Flow,
        args: argparse.Namespace,
        redactor: Redactor,
        journal: SqliteJournal,
    ) -> None:
        helper: Any = apihelper  # its settings are module globals, typed by their defaults
        helper.API_URL = settings.api_url + "/bot{0}/{1}"
        helper.CONNECT_TIMEOUT = 10
        helper.READ_TIMEOUT = SEND_TIMEOUT
        self.transport = telegram_http.install(
            settings.api_url, args.senders + 1 + telegram_http.SPARE_CONNECTIONS
        )
        self.stopping = threading.Event()
        self.bot = telebot.TeleBot(settings.token, threaded=False)
        self.registry = Registry()
        self.outbox = Outbox(TeleBotApi(self.bot), senders=args.senders, pacing=pacing_from(args))
        self.halted: str | None = None  # why the engine stopped by itself
        self.frontend = TelegramFrontend(self.outbox, self.registry, on_halt=self._engine_halted)
        self.journal = journal
        from frontends import health, webhook  # late: they build on this module

        self.metrics = health.Metrics()
        self.scheduler = Scheduler(
            self.frontend,
            flow,
            workers=args.workers,
            idle_timeout=args.idle_timeout,
            journal=self.metrics.observe_journal(journal),
        )
        self.updates = Updates(
            self.bot, self.scheduler, self.outbox, self.registry, help_text(flow, args.flow)
        )
        self.poller = webhook.receiver(
            args, self.bot, self.updates, self.stopping, scheduler=self.scheduler,
            outbox=self.outbox, metrics=self.metrics, redact=redactor.redact,
        )  # fmt: skip
        self.drain_timeout: float = args.drain_timeout

    def run(self) -> int:
        self.outbox.start()
        self.scheduler.start()
        self.poller.start()
        while not self.stopping.wait(1.0):
            pass
        return self.stop()

    def _engine_halted(self, reason: str) -> None:
        self.halted = reason  # the engine logged it
        self.stopping.set()

    def request_stop(self, signum: int, frame: pytypes.FrameType | None) -> None:
        if self.stopping.is_set():
            os.write(2, b"weather-bot: stopping now\n")
            os._exit(1)
        log.info("got %s: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def stop(self) -> int:
        started = time.monotonic()
        # A long poll in flight is abandoned (its updates are not confirmed, so
        # Telegram sends them again); a batch being handed over is let finish.
        self.poller.join(1.0 if self.poller.dispatching else 0.05)
        # Sends finish first, while the scheduler still runs to journal their
        # confirmations: whatever is not out by then is sent after a restart.
        finished = self.outbox.close(timeout=self.drain_timeout)
        self.scheduler.stop(timeout=1.0)
        self.journal.close()
        self.poller.confirm()
        if self.transport is not None:
            self.transport.close()
        log.info(
            "stopped in %.1fs%s",
            time.monotonic() - started,
            "" if finished else " (some sends were cut short, see above)",
        )
        if self.poller.fatal:
            return 1 if self.poller.ready.is_set() else 2
        return 1 if self.halted else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = read_settings(os.environ)
        pacing_from(args)  # reject bad pacing variables before starting anything
    except ConfigError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    redactor = Redactor(settings.token)
    try:
        flow = load_flow(args.flow)
    except ValueError as error:
        print(f"{PROGRAM}: error: {redactor.redact(str(error))}", file=sys.stderr)
        return 2
    try:
        journal = SqliteJournal(args.state)
    except JournalError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    setup_logging(args.verbose, redactor)
    from frontends import webhook

    webhook.apply_log_format(args)
    try:
        bot = Bot(settings, flow, args, redactor, journal)
    except webhook.OptionError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        journal.close()
        return 2
    signal.signal(signal.SIGTERM, bot.request_stop)
    signal.signal(signal.SIGINT, bot.request_stop)
    try:
        return bot.run()
    except Exception:
        log.critical("the bot failed:\n%s", traceback.format_exc())
        return 1


if __name__ == "__main__":
    sys.exit(main())
