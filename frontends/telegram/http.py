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
a few kept-alive connections (:class:`flows.http_connections.KeptConnections`,
which the Open-Meteo client sends over too). Measured against the fake Bot API, CPU of the
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
import sys
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from telebot import apihelper

from flows.http_connections import (
    REDIRECTS,
    KeptConnections,
    as_requests_error,
    environment_settings,
    query_string,
    tls_context,
)

__all__ = ["BotApiTransport", "Reply", "install", "query_string", "tls_context"]

log = logging.getLogger("frontends.telegram.http")

#: Connections kept per host beyond the senders and the poller (more may open; only these stay).
SPARE_CONNECTIONS = 2
FORM = "application/x-www-form-urlencoded"


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


class BotApiTransport:
    """An ``apihelper.CUSTOM_REQUEST_SENDER``: Bot API calls over kept-alive connections.

    Thread-safe: the poller and every sender thread call it at once, each on
    a connection of its own, taken from the idle ones (or a new one) and
    given back when its answer is read.
    """

    def __init__(self, connections: int, verify: bool | str | None = True) -> None:
        self.connections = connections
        self.verify = verify
        self._kept = KeptConnections(keep=connections)
        self._lock = threading.Lock()
        agent = f"weather-bot (Python {sys.version_info[0]}.{sys.version_info[1]} http.client)"
        self.plain_headers = {"User-Agent": agent}
        self.form_headers = {**self.plain_headers, "Content-Type": FORM}
        self._session: requests.Session | None = None

    @property
    def opened(self) -> int:
        """Connections opened so far (kept-alive ones are used again)."""
        return self._kept.opened

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
        origin = self._kept.origin(f"{scheme}://{host}", self.verify)
        try:
            connection = self._kept.take(origin, timeout[0])
        except (OSError, http.client.HTTPException) as error:
            raise as_requests_error(error, origin.where, connecting=True) from None
        try:
            if connection.sock is not None:
                connection.sock.settimeout(timeout[1])
            connection.request(verb, target, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise as_requests_error(error, origin.where, connecting=False) from None
        self._kept.give_back(origin, connection)
        if log.isEnabledFor(logging.DEBUG):  # the line urllib3 logged (the token is masked)
            log.debug('%s "%s %s" %s %s', origin.where, verb, target, response.status, len(content))
        if response.status in REDIRECTS and response.headers.get("Location"):
            # The Bot API does not redirect, but a server in front of a
            # self-hosted one may (http -> https): follow it as requests does.
            log.info("HTTP %s from the Bot API server: following it with requests", response.status)
            return self._by_requests(method, url, params=params, timeout=timeout)
        return Reply(response.status, response.reason or "", response.headers, content)

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
        self._kept.close()
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()


def install(api_url: str, connections: int) -> BotApiTransport | None:
    """Make pyTelegramBotAPI send through a :class:`BotApiTransport`, unless a proxy is set.

    Returns the transport (to :meth:`~BotApiTransport.close` at the end), or
    ``None`` when the environment names a proxy for `api_url`: then
    ``requests`` keeps sending, as it knows every kind of proxy.
    """
    helper: Any = apihelper  # its settings are module globals, typed by their defaults
    # What requests itself would take from the environment for this URL.
    found = environment_settings(api_url)
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
