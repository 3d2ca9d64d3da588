"""Webhook mode, and the listener for ``/healthz`` and ``/metrics``, served by waitress.

``weather-bot --webhook https://bot.example.com/telegram`` asks Telegram to
POST each update to that URL (``setWebhook``) instead of being polled. A
reverse proxy terminates TLS and forwards to ``--listen`` (default
127.0.0.1:8080), where waitress, a threaded WSGI server, serves
:class:`WebhookApp`:

* ``POST <the URL's path>``: one update. Refused, and never handed to the
  engine: a wrong or missing ``X-Telegram-Bot-Api-Secret-Token`` (403/401,
  logged once per source address), a body over :data:`MAX_BODY`, not JSON,
  or not ``application/json`` (4xx). Otherwise it is handed to the same
  handlers polling uses, and answered 200 once the journal holds what it
  caused (the engine's batch committed), never after the flow's work; 503
  if that takes over :data:`COMMIT_WAIT` seconds or the bot is stopping, so
  that Telegram sends it again. An update sent again is taken once.
* ``GET /healthz`` and ``GET /metrics`` (``frontends.telegram.health``).

Threads: ``webhook-listener`` (waitress's socket loop) and ``waitress-N``
(its request threads). Request threads hand updates over one at a time,
under a lock: the handlers are written for one thread, and Telegram sends a
chat's updates one at a time, so per-chat order is arrival order.

Telegram sends different chats' updates at once, so update 11 may arrive
before 10: the engine keeps every id taken within a window (see
engine.sources), so each is handed over with its id and taken once, in any
order, across restarts too.

What the engine should offer, to replace stopgaps here:

* a commit notification per source (here: ``Scheduler.post`` of an event,
  which runs after the batch commits).
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit

import waitress.server
from telebot import apihelper, types

from frontends.telegram.api import error_code
from frontends.telegram.health import Health, Metrics, health_app, respond
from frontends.telegram.polling import ALLOWED_UPDATES, Journaled, Poller
from frontends.telegram.updates import Updates

if TYPE_CHECKING:
    import telebot
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from engine.scheduler import Scheduler
    from frontends.telegram.sending import Outbox

log = logging.getLogger("frontends.telegram.webhook")

#: The largest update body taken (Telegram's are a few kB).
MAX_BODY = 1024 * 1024
#: Seconds an update may wait to be journaled before the request gets 503.
COMMIT_WAIT = 5.0
#: On stop, seconds requests in flight get to finish.
DRAIN_WAIT = 3.0
#: Update ids remembered, to take an update sent again once.
REMEMBERED_UPDATES = 100_000
#: The most waitress request threads in webhook mode. Each only parses, hands
#: over and waits for a commit; with 4 instead of 8 the webhook bot took 4.89
#: against 5.28 ms CPU per update (bench/telegram_bench.py, median of 3, 200 users).
REQUEST_THREADS = 4
#: Source addresses remembered, to log a refused request once per source.
REMEMBERED_SOURCES = 10_000
SECRET_HEADER = "HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN"
SECRET_VARIABLE = "TELEGRAM_WEBHOOK_SECRET"
URL_VARIABLE = "TELEGRAM_WEBHOOK_URL"
SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
DEFAULT_LISTEN = "127.0.0.1:8080"


class OptionError(ValueError):
    """A one-line reason the webhook options cannot be used (exit status 2)."""


# -- options ----------------------------------------------------------------------------


def _address(raw: str) -> tuple[str, int]:
    host, _, port = raw.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {raw!r}")
    return host, int(port)


def _connections(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 100")
    return int(raw)


def add_webhook_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--webhook``, ``--listen``, ``--max-connections``, ``--metrics``, ``--log-format``."""
    group = parser.add_argument_group(
        "webhook and monitoring",
        f"by default the bot polls; with --webhook (or {URL_VARIABLE}) Telegram sends it updates",
    )
    group.add_argument(
        "--webhook", metavar="URL",
        help=f"the public HTTPS URL Telegram posts updates to (env {URL_VARIABLE}); a reverse "
        "proxy forwards it to --listen. The secret Telegram sends along is "
        f"{SECRET_VARIABLE}, or one generated and kept beside the state file",
    )  # fmt: skip
    group.add_argument(
        "--listen", type=_address, default=_address(DEFAULT_LISTEN), metavar="HOST:PORT",
        help=f"where the webhook, /healthz and /metrics are served (default {DEFAULT_LISTEN})",
    )  # fmt: skip
    group.add_argument(
        "--max-connections", type=_connections, default=40, metavar="N",
        help="webhook requests Telegram may have in flight at once (1-100, default 40)",
    )  # fmt: skip
    group.add_argument(
        "--metrics", type=_address, metavar="HOST:PORT",
        help="when polling: serve /healthz and /metrics there (webhook mode serves them on "
        "--listen)",
    )  # fmt: skip
    group.add_argument(
        "--ready-window", type=float, default=60.0, metavar="SECONDS",
        help="/healthz is not ready if Telegram answered nothing for this long (default 60)",
    )  # fmt: skip
    group.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="text (default) or json: one JSON object a line, for log pipelines",
    )  # fmt: skip


@dataclass(frozen=True)
class WebhookSettings:
    """Webhook mode's settings, checked."""

    url: str
    path: str
    listen: tuple[str, int]
    max_connections: int
    secret: str


def webhook_url(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The webhook URL from the options or the environment (None: polling); checked."""
    raw = (args.webhook or environ.get(URL_VARIABLE, "")).strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise OptionError(f"the webhook URL must be an https:// URL, got {raw!r}")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise OptionError("Telegram only posts to https:// webhook URLs")
    return raw


def secret_path(state_path: str) -> str:
    """Where a generated webhook secret is kept: beside the state file."""
    return state_path + ".webhook-secret"


def webhook_secret(environ: Mapping[str, str], state_path: str) -> str:
    """The secret Telegram sends with each update: from the environment, or kept in a file.

    A generated one is written beside the state file (mode 0600), so a
    restart keeps it and Telegram's retries of earlier updates still match.
    """
    given = environ.get(SECRET_VARIABLE, "").strip()
    if given:
        if not SECRET_PATTERN.match(given):
            raise OptionError(
                f"{SECRET_VARIABLE} must be 1-256 letters, digits, '_' or '-' (Telegram's rule)"
            )
        return given
    path = secret_path(state_path)
    try:
        with open(path, encoding="ascii") as file:
            kept = file.read().strip()
    except FileNotFoundError:
        kept = ""
    except (OSError, UnicodeDecodeError) as error:
        raise OptionError(f"{path}: cannot read the webhook secret ({error})") from None
    if kept:
        if not SECRET_PATTERN.match(kept):
            raise OptionError(f"{path}: not a webhook secret; remove it to make a new one")
        return kept
    made = secrets.token_urlsafe(32)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(made + "\n")
    except OSError as error:
        raise OptionError(f"{path}: cannot keep the webhook secret ({error.strerror})") from None
    return made


def read_webhook_settings(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> WebhookSettings | None:
    """Webhook mode's settings, or None when polling; raises :class:`OptionError`."""
    url = webhook_url(args, environ)
    if url is None:
        return None
    return WebhookSettings(
        url=url,
        path=urlsplit(url).path or "/",
        listen=args.listen,
        max_connections=args.max_connections,
        secret=webhook_secret(environ, args.state),
    )


# -- logs ---------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, thread, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def apply_log_format(args: argparse.Namespace) -> None:
    """Switch the root handlers to JSON lines with ``--log-format json``."""
    if getattr(args, "log_format", "text") == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


# -- the intake -----------------------------------------------------------------------------


class Intake:
    """Takes updates from webhook requests to the handlers, once each, in arrival order."""

    def __init__(self, updates: Updates, scheduler: Scheduler, metrics: Metrics) -> None:
        self.updates = updates
        self.scheduler = scheduler
        self.metrics = metrics
        self._lock = threading.Lock()
        # update id -> set once what it caused is journaled
        self._tickets: OrderedDict[int, threading.Event] = OrderedDict()

    def take(self, update_id: int, update: Any, item: Any = None) -> threading.Event | None:
        """Hand `update` over; returns what is set once it is journaled (None: it was).

        `item` is the update as received (JSON), for an intake that keeps it.
        """
        with self._lock:
            ticket = self._tickets.get(update_id)
            if ticket is not None:
                self.metrics.updates_redelivered.inc()
                return ticket
            if self._taken_before_restart(update_id):
                self.metrics.updates_redelivered.inc()
                log.info("update %s was handled before the restart: not again", update_id)
                return None
            ticket = threading.Event()
            self._tickets[update_id] = ticket
            if len(self._tickets) > REMEMBERED_UPDATES:
                self._tickets.popitem(last=False)
            self._hand_over(update, update_id)
            self.metrics.update_taken("webhook")
            self.scheduler.post(ticket.set)  # runs once the batch holding it commits
            return ticket

    def _taken_before_restart(self, update_id: int) -> bool:
        # This run's updates have tickets; the engine knows those taken before.
        return self.scheduler.already_taken(update_id)

    def _hand_over(self, update: Any, update_id: int) -> None:
        try:
            self.updates.handle(update)
        except Exception:
            log.exception("error handling update %s", update_id)


#: pyTelegramBotAPI's Update, whose ``de_json`` is not annotated.
_update_type: Any = types.Update


class NotKept(Exception):
    """The update cannot be kept now (the database is lost): 503, and Telegram sends it again."""


class Taker(Protocol):
    """What takes an update from a webhook request: :class:`Intake`, or a shared one."""

    def take(self, update_id: int, update: Any, item: Any = None) -> threading.Event | None:
        """What is set once the update is kept (None: it was before); may raise NotKept."""
        ...


class WebhookApp:
    """The WSGI app: the webhook path, ``/healthz`` and ``/metrics``."""

    def __init__(
        self,
        settings: WebhookSettings,
        intake: Taker,
        metrics: Metrics,
        health: Health | None,
    ) -> None:
        self.path = settings.path
        self.secret = settings.secret.encode()
        self.intake = intake
        self.metrics = metrics
        self.other = health_app(metrics, health)
        self.accepting = False  # set once the bot is ready; cleared on stop
        self._refused_sources: OrderedDict[str, None] = OrderedDict()
        self._in_flight = 0
        self._idle = threading.Condition()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path:
            return self.other(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            return respond(start_response, "405 Method Not Allowed", b"POST only\n")
        with self._idle:
            self._in_flight += 1
        try:
            return self._update(environ, start_response)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Stop accepting updates and wait for those in flight; whether all finished."""
        self.accepting = False
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _refuse(
        self, start_response: StartResponse, status: str, reason: str, *, retry: bool = False
    ) -> list[bytes]:
        self.metrics.update_refused(reason)
        headers = [("Retry-After", "1")] if retry else []
        return respond(start_response, status, f"{reason}\n".encode(), headers=headers)

    def _update(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        given = environ.get(SECRET_HEADER)
        if given is None or not hmac.compare_digest(given.encode(), self.secret):
            self._log_refused(environ, "no secret token" if given is None else "a wrong secret")
            status = "401 Unauthorized" if given is None else "403 Forbidden"
            return self._refuse(start_response, status, "secret")
        if not self.accepting:
            return self._refuse(start_response, "503 Service Unavailable", "stopping", retry=True)
        kind = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return self._refuse(start_response, "415 Unsupported Media Type", "content_type")
        raw_length = environ.get("CONTENT_LENGTH") or ""
        if not raw_length.isdigit():
            return self._refuse(start_response, "411 Length Required", "length")
        if int(raw_length) > MAX_BODY:
            return self._refuse(start_response, "413 Content Too Large", "too_large")
        body = environ["wsgi.input"].read(int(raw_length))
        try:
            item = json.loads(body)
        except ValueError:
            return self._refuse(start_response, "400 Bad Request", "not_json")
        update_id = item.get("update_id") if isinstance(item, dict) else None
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            return self._refuse(start_response, "400 Bad Request", "no_update_id")
        try:
            update = _update_type.de_json(item)
        except Exception as error:  # unreadable: taking it again would not help
            log.warning("ignoring update %s, which could not be read: %r", update_id, error)
            return self._refuse(start_response, "200 OK", "unreadable")
        try:
            ticket = self.intake.take(update_id, update, item)
        except NotKept:
            return self._refuse(start_response, "503 Service Unavailable", "not_kept", retry=True)
        if ticket is not None and not ticket.wait(COMMIT_WAIT):
            log.warning("update %s not journaled within %gs: Telegram will retry", update_id,
                        COMMIT_WAIT)  # fmt: skip
            return self._refuse(start_response, "503 Service Unavailable", "timeout", retry=True)
        return respond(start_response, "200 OK", b"")

    def _log_refused(self, environ: WSGIEnvironment, what: str) -> None:
        source = str(environ.get("REMOTE_ADDR", "?"))
        if source in self._refused_sources:
            return
        self._refused_sources[source] = None
        if len(self._refused_sources) > REMEMBERED_SOURCES:
            self._refused_sources.popitem(last=False)
        log.warning(
            "refused a webhook request from %s with %s (logged once per address)", source, what
        )


# -- the listener ---------------------------------------------------------------------------


class Listener:
    """A waitress server on its own named thread, stopped and joined by :meth:`close`."""

    def __init__(
        self,
        app: Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]],
        address: tuple[str, int],
        threads: int,
    ) -> None:
        host, port = address
        # Typed loosely: create_server may return a multi-socket server, never here.
        self.server: Any = cast(Any, waitress.server.create_server)(
            app, host=host, port=port, threads=threads, ident="weather-bot",
            max_request_body_size=MAX_BODY + 1, clear_untrusted_proxy_headers=True,
            asyncore_use_poll=True, channel_timeout=60,
            # A response leaves from the request thread that wrote it, instead of
            # waking the listener's loop to send it: 440-520 µs of server CPU per
            # request against 670-690 in a waitress-only test (40 clients).
            send_bytes=1,
        )  # fmt: skip
        # Telegram keeps up to max_connections (default 40) requests in flight, more
        # than the request threads, so a queue is normal here, not worth a warning
        # each time (waitress logged 331 in one bench run).
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self.address = (host, int(self.server.effective_port))
        self._thread = threading.Thread(target=self.server.run, name="webhook-listener")

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Close every connection, stop the loop and the request threads."""
        if self._thread.is_alive():
            self.server.trigger.pull_trigger(self._close_all)  # on the loop's own thread
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the webhook listener did not stop in time")
        else:
            self.server.close()
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)

    def _close_all(self) -> None:
        for channel in list(self.server._map.values()):
            channel.close()


# -- running: the poller's place in the bot ------------------------------------------------


class MeteredPoller(Poller):
    """The poller, counting updates, with ``/healthz`` and ``/metrics`` on ``--metrics``.

    A 409 because a webhook is set is reported in one line; polling then
    waits quietly until the webhook is gone.
    """

    def __init__(
        self,
        *args: Any,
        metrics: Metrics,
        listener: Listener | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics
        self.listener = listener
        self.webhook_reported = False

    def run(self) -> None:
        if self.listener is not None:
            self.listener.start()
            log.info("serving /healthz and /metrics on %s:%s", *self.listener.address)
        super().run()

    def _take(self, item: Any, offset: int | None) -> int | None:
        update_id = item.get("update_id") if isinstance(item, dict) else None
        if isinstance(update_id, int) and self.updates.taken(update_id):
            self.metrics.updates_redelivered.inc()
        elif isinstance(update_id, int):
            self.metrics.update_taken("polling")
        return super()._take(item, offset)

    def _retry_delay(self, what: str, error: Exception, failures: int) -> float | None:
        if (
            isinstance(error, apihelper.ApiTelegramException)
            and error_code(error) == 409
            and self._webhook_is_set()
        ):
            if not self.webhook_reported:
                self.webhook_reported = True
                log.error(
                    "%s: a webhook is set for this bot (another instance in webhook mode?), so "
                    "Telegram will not answer polls; polling again every 30s until it is removed",
                    what,
                )
            return 30.0
        return super()._retry_delay(what, error, failures)

    def _webhook_is_set(self) -> bool:
        try:
            return bool(self.bot.get_webhook_info(timeout=5).url)
        except Exception:
            return False

    def confirm(self, timeout: float = 2.0) -> None:
        super().confirm(timeout)
        if self.listener is not None:
            self.listener.close()


class WebhookReceiver(Poller):
    """Webhook mode in the poller's place: same start-up, then ``setWebhook`` and serving."""

    def __init__(
        self,
        bot: telebot.TeleBot,
        updates: Updates,
        stopping: threading.Event,
        *,
        settings: WebhookSettings,
        app: WebhookApp,
        journaled: Journaled,
        redact: Callable[[str], str],
    ) -> None:
        super().__init__(
            bot, updates, stopping, journaled=journaled, poll_timeout=1, redact=redact
        )
        self.name = "telegram-webhook"
        self.settings = settings
        self.app = app
        self.listener: Listener | None = None
        self.drained = threading.Event()

    def run(self) -> None:
        try:
            # Request threads only parse and hand over, then wait a commit (milliseconds):
            # a few serve many connections, and fewer threads contend less for the GIL.
            threads = min(self.settings.max_connections, REQUEST_THREADS)
            self.listener = Listener(self.app, self.settings.listen, threads)
        except OSError as error:
            host, port = self.settings.listen
            self.fatal = f"cannot listen on {host}:{port} ({error.strerror or error})"
            log.error("%s", self.fatal)
            self.stopping.set()
            return
        self.listener.start()
        super().run()

    def _poll(self) -> None:
        """Instead of polling: ask for the webhook, serve until stopping, then drain."""
        assert self.listener is not None
        if not self._set_webhook():
            return
        self.app.accepting = True
        self.dispatching = True  # taking updates: the bot's stop waits a moment for the drain
        host, port = self.listener.address
        log.info(
            "webhook mode: Telegram posts to %s, served on %s:%s (also /healthz and /metrics)",
            self.settings.url, host, port,
        )  # fmt: skip
        self.stopping.wait()
        try:
            drained = self.app.drain(DRAIN_WAIT)
            log.info(
                "webhook: stopped taking updates (503 from now on); %s",
                "requests in flight finished" if drained else "some requests were cut short",
            )
        finally:
            self.dispatching = False
            self.drained.set()

    def _set_webhook(self) -> bool:
        settings = self.settings
        done = self._until_done(
            "setWebhook",
            lambda: self.bot.set_webhook(
                url=settings.url,
                secret_token=settings.secret,
                allowed_updates=ALLOWED_UPDATES,
                max_connections=settings.max_connections,
                drop_pending_updates=False,
            ),
        )
        return done is not None

    def _retry_delay(self, what: str, error: Exception, failures: int) -> float | None:
        if what == "setWebhook" and _refused(error):  # the URL itself: trying again won't help
            return None
        return super()._retry_delay(what, error, failures)

    def _fail(self, what: str, error: Exception) -> None:
        if what != "setWebhook" or not _refused(error):
            super()._fail(what, error)
            return
        self.fatal = f"Telegram refused the webhook ({self._describe(error)})"
        log.error("%s", self.fatal)
        self.stopping.set()

    def confirm(self, timeout: float = 2.0) -> None:
        """On stop, after the engine stopped: close the listener (nothing to confirm)."""
        self.app.accepting = False
        if self.listener is not None:
            self.listener.close()
        self.join(timeout)


def _refused(error: Exception) -> bool:
    """Whether Telegram refused a request as bad (400), such as a webhook URL it won't take."""
    return isinstance(error, apihelper.ApiTelegramException) and error_code(error) == 400


def receiver(
    args: argparse.Namespace,
    bot: telebot.TeleBot,
    updates: Updates,
    stopping: threading.Event,
    *,
    scheduler: Scheduler,
    outbox: Outbox,
    metrics: Metrics,
    journaled: Journaled,
    redact: Callable[[str], str],
    environ: Mapping[str, str] = os.environ,
    intake: Taker | None = None,
    checks: Sequence[Callable[[], str | None]] = (),
) -> Poller:
    """What takes updates in the bot: a :class:`WebhookReceiver` or a :class:`MeteredPoller`.

    Raises :class:`OptionError` for bad webhook settings (exit status 2).
    """
    settings = read_webhook_settings(args, environ)
    metrics.watch_scheduler(scheduler)
    metrics.watch_send_queue(lambda: queued_jobs(outbox))
    metrics.observe_bot_api()
    api: Any = apihelper

    def probe() -> object:
        return api._make_request(bot.token, "getMe", params={"timeout": 2})

    health = Health(scheduler, args.state, metrics, probe=probe, telegram_window=args.ready_window,
                    checks=checks)  # fmt: skip
    if settings is None:
        listener = None
        if args.metrics is not None:
            try:
                listener = Listener(health_app(metrics, health), args.metrics, threads=2)
            except OSError as error:
                host, port = args.metrics
                raise OptionError(f"cannot listen on {host}:{port} ({error.strerror})") from None
        return MeteredPoller(
            bot, updates, stopping, journaled=journaled, poll_timeout=args.poll_timeout,
            redact=redact, metrics=metrics, listener=listener,
        )  # fmt: skip
    app = WebhookApp(settings, intake or Intake(updates, scheduler, metrics), metrics, health)
    return WebhookReceiver(
        bot, updates, stopping, settings=settings, app=app, journaled=journaled, redact=redact
    )


def queued_jobs(outbox: Outbox) -> int:
    """Jobs waiting in the outbox (or in flight)."""
    return outbox.queued()
