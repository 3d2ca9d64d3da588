"""Long polling: :class:`Poller` takes updates from Telegram and confirms them once journaled.

Shared (several instances on one database, :meth:`Poller.share`), only the
instance holding the polling lease polls; it keeps what it gets in the shared
updates table instead of handing it over, and confirms once that commits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import telebot
from telebot import apihelper, types

from frontends.programs import backoff
from frontends.telegram.api import classify, error_code
from frontends.telegram.sending import RetryAfter
from frontends.telegram.texts import COMMANDS

log = logging.getLogger(__name__)

#: pyTelegramBotAPI's Update, whose ``de_json`` is not annotated.
_update_type: Any = types.Update

#: The updates this bot asks for; anything else is ignored if it comes anyway.
ALLOWED_UPDATES = ["message", "callback_query"]

#: Update ids the journal can keep (SQLite's and PostgreSQL's 64-bit integers);
#: a server sending others misbehaves, and those updates are skipped.
MAX_UPDATE_ID = 2**63 - 1

#: How long to wait before polling again when a poll brought only updates
#: that cannot be taken (ids out of range, which are never confirmed).
JUNK_WAIT = 1.0

#: How often a shared instance without the polling lease looks whether it has it now (s).
LEASE_WAIT = 0.25

#: The longest the poller waits before polling again (after failures, or a
#: server answering at once with nothing usable), whatever a server asks.
MAX_POLL_WAIT = 60.0


class Dispatcher(Protocol):
    """Where the poller hands updates (:class:`Updates`, or a test's stand-in)."""

    username: str
    bot_id: int | None

    def handle(self, update: types.Update) -> None: ...

    def taken(self, update_id: int) -> bool:
        """Whether this update was handled before (Telegram sends it again after a crash)."""
        ...


class Keeper(Protocol):
    """Where a shared instance's poller keeps what it polls (``cluster.SharedPolling``)."""

    def leading(self) -> bool:
        """Whether this instance holds the polling lease, so it alone may poll."""
        ...

    def keep(self, items: list[tuple[int, dict[str, Any]]]) -> bool:
        """Commit `items` (update id, raw update) for the shards' owners; whether it worked."""
        ...


class Journaled:
    """The highest update id whose effects the journal holds: confirm no further.

    The scheduler tells it after each commit (through
    :meth:`TelegramFrontend.committed <frontends.telegram.frontend.TelegramFrontend.committed>`);
    the poller waits on it before confirming updates to Telegram.
    """

    def __init__(self, last: int | None = None) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._last = last
        self._closed = False

    @property
    def last(self) -> int | None:
        """The highest update id journaled so far (None: none yet)."""
        return self._last

    def committed(self, source: int | None) -> None:
        """The journal now holds everything up to `source` (on the scheduler thread)."""
        if source == self._last:  # most commits: no new update; don't take the lock
            return
        with self._changed:
            self._last = source
            self._changed.notify_all()

    def close(self) -> None:
        """Stopping: nothing more will be committed, so no one waits any longer."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, update_id: int, timeout: float) -> int | None:
        """Wait up to `timeout` seconds until `update_id` is journaled; return :attr:`last`."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._closed or (self._last is not None and self._last >= update_id),
                timeout,
            )
            return self._last


class Poller(threading.Thread):
    """Long polling with backoff; the only thread that talks to the handlers."""

    def __init__(
        self,
        bot: telebot.TeleBot,
        updates: Dispatcher,
        stopping: threading.Event,
        *,
        journaled: Journaled,
        poll_timeout: int,
        redact: Callable[[str], str],
    ) -> None:
        super().__init__(name="telegram-polling", daemon=True)
        self.bot = bot
        self.updates = updates
        self.stopping = stopping
        self.journaled = journaled
        self.poll_timeout = poll_timeout
        self.redact = redact
        self.fatal: str | None = None  # why the bot cannot run at all
        self.ready = threading.Event()  # set once getMe worked
        self.dispatching = False  # handing a batch of updates over (else waiting)
        self.offset: int | None = None  # after the last update handed over
        self.confirmed: int | None = None  # the offset Telegram was last told
        #: The offset of the getUpdates in flight: Telegram takes it on arrival.
        self.polling_with: int | None = None
        #: The highest update id handed to the engine: confirming the offset
        #: waits until it is journaled (updates skipped since need not be).
        self.handed: int | None = None
        self._said: set[str] = set()  # what a misbehaving server did, logged once each
        #: Shared: where polled updates are kept (None: handed to `updates`).
        self.keeper: Keeper | None = None
        self.leading = False  # shared: polling now, under the lease
        self._keep_failures = 0

    # -- backoff

    @staticmethod
    def backoff(failures: int) -> float:
        """Seconds to wait after the `failures`-th failed call in a row."""
        return backoff(failures, first=0.5, maximum=30.0)

    def _describe(self, error: Exception) -> str:
        return self.redact(str(classify(error)))

    def _retry_delay(self, what: str, error: Exception, failures: int) -> float | None:
        """Log a failed call and say how long to wait before the next; None if fatal."""
        if isinstance(error, apihelper.ApiTelegramException):
            code = error_code(error)
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
        if isinstance(reason, RetryAfter):  # capped: a server may ask for days
            wait = min(reason.seconds, MAX_POLL_WAIT)
            log.warning("%s: rate limited, waiting %gs as Telegram asks", what, wait)
            return wait
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

    def _until_done(self, what: str, call: Callable[[], Any]) -> Any:
        """`call()` again after each failure (with backoff) until it succeeds: its result.

        ``None`` if the bot is stopping first, or a failure is final (the
        bot then stops, and :meth:`_fail` says why).
        """
        failures = 0
        while not self.stopping.is_set():
            try:
                return call()
            except Exception as error:
                failures += 1
                delay = self._retry_delay(what, error, failures)
                if delay is None:
                    self._fail(what, error)
                    return None
                self.stopping.wait(delay)
        return None

    def _start_up(self) -> bool:
        me = self._until_done("getMe", self.bot.get_me)
        if me is None:
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

    def share(self, keeper: Keeper) -> None:
        """Poll only while `keeper` says this instance holds the lease, and keep updates there."""
        self.keeper = keeper

    def _holds_lease(self) -> bool:
        """Shared: whether to poll now; logs when this instance starts or stops polling."""
        assert self.keeper is not None
        held = self.keeper.leading()
        if held != self.leading:
            self.leading = held
            if held:
                # From the earliest update Telegram holds: the table drops what it has.
                self.offset = None
                log.info("polling Telegram: this instance holds the polling lease")
            else:
                log.info("stopped polling Telegram: the polling lease is gone")
        return held

    def _poll(self) -> None:
        failures = 0
        api: Any = apihelper  # untyped module
        while not self.stopping.is_set():
            if self.keeper is not None and not self._holds_lease():
                self.stopping.wait(LEASE_WAIT)
                continue
            offset = self._journaled_offset()
            self.polling_with = offset
            try:
                raw = api.get_updates(
                    self.bot.token,
                    offset=offset,
                    timeout=self.poll_timeout + 15,  # the request's own read timeout
                    allowed_updates=ALLOWED_UPDATES,
                    long_polling_timeout=self.poll_timeout,
                )
            except Exception as error:
                if self.stopping.is_set():  # cut short by the stop (a 409 from confirm())
                    return
                failures += 1
                delay = self._retry_delay("getUpdates", error, failures)
                if delay is None:
                    log.error("getUpdates: %s; was the token revoked?", self._describe(error))
                    delay = 30.0
                self.stopping.wait(delay)
                continue
            self.confirmed = offset
            if not isinstance(raw, list):  # a misbehaving server: as a failed call
                failures += 1
                delay = self.backoff(failures)
                self._once("getUpdates answered a result that is not a list of updates; "
                           "retrying with backoff")  # fmt: skip
                self.stopping.wait(delay)
                continue
            if failures:
                log.info("polling works again after %d failure(s)", failures)
                failures = 0
            if self.stopping.is_set():
                return  # not confirmed yet: Telegram sends them again next time
            self.dispatching = True
            try:
                before = self.offset
                if self.keeper is not None:
                    if not self._keep(raw):
                        continue  # not confirmed: polled again after a wait
                else:
                    for item in raw:
                        self.offset = self._take(item, self.offset)
            finally:
                self.dispatching = False
            if raw and self.offset == before:  # only updates that can never be taken
                self.stopping.wait(JUNK_WAIT)  # they come back at once: don't spin

    def _once(self, what: str) -> None:
        """Log a misbehaving server's answer the first time it comes, not at every poll."""
        if what not in self._said and len(self._said) < 100:
            self._said.add(what)
            log.warning("%s", what)

    def _keep(self, raw: list[Any]) -> bool:
        """Shared: keep a poll's updates in one commit, then confirm them; whether it worked."""
        assert self.keeper is not None
        offset = self.offset
        items: list[tuple[int, dict[str, Any]]] = []
        for item in raw:
            update_id = self._valid_id(item)
            if update_id is None:
                continue
            offset = max(offset or 0, update_id + 1)
            if self._readable(item, update_id):
                items.append((update_id, item))
        if items and not self.keeper.keep(items):  # logged; they come again
            self._keep_failures += 1
            self.stopping.wait(self.backoff(self._keep_failures))
            return False
        self._keep_failures = 0
        self.offset = offset
        return True

    def hand_over(self, timeout: float = 5.0) -> None:
        """Shared, stopping: end the long poll in flight, so the next lease holder polls alone.

        A short poll (confirming what was kept) makes Telegram end ours at
        once; repeated if the thread started another before it saw the stop.
        Joins the thread; the lease may be given up once this returns.
        """
        give_up = time.monotonic() + timeout
        api: Any = apihelper
        while self.is_alive() and time.monotonic() < give_up:
            if self.leading and not self.dispatching:
                # No long_polling_timeout: Telegram answers at once ("timeout" is ours).
                params: dict[str, Any] = {"limit": 1, "timeout": 5}
                if self.offset is not None:
                    params["offset"] = self.offset
                try:
                    api._make_request(self.bot.token, "getUpdates", params=params)
                except Exception as error:
                    log.warning("could not end the last poll (%s)", self._describe(error))
            self.join(0.5)
        if self.leading:
            self.leading = False
            log.info("stopped polling Telegram: stopping")

    def confirm(self, timeout: float = 2.0) -> None:
        """On stop: tell Telegram which updates were handed over, so none comes again.

        A short poll (no waiting) with the next offset; the updates it may
        return are not confirmed and so come again after a restart. Not when
        the long poll still in flight carries that offset: Telegram took it
        when that request arrived, and a second poll would make Telegram end
        one of the two with 409 Conflict.
        """
        if self.keeper is not None:  # shared: confirmed by hand_over, under the lease
            return
        offset = self._journaled_offset(wait=0.0)
        if self.dispatching or offset is None or offset in (self.confirmed, self.polling_with):
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
        if self.handed is None:  # nothing handed over: all of them were skipped
            return wanted
        journaled = self.journaled.wait_for(self.handed, wait)
        if journaled is not None and journaled >= self.handed:
            return wanted  # and the updates skipped after it, which were never handed over
        return wanted if journaled is None else min(wanted, journaled + 1)

    def _valid_id(self, item: Any) -> int | None:
        """The update's id, or None (logged once) if it has none that can be taken."""
        update_id = item.get("update_id") if isinstance(item, dict) else None
        if type(update_id) is not int:
            self._once("ignoring an update without an update_id")
            return None
        if not 0 <= update_id <= MAX_UPDATE_ID:  # confirming it could drop real updates
            self._once(f"ignoring an update whose id {update_id} is out of range")
            return None
        return update_id

    def _readable(self, item: Any, update_id: int) -> Any:
        """The update read into pyTelegramBotAPI's type, or None (logged once) if it cannot be."""
        try:
            return _update_type.de_json(item)
        except Exception as error:  # confirmed all the same: it would come back for ever
            self._once(f"ignoring an update that could not be read ({type(error).__name__})")
            log.debug("the unreadable update %s", update_id, exc_info=True)
            return None

    def _take(self, item: Any, offset: int | None) -> int | None:
        """Handle one raw update; return the next offset."""
        update_id = self._valid_id(item)
        if update_id is None:
            return offset
        offset = max(offset or 0, update_id + 1)
        if self.updates.taken(update_id):
            log.info("update %s was handled before the restart: not again", update_id)
            return offset
        update = self._readable(item, update_id)
        if update is None:
            return offset
        self.handed = update_id
        try:
            self.updates.handle(update)
        except Exception:
            log.exception("error handling update %s", update_id)
        return offset
