"""What an operator sees of the running bot: ``/healthz`` and ``/metrics``.

:class:`Metrics` holds the bot's Prometheus metrics in a registry of its own
(not prometheus-client's global one, so two bots in one process, or a test,
never mix their counts). The rest of the bot feeds it through a few methods;
three observers feed it without touching the code they watch:

* :meth:`Metrics.observer` is the scheduler's :class:`engine.observer.Observer`:
  conversations started and ended (and how), commands, ``Call`` latency,
  journal commit latency, conversations rebuilt;
* :meth:`Metrics.observe_bot_api` wraps pyTelegramBotAPI's request sender:
  Bot API calls, messages sent, 429s, failures (which the outbox and the
  poller retry), and when Telegram last answered;
* the webhook intake and the poller count updates taken and refused.

:class:`Health` answers ``/healthz``: 200 ``ready`` when the scheduler runs,
the state file is writable and Telegram answered lately; 503 with the reasons
otherwise. :func:`health_app` is the WSGI app serving both paths; the
webhook listener mounts it, and ``--metrics HOST:PORT`` serves it alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from telebot import apihelper

from engine.journals import is_postgres
from engine.observer import Observer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from engine.scheduler import Scheduler

#: Buckets for fast things (journal commits, hand-overs): 0.5 ms to 2.5 s.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Buckets for a flow's calls (HTTP lookups): 10 ms to 30 s.
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Bot API methods that put a message in a chat.
SENDING_METHODS = frozenset({"sendMessage"})


class Metrics:
    """The bot's counters, gauges and histograms, in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.updates = Counter(
            "bot_updates", "Telegram updates handed to the engine, by how they came",
            ["mode"], registry=registry,
        )  # fmt: skip
        self.updates_redelivered = Counter(
            "bot_updates_redelivered", "Updates Telegram sent again that were taken before",
            registry=registry,
        )  # fmt: skip
        self.updates_refused = Counter(
            "bot_updates_refused", "Webhook requests refused, by reason", ["reason"],
            registry=registry,
        )  # fmt: skip
        self.conversations_active = Gauge(
            "bot_conversations_active", "Conversations in progress", registry=registry
        )
        self.conversations_started = Counter(
            "bot_conversations_started", "Conversations begun", registry=registry
        )
        self.conversations_ended = Counter(
            "bot_conversations_ended", "Conversations over, by how (finished, cancelled, failed)",
            ["how"], registry=registry,
        )  # fmt: skip
        self.conversations_rebuilt = Gauge(
            "bot_conversations_rebuilt", "Conversations rebuilt from the journal at start",
            registry=registry,
        )  # fmt: skip
        self.commands = Counter(
            "bot_commands", "Commands flows yielded and the engine fulfilled, by kind", ["kind"],
            registry=registry,
        )  # fmt: skip
        self.call_seconds = Histogram(
            "bot_call_seconds", "How long a flow's Call took", buckets=CALL_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.journal_commit_seconds = Histogram(
            "bot_journal_commit_seconds", "How long one journal commit (a batch) took",
            buckets=FAST_BUCKETS, registry=registry,
        )  # fmt: skip
        self.api_calls = Counter(
            "bot_telegram_calls", "Bot API calls, by method and HTTP status (0: no answer)",
            ["method", "status"], registry=registry,
        )  # fmt: skip
        self.messages_sent = Counter(
            "bot_messages_sent", "Messages Telegram took from the bot", registry=registry
        )
        self.rate_limited = Counter(
            "bot_telegram_rate_limited", "Bot API calls answered 429 (waited out and retried)",
            registry=registry,
        )  # fmt: skip
        self.api_failures = Counter(
            "bot_telegram_failures",
            "Bot API calls that failed for a reason worth retrying (429, 5xx, network)",
            registry=registry,
        )
        self.send_queue = Gauge(
            "bot_send_queue_depth", "Jobs waiting for the outbox's senders", registry=registry
        )
        self.shards_owned = Gauge(
            "bot_shards_owned", "Shared: shards (of the bot's conversations) this instance drives",
            registry=registry,
        )  # fmt: skip
        self.polling_lease = Gauge(
            "bot_polling_lease", "Shared: 1 while this instance holds the polling lease",
            registry=registry,
        )  # fmt: skip
        #: Shared: a line for /healthz saying this instance's part (None: not shared).
        self.cluster_status: Callable[[], str] | None = None
        self._telegram_ok_at: float | None = None  # time.monotonic() of the last answer
        # Each metric's child per label values, found again without ``labels()``:
        # that validates, builds a key and takes a lock, 3.2 µs a call against
        # 0.6 µs for the child's ``inc()`` (measured here); the bot counts about
        # ten things per update.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter, *values: str) -> Any:
        """`metric`'s child for these label values (``metric.labels(*values)``), kept."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children.setdefault(key, metric.labels(*values))
        return found

    # -- fed by the program -------------------------------------------------------

    def watch_scheduler(self, scheduler: Scheduler) -> None:
        """Read the conversations in progress from `scheduler` at each scrape."""
        self.conversations_active.set_function(lambda: float(scheduler.running()))

    def watch_send_queue(self, depth: Callable[[], int]) -> None:
        """Read the send queue's depth with `depth()` at each scrape."""
        self.send_queue.set_function(lambda: float(depth()))

    def watch_cluster(
        self, owned: Callable[[], int], shards: int, leading: Callable[[], bool]
    ) -> None:
        """Shared: read the shards owned (of `shards`) and the lease at each scrape or check."""
        self.shards_owned.set_function(lambda: float(owned()))
        self.polling_lease.set_function(lambda: float(leading()))

        def status() -> str:
            lease = "holds" if leading() else "does not hold"
            return f"owns {owned()} of {shards} shards; {lease} the polling lease"

        self.cluster_status = status

    def update_taken(self, mode: str, count: int = 1) -> None:
        """`count` updates were taken in (`mode`: webhook or polling)."""
        self.child(self.updates, mode).inc(count)

    def update_refused(self, reason: str) -> None:
        """A webhook request was refused before it reached the engine."""
        self.child(self.updates_refused, reason).inc()

    # -- Telegram's answers ---------------------------------------------------------

    def bot_api_answered(self, method: str, status: int) -> None:
        """A Bot API call got an HTTP answer (`status` 0: none, a network failure)."""
        self.child(self.api_calls, method, str(status)).inc()
        if 0 < status < 500:  # Telegram itself answered (a 5xx may be a proxy before it)
            self._telegram_ok_at = time.monotonic()  # one store: no lock needed
        if status == 200 and method in SENDING_METHODS:
            self.messages_sent.inc()
        if status == 429:
            self.rate_limited.inc()
        if status in (0, 429) or status >= 500:
            self.api_failures.inc()

    def telegram_answered_within(self, seconds: float) -> bool:
        """Whether Telegram answered any call in the last `seconds`."""
        at = self._telegram_ok_at
        return at is not None and time.monotonic() - at <= seconds

    def observe_bot_api(self) -> None:
        """Count every Bot API call pyTelegramBotAPI makes from now on.

        Wraps its request sender (``CUSTOM_REQUEST_SENDER``, or ``requests``
        when none is installed, e.g. behind a proxy).
        """
        helper: Any = apihelper
        inner = helper.CUSTOM_REQUEST_SENDER
        if getattr(inner, "metrics", None) is self:
            return
        if inner is None:

            def inner(method: str, url: str, **kwargs: Any) -> Any:
                return helper._get_req_session().request(method, url, **kwargs)

        helper.CUSTOM_REQUEST_SENDER = _CountingSender(inner, self)

    # -- the engine ---------------------------------------------------------

    def observer(self) -> MetricsObserver:
        """What the scheduler tells these metrics (give it to the scheduler as `observer`)."""
        return MetricsObserver(self)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


class _CountingSender:
    """pyTelegramBotAPI's request sender, counting each call's outcome."""

    def __init__(self, inner: Callable[..., Any], metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def __call__(self, method: str, url: str, **kwargs: Any) -> Any:
        name = url.rsplit("/", 1)[-1]  # the Bot API method; the token is never kept
        try:
            reply = self.inner(method, url, **kwargs)
        except Exception:
            self.metrics.bot_api_answered(name, 0)
            raise
        self.metrics.bot_api_answered(name, int(getattr(reply, "status_code", 0) or 0))
        return reply


class MetricsObserver(Observer):
    """What the engine tells the bot's metrics (the scheduler's observer)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def began(self, key: str) -> None:
        """A conversation began."""
        self.metrics.conversations_started.inc()

    def ended(self, key: str, how: str) -> None:
        """A conversation ended, and how."""
        self.metrics.child(self.metrics.conversations_ended, how).inc()

    def command(self, kind: str) -> None:
        """A flow yielded a command."""
        self.metrics.child(self.metrics.commands, kind).inc()

    def call_took(self, seconds: float) -> None:
        """A Call ended."""
        self.metrics.call_seconds.observe(seconds)

    def committed(self, seconds: float) -> None:
        """A journal commit ended."""
        self.metrics.journal_commit_seconds.observe(seconds)

    def rebuilt(self, count: int) -> None:
        """Conversations rebuilt at start."""
        self.metrics.conversations_rebuilt.set(count)


class Health:
    """Readiness: the scheduler runs, the state file is writable, Telegram answers.

    `probe` asks Telegram something cheap (``getMe``) when it has not answered
    for a while; its answer lands in `metrics` like any call's.
    """

    #: Ask Telegram (`probe`) when it has been silent for this long (s).
    PROBE_AFTER = 5.0

    def __init__(
        self,
        scheduler: Scheduler,
        state_path: str,
        metrics: Metrics,
        *,
        probe: Callable[[], object],
        telegram_window: float = 60.0,
        checks: Sequence[Callable[[], str | None]] = (),
    ) -> None:
        self.scheduler = scheduler
        self.checks = checks  # more reasons not to be ready (the database lost, say)
        self.state_path = state_path
        self.metrics = metrics
        self.probe = probe
        self.telegram_window = telegram_window
        self._probing = threading.Lock()

    def problems(self) -> list[str]:
        """Why the bot is not ready (empty when it is)."""
        found = []
        if self.scheduler.halted is not None:
            found.append(f"engine halted: {self.scheduler.halted}")
        elif not self._scheduler_answers():
            found.append("engine scheduler not running")
        journal = self._journal_problem()
        if journal:
            found.append(journal)
        found.extend(problem for check in self.checks if (problem := check()))
        if not self._telegram_reachable():
            found.append(f"Telegram not reachable in the last {self.telegram_window:g}s")
        return found

    def _scheduler_answers(self, timeout: float = 1.0) -> bool:
        """Whether the scheduler takes an event and commits its batch within `timeout`."""
        answered = threading.Event()
        self.scheduler.post(answered.set)
        return answered.wait(timeout)

    def _journal_problem(self) -> str | None:
        path = self.state_path
        if is_postgres(path):  # a database: its failures halt the scheduler, checked apart
            return None
        folder = os.path.dirname(os.path.abspath(path))
        # By the permission bits too: the bot runs as root in many containers,
        # where os.access says yes to everything.
        for what, target in (("state file", path), ("state file's directory", folder)):
            try:
                mode = os.stat(target).st_mode
            except OSError as error:
                return f"{what} {target}: {error.strerror}"
            if not (mode & 0o222) or not os.access(target, os.W_OK):
                return f"{what} {target} is not writable"
        return None

    def _telegram_reachable(self) -> bool:
        if self.metrics.telegram_answered_within(min(self.PROBE_AFTER, self.telegram_window)):
            return True
        if self._probing.acquire(blocking=False):  # one probe at a time
            try:
                self.probe()
            except Exception:  # counted by the sender; the window decides
                pass
            finally:
                self._probing.release()
        return self.metrics.telegram_answered_within(self.telegram_window)


def health_app(
    metrics: Metrics, health: Health | None
) -> Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
    """A WSGI app serving ``GET /healthz`` and ``GET /metrics`` (None for other paths)."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return respond(start_response, "405 Method Not Allowed", b"GET only\n")
        if path == "/metrics":
            return respond(start_response, "200 OK", metrics.exposition(), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            problems = health.problems() if health is not None else []
            # Shared: a second line says this instance's part (no bearing on readiness).
            part = "" if metrics.cluster_status is None else metrics.cluster_status() + "\n"
            if problems:
                body = ("not ready: " + "; ".join(problems) + "\n" + part).encode()
                return respond(start_response, "503 Service Unavailable", body)
            return respond(start_response, "200 OK", ("ready\n" + part).encode())
        return respond(start_response, "404 Not Found", b"not found\n")

    return app


def respond(
    start_response: StartResponse,
    status: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    """Start a response with `body` and return it, as a WSGI app does."""
    start_response(
        status,
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers],
    )
    return [body]
