"""How the bot's Bot API requests travel: on ``http.client`` directly, not through ``requests``.

pyTelegramBotAPI makes every Bot API call with ``requests.Session.request``.
Here that costs about 1 ms of CPU per call, most of it in work a Bot API call
never needs: merging session settings, looking up proxies and ``~/.netrc`` in
the environment, cookies, hooks, redirects. The bot makes about three calls
per update, so that was most of its CPU (see ``bench/telegram_bench.py``).

pyTelegramBotAPI lets a program send its requests itself
(``apihelper.CUSTOM_REQUEST_SENDER``, a documented setting like ``API_URL``).
:class:`BotApiTransport` is such a sender, on the standard library's
``http.client`` (which urllib3, under ``requests``, itself sends with), over
a few kept-alive connections. Measured against the fake Bot API, CPU of the
calling thread per ``sendChatAction`` (``time.thread_time``, 2 loaded cores):
urllib3's pool 380-580 µs, this 200-260 µs; about half of what is left is
``http.client`` reading the answer's headers. In ``bench/telegram_bench.py``
(200 users, median of 3) the polling bot's sender threads went from 2,314 to
1,614 µs of CPU per update, the whole bot from 4.80 to 3.92 ms. It keeps
what the rest of the bot relies on:

* the same calls: the method pyTelegramBotAPI chose, its parameters encoded
  as ``requests`` encodes them (a POST's in a form body, which the Bot API
  takes as it takes a query string: no URL grows with a 4,096-character
  text), its connect and read timeouts, kept-alive connections (one checked
  for a close by the server before it is used again, as urllib3 does), no
  retries of its own (the outbox and the poller retry);
* the same failures: socket and ``http.client`` errors are raised as
  ``requests``' exceptions (``ConnectionError``, ``ConnectTimeout``,
  ``ReadTimeout``, ``SSLError``), so pyTelegramBotAPI and
  :func:`frontends.telegram.api.classify` see what they always saw;
* certificates checked against the same bundle as ``requests``
  (``REQUESTS_CA_BUNDLE`` if set, a file or a directory, else certifi's).

Where the fast path would differ from ``requests``, it steps aside and the
call goes through ``requests`` as before: a call with files, a call given
proxies, a call answered with a redirect (the Bot API does not redirect; a
server in front of a self-hosted one might), and every call when the
environment names a proxy for the Bot API or ``TELEGRAM_API_URL`` holds a
login (:func:`install` then does not install it at all).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import select
import socket
import ssl
import sys
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import requests.utils
from telebot import apihelper

log = logging.getLogger("frontends.telegram.http")

#: Connections kept per host beyond the senders and the poller (more may open; only these stay).
SPARE_CONNECTIONS = 2
FORM = "application/x-www-form-urlencoded"
#: The answers ``requests`` follows to another URL.
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Reply:
    """A Bot API response, with the part of ``requests.Response`` pyTelegramBotAPI reads."""

    __slots__ = ("content", "headers", "reason", "status_code")

    def __init__(
        self,
        status_code: int,
        reason: str,
        headers: Mapping[str, str] | http.client.HTTPMessage,
        content: bytes,
    ) -> None:
        self.status_code = status_code
        self.reason = reason
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        """The body as text (the Bot API always answers in UTF-8)."""
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ``ValueError`` if it is not JSON."""
        return json.loads(self.content)


def query_string(params: Mapping[str, Any] | None) -> str:
    """`params` encoded the way ``requests`` encodes them: ``None`` left out, lists repeated."""
    if not params:
        return ""
    pairs: list[tuple[str, Any]] = []
    for key, value in params.items():
        values = value if isinstance(value, (list, tuple)) else (value,)
        pairs.extend((key, item) for item in values if item is not None)
    return urlencode(pairs)


def as_requests_error(error: Exception, where: str, connecting: bool) -> requests.RequestException:
    """A socket, TLS or ``http.client`` failure as the exception ``requests`` raises for it.

    `where` is the server's host and port: the text never holds the path
    (where the token is).
    """
    text = f"{where}: {error or type(error).__name__}"
    if isinstance(error, ssl.SSLError):  # before OSError, its base
        return requests.exceptions.SSLError(text)
    if isinstance(error, TimeoutError):  # socket.timeout
        return requests.ConnectTimeout(text) if connecting else requests.ReadTimeout(text)
    return requests.ConnectionError(text)


class _Origin:
    """One Bot API server (there is one): how to connect, and the idle connections kept."""

    def __init__(self, origin: str, context: ssl.SSLContext | None) -> None:
        parts = urlsplit(origin)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.where = f"{self.host}:{self.port}"
        self.context = context
        self.idle: list[http.client.HTTPConnection] = []  # most recently used last

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """A new connection, opened (`timeout`: for the connect and the TLS handshake)."""
        connection: http.client.HTTPConnection
        if self.tls:
            connection = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.context
            )
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        connection.connect()
        # Small requests, answered at once: never hold one back for the last one's ACK.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether a kept connection was closed by the server (readable while idle: EOF)."""
    sock = connection.sock
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class BotApiTransport:
    """An ``apihelper.CUSTOM_REQUEST_SENDER``: Bot API calls over kept-alive connections.

    Thread-safe: the poller and every sender thread call it at once, each on
    a connection of its own, taken from the idle ones (or a new one) and
    given back when its answer is read.
    """

    def __init__(self, connections: int, verify: bool | str | None = True) -> None:
        self.connections = connections
        #: The TLS settings for `verify` (a bundle file or directory; else certifi's).
        self.context = tls_context(verify)
        self._origins: dict[str, _Origin] = {}
        self._lock = threading.Lock()
        self._closed = False
        agent = f"weather-bot (Python {sys.version_info[0]}.{sys.version_info[1]} http.client)"
        self.plain_headers = {"User-Agent": agent}
        self.form_headers = {**self.plain_headers, "Content-Type": FORM}
        self._session: requests.Session | None = None
        #: Connections opened so far (kept-alive ones are used again).
        self.opened = 0

    def __call__(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        files: Any = None,
        timeout: tuple[float, float] = (10.0, 30.0),
        proxies: Any = None,
        **more: Any,
    ) -> Reply | requests.Response:
        """Make one call; answers like ``requests.Session.request`` for what is read of it."""
        if files or proxies or more:
            return self._by_requests(
                method, url, params=params, files=files, timeout=timeout, proxies=proxies, **more
            )
        scheme, _, rest = url.partition("://")
        host, _, path = rest.partition("/")
        verb = method.upper()
        form = query_string(params)
        if verb == "POST":
            body: bytes | None = form.encode("ascii")
            target, headers = f"/{path}", self.form_headers
        else:
            target = f"/{path}?{form}" if form else f"/{path}"
            body, headers = None, self.plain_headers
        origin = self._origin(f"{scheme}://{host}")
        connection = self._take(origin, timeout[0])
        try:
            if connection.sock is not None:
                connection.sock.settimeout(timeout[1])
            connection.request(verb, target, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise as_requests_error(error, origin.where, connecting=False) from None
        self._give_back(origin, connection)
        if log.isEnabledFor(logging.DEBUG):  # the line urllib3 logged (the token is masked)
            log.debug('%s "%s %s" %s %s', origin.where, verb, target, response.status, len(content))
        if response.status in REDIRECTS and response.headers.get("Location"):
            # The Bot API does not redirect, but a server in front of a
            # self-hosted one may (http -> https): follow it as requests does.
            log.info("HTTP %s from the Bot API server: following it with requests", response.status)
            return self._by_requests(method, url, params=params, timeout=timeout)
        return Reply(response.status, response.reason or "", response.headers, content)

    def _origin(self, origin: str) -> _Origin:
        found = self._origins.get(origin)
        if found is None:
            with self._lock:
                found = self._origins.get(origin)
                if found is None:
                    context = self.context if origin.startswith("https:") else None
                    found = self._origins[origin] = _Origin(origin, context)
        return found

    def _take(self, origin: _Origin, connect_timeout: float) -> http.client.HTTPConnection:
        """An idle connection still open, or a new one."""
        while True:
            with self._lock:
                connection = origin.idle.pop() if origin.idle else None
            if connection is None:
                break
            if not _dropped(connection):
                return connection
            connection.close()  # the server closed it while it was idle
        try:
            connection = origin.connect(connect_timeout)
        except (OSError, http.client.HTTPException) as error:
            raise as_requests_error(error, origin.where, connecting=True) from None
        with self._lock:
            self.opened += 1
        return connection

    def _give_back(self, origin: _Origin, connection: http.client.HTTPConnection) -> None:
        if connection.sock is None:  # the server said it closes this one
            return
        with self._lock:
            if not self._closed and len(origin.idle) < self.connections:
                origin.idle.append(connection)
                return
        connection.close()

    def _by_requests(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        with self._lock:
            if self._session is None:
                self._session = requests.Session()
            session = self._session
        return session.request(method, url, **kwargs)

    def close(self) -> None:
        """Stop being pyTelegramBotAPI's sender and close the kept connections.

        Calls in flight finish on their connections, which are then closed;
        later ones would open new connections.
        """
        helper: Any = apihelper
        if helper.CUSTOM_REQUEST_SENDER is self:
            helper.CUSTOM_REQUEST_SENDER = None
        with self._lock:
            self._closed = True
            idle = [c for origin in self._origins.values() for c in origin.idle]
            for origin in self._origins.values():
                origin.idle.clear()
            session, self._session = self._session, None
        for connection in idle:
            connection.close()
        if session is not None:
            session.close()


def tls_context(verify: bool | str | None) -> ssl.SSLContext:
    """TLS settings for ``requests``' `verify`: a bundle file or a directory of them.

    Anything but a path means certifi's bundle, as ``True`` does in
    ``requests``; certificates and host names are always checked.
    """
    bundle = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


def install(api_url: str, connections: int) -> BotApiTransport | None:
    """Make pyTelegramBotAPI send through a :class:`BotApiTransport`, unless a proxy is set.

    Returns the transport (to :meth:`~BotApiTransport.close` at the end), or
    ``None`` when the environment names a proxy for `api_url`: then
    ``requests`` keeps sending, as it knows every kind of proxy.
    """
    helper: Any = apihelper  # its settings are module globals, typed by their defaults
    # What requests itself would take from the environment for this URL.
    found = requests.Session().merge_environment_settings(api_url, {}, None, None, None)
    if found["proxies"] or helper.proxy:
        log.info("a proxy is set for the Bot API: sending through requests")
        helper.CUSTOM_REQUEST_SENDER = None
        return None
    if "@" in urlsplit(api_url).netloc:
        log.info("TELEGRAM_API_URL holds a login: sending through requests")
        helper.CUSTOM_REQUEST_SENDER = None
        return None
    transport = BotApiTransport(connections, found["verify"])
    helper.CUSTOM_REQUEST_SENDER = transport
    return transport
