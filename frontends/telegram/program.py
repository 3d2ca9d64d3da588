"""The bot as a program: :class:`Bot` wires the pieces together; :func:`main` runs it."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
import traceback
import types as pytypes
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import telebot
from telebot import apihelper

from engine.journal import Journal, JournalError
from engine.scheduler import Scheduler
from engine.sources import Taken
from engine.states import Flow
from frontends.programs import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    fail,
    load,
    open_journal,
    state_spec,
)
from frontends.telegram import health, webhook
from frontends.telegram import http as telegram_http
from frontends.telegram.api import SEND_TIMEOUT, TeleBotApi
from frontends.telegram.config import (
    DEFAULT_STATE,
    PROGRAM,
    Settings,
    build_parser,
    pacing_from,
    read_settings,
)
from frontends.telegram.frontend import TelegramFrontend
from frontends.telegram.logs import Redactor, setup_logging
from frontends.telegram.polling import Journaled
from frontends.telegram.routing import Registry
from frontends.telegram.sending import Outbox, Retrying
from frontends.telegram.texts import help_text
from frontends.telegram.updates import Updates, new_update
from frontends.telegram.users import Users

if TYPE_CHECKING:
    from frontends.telegram import cluster

log = logging.getLogger(__name__)


class Bot:
    """Wires the pieces together and runs them until stopped."""

    def __init__(
        self,
        settings: Settings,
        flow: Flow,
        args: argparse.Namespace,
        redactor: Redactor,
        journal: Journal,
    ) -> None:
        helper: Any = apihelper  # its settings are module globals, typed by their defaults
        helper.API_URL = settings.api_url + "/bot{0}/{1}"
        helper.FILE_URL = settings.api_url + "/file/bot{0}/{1}"  # photos users send
        helper.CONNECT_TIMEOUT = 10
        helper.READ_TIMEOUT = SEND_TIMEOUT
        self.transport = telegram_http.install(
            settings.api_url, args.senders + 1 + telegram_http.SPARE_CONNECTIONS
        )
        self.stopping = threading.Event()
        self.bot = telebot.TeleBot(settings.token, threaded=False)
        self.registry = Registry()
        self.users = Users()
        self.outbox = Outbox(
            TeleBotApi(self.bot), senders=args.senders, pacing=pacing_from(args),
            retrying=Retrying(max_backoff=args.retry_cap),
        )  # fmt: skip
        self.halted: str | None = None  # why the engine stopped by itself
        self.journaled = Journaled()
        self.frontend = TelegramFrontend(
            self.outbox,
            self.registry,
            on_halt=self._engine_halted,
            on_commit=self.journaled.committed,
            users=self.users,
        )
        self.journal = journal
        self.metrics = health.Metrics()
        shared = bool(getattr(journal, "shared", False))
        self.scheduler = Scheduler(
            self.frontend,
            flow,
            workers=args.workers,
            idle_timeout=args.idle_timeout,
            journal=journal,
            # Shared: the updates table takes each update once, in any order of ids.
            sources=_every_update if shared else new_update,
            observer=self.metrics.observer(),
        )
        self.frontend.scheduler = self.scheduler  # for positions and notes
        self.updates = Updates(
            self.scheduler, self.outbox, self.registry, help_text(flow), users=self.users
        )
        self.cluster: cluster.Cluster | None = None
        intake = None
        checks = []
        if shared:
            # Imported here: psycopg (which imports asyncio) only for those who use it.
            from engine.postgres_journal import PostgresJournal
            from frontends.telegram import cluster

            assert isinstance(journal, PostgresJournal)
            self.cluster = cluster.Cluster(journal.url, journal.bot, journal, self.scheduler,
                                           self.updates, args.shard_interval)  # fmt: skip
            intake = cluster.SharedIntake(self.cluster.store, self.metrics)
            checks.append(self.cluster.problem)
        self.poller = webhook.receiver(
            args, self.bot, self.updates, self.stopping, scheduler=self.scheduler,
            outbox=self.outbox, metrics=self.metrics, journaled=self.journaled,
            redact=redactor.redact, intake=intake, checks=checks,
        )  # fmt: skip
        webhook_mode = isinstance(self.poller, webhook.WebhookReceiver)
        if self.cluster is not None:
            self.metrics.watch_cluster(self.cluster.owned, self.cluster.shards.shards,
                                       self.cluster.leading)  # fmt: skip
            if not webhook_mode:  # only the lease holder polls, into the updates table
                self.poller.share(self.cluster.polling(self.metrics))
        self.drain_timeout: float = args.drain_timeout
        mode = "webhook" if webhook_mode else "polling"
        if shared:
            mode = f"shared {mode}"
        #: What the start is logged as (the listener is logged once it listens).
        self.description = f"{mode} mode, flow {args.flow}, state file {args.state}"

    def run(self) -> int:
        log.info("starting: %s", self.description)
        self.outbox.start()
        self.scheduler.start()
        if self.cluster is not None:
            try:
                self.cluster.start()
            except JournalError as error:
                log.error("%s", error)
                self.halted = str(error)
                self.stopping.set()
        self.poller.start()
        while not self.stopping.wait(1.0):
            pass
        return self.stop()

    def _engine_halted(self, reason: str) -> None:
        self.halted = reason  # the engine logged it
        # What is queued can no longer be confirmed: sent now, it would go again
        # after the restart. It waits for the restart instead.
        self.outbox.halt()
        self.stopping.set()

    def request_stop(self, signum: int, frame: pytypes.FrameType | None) -> None:
        if self.stopping.is_set():
            os.write(2, b"weather-bot: stopping now\n")
            os._exit(EXIT_FAILED)
        log.info("got %s: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def stop(self) -> int:
        started = time.monotonic()
        self.journaled.close()  # the poller waits no longer for the scheduler's commits
        if self.cluster is not None and self.poller.keeper is not None:
            # Shared polling: the next lease holder polls at once, and alone.
            self.poller.hand_over()
            self.cluster.shards.release_lease()
        # A long poll in flight is abandoned (its updates are not confirmed, so
        # Telegram sends them again); a batch being handed over is let finish.
        self.poller.join(1.0 if self.poller.dispatching else 0.05)
        if self.cluster is not None:
            self.cluster.feed.stop()  # no more updates handed over
        # Sends finish first, while the scheduler still runs to journal their
        # confirmations: whatever is not out by then is sent after a restart.
        finished = self.outbox.close(timeout=self.drain_timeout)
        if self.cluster is not None:
            self.cluster.stop()  # the shards go to the other instances
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
        if self.poller.fatal:  # a token rejected at once is bad configuration
            return EXIT_FAILED if self.poller.ready.is_set() else EXIT_USAGE
        return EXIT_FAILED if self.halted else EXIT_OK


def _every_update(update_id: int, taken: Taken) -> bool:
    """Shared instances' source policy: the updates table already took each update once."""
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``weather-bot``: parse options, start the bot, run it until stopped; the exit status."""
    args = build_parser().parse_args(argv)
    try:
        settings = read_settings(os.environ)
        pacing_from(args)  # reject bad pacing variables before starting anything
    except ConfigError as error:
        return fail(PROGRAM, error)
    redactor = Redactor(settings.token)
    try:
        flow = load(args.flow)
        args.state = state_spec(args.state, os.environ, DEFAULT_STATE)
        assert args.state is not None  # there is a default
        journal = open_journal(args.state, args.flow, shared=args.shared)
    except ConfigError as error:
        return fail(PROGRAM, redactor.redact(str(error)))
    setup_logging(args.verbose, redactor)
    webhook.apply_log_format(args)
    try:
        bot = Bot(settings, flow, args, redactor, journal)
    except webhook.OptionError as error:
        journal.close()
        return fail(PROGRAM, str(error))
    signal.signal(signal.SIGTERM, bot.request_stop)
    signal.signal(signal.SIGINT, bot.request_stop)
    try:
        return bot.run()
    except Exception:
        log.critical("the bot failed:\n%s", traceback.format_exc())
        return EXIT_FAILED
