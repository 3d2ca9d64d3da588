"""How the bot's Bot API requests travel: on urllib3 directly, not through ``requests.Session``.

pyTelegramBotAPI makes every Bot API call with ``requests.Session.request``.
Here that costs about 1 ms of CPU per call, most of it in work a Bot API call
never needs: merging session settings, looking up proxies and ``~/.netrc`` in
the environment, cookies, hooks, redirects. The bot makes about three calls
per update, so that was most of its CPU (see ``bench/telegram_bench.py``).

pyTelegramBotAPI lets a program send its requests itself
(``apihelper.CUSTOM_REQUEST_SENDER``, a documented setting like ``API_URL``).
:class:`BotApiTransport` is such a sender, on urllib3, the library ``requests``
itself sends with: about a quarter of the CPU per call. It keeps what the
rest of the bot relies on:

* the same calls: the method pyTelegramBotAPI chose, its parameters encoded
  as ``requests`` encodes them (a POST's in a form body, which the Bot API
  takes as it takes a query string: no URL grows with a 4,096-character
  text), its connect and read timeouts, kept-alive connections, no retries
  of its own (the outbox and the poller retry);
* the same failures: urllib3's errors are raised as ``requests``' exceptions
  (``ConnectionError``, ``ConnectTimeout``, ``ReadTimeout``, ...), so
  pyTelegramBotAPI and :func:`frontends.telegram.api.classify` see what they
  always saw;
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

import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import requests.utils
import urllib3
from telebot import apihelper

log = logging.getLogger("frontends.telegram.http")

#: Connections kept per host beyond the senders and the poller (more may open; only these stay).
SPARE_CONNECTIONS = 2
FORM = "application/x-www-form-urlencoded"


class Reply:
    """A Bot API response, with the part of ``requests.Response`` pyTelegramBotAPI reads."""

    __slots__ = ("content", "headers", "reason", "status_code")

    def __init__(
        self, status_code: int, reason: str, headers: Mapping[str, str], content: bytes
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


def as_requests_error(error: Exception) -> requests.RequestException:
    """urllib3's failure as the exception ``requests`` raises for it.

    Only urllib3's text is kept, which names the host and port but never the
    path (where the token is).
    """
    errors = urllib3.exceptions
    text = str(error)
    if isinstance(error, errors.ReadTimeoutError):
        return requests.ReadTimeout(text)
    if isinstance(error, errors.NewConnectionError):  # before its base, ConnectTimeoutError
        return requests.ConnectionError(text)
    if isinstance(error, errors.ConnectTimeoutError):
        return requests.ConnectTimeout(text)
    if isinstance(error, errors.ProxyError):
        return requests.exceptions.ProxyError(text)
    if isinstance(error, errors.SSLError):
        return requests.exceptions.SSLError(text)
    if isinstance(error, errors.LocationValueError):
        return requests.exceptions.InvalidURL(text)
    return requests.ConnectionError(text)


class BotApiTransport:
    """An ``apihelper.CUSTOM_REQUEST_SENDER``: Bot API calls over a urllib3 connection pool.

    Thread-safe: the poller and every sender thread call it at once, each on
    a connection of its own from the pool.
    """

    def __init__(self, connections: int, verify: bool | str | None = True) -> None:
        self.connections = connections
        #: urllib3's settings for `verify` (a bundle file or directory; else certifi's).
        self.certificates = certificate_settings(verify)
        #: One pool per Bot API server (there is one), found without parsing each URL.
        self._pools: dict[str, urllib3.connectionpool.HTTPConnectionPool] = {}
        self._lock = threading.Lock()
        agent = f"weather-bot (urllib3/{urllib3.__version__})"  # type: ignore[attr-defined]
        self.plain_headers = {"User-Agent": agent}
        self.form_headers = {**self.plain_headers, "Content-Type": FORM}
        self._session: requests.Session | None = None

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
            body, target, headers = form.encode("ascii"), f"/{path}", self.form_headers
        else:
            target = f"/{path}?{form}" if form else f"/{path}"
            body, headers = None, self.plain_headers
        try:
            response = self._pool(f"{scheme}://{host}").urlopen(
                verb,
                target,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as error:
            raise as_requests_error(error) from None
        if response.get_redirect_location():
            # The Bot API does not redirect, but a server in front of a
            # self-hosted one may (http -> https): follow it as requests does.
            log.info("HTTP %s from the Bot API server: following it with requests", response.status)
            return self._by_requests(method, url, params=params, timeout=timeout)
        return Reply(response.status, response.reason or "", response.headers, response.data)

    def _pool(self, origin: str) -> urllib3.connectionpool.HTTPConnectionPool:
        pool = self._pools.get(origin)
        if pool is None:
            with self._lock:
                pool = self._pools.get(origin)
                if pool is None:
                    tls = self.certificates if origin.startswith("https:") else {}
                    pool = self._pools[origin] = urllib3.connectionpool.connection_from_url(
                        origin, maxsize=self.connections, block=False, retries=False, **tls
                    )
        return pool

    def _by_requests(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        with self._lock:
            if self._session is None:
                self._session = requests.Session()
            session = self._session
        return session.request(method, url, **kwargs)

    def close(self) -> None:
        """Stop being pyTelegramBotAPI's sender and close the kept connections.

        Calls in flight finish on their connections; later ones would open
        new connections.
        """
        helper: Any = apihelper
        if helper.CUSTOM_REQUEST_SENDER is self:
            helper.CUSTOM_REQUEST_SENDER = None
        with self._lock:
            pools, self._pools = self._pools, {}
            session, self._session = self._session, None
        for pool in pools.values():
            pool.close()
        if session is not None:
            session.close()


def certificate_settings(verify: bool | str | None) -> dict[str, str]:
    """urllib3's settings for ``requests``' `verify`: a bundle file or a directory of them.

    Anything but a path means certifi's bundle, as ``True`` does in
    ``requests``; certificates are always checked.
    """
    bundle = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
    where = "ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"
    return {"cert_reqs": "CERT_REQUIRED", where: bundle}


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
