"""Kept-alive HTTP connections on ``http.client``, shared by threads, with ``requests``' ways.

``requests`` costs about 1 ms of CPU per call, most of it in work a call to
one known JSON API never needs: merging session settings, looking up proxies
and ``~/.netrc`` in the environment, cookies, hooks, redirects, urllib3's pool.
The bot's Bot API transport (``frontends.telegram.http``) and the Open-Meteo
client (``flows.openmeteo``) send their calls over :class:`KeptConnections`
instead, on the standard library's ``http.client`` (which urllib3 itself
sends with): 200-260 µs per call where urllib3's pool took 380-580 µs.

What they keep of ``requests``, from here:

* parameters encoded as ``requests`` encodes them (:func:`query_string`);
* certificates checked against the same bundle (:func:`tls_context`:
  ``REQUESTS_CA_BUNDLE`` if set, a file or a directory, else certifi's);
  :func:`environment_settings` is what ``requests`` reads from the
  environment for a URL (proxies, the bundle): a caller steps aside to
  ``requests`` when a proxy is named, as ``requests`` knows every kind;
* a kept connection closed by the server while idle is not used again
  (checked before each use, as urllib3 does), and nothing is retried;
* socket, TLS and ``http.client`` failures read as ``requests``' exceptions
  (:func:`as_requests_error`) where a caller wants them so.

Not here: the callers' own rules (what a call sends, which answers count as
failures, timeouts beyond connect and read); each has its module.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import requests.utils

__all__ = [
    "KeptConnections",
    "LeanResponse",
    "Origin",
    "as_requests_error",
    "environment_settings",
    "query_string",
    "tls_context",
]

#: The answers ``requests`` follows to another URL.
REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: http.client's limits on an answer's headers (its ``_MAXLINE`` and ``_MAXHEADERS``).
MAX_HEADER_LINE = 65536
MAX_HEADERS = 100


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
    (where a token may be).
    """
    text = f"{where}: {error or type(error).__name__}"
    if isinstance(error, ssl.SSLError):  # before OSError, its base
        return requests.exceptions.SSLError(text)
    if isinstance(error, TimeoutError):  # socket.timeout
        return requests.ConnectTimeout(text) if connecting else requests.ReadTimeout(text)
    return requests.ConnectionError(text)


def tls_context(verify: bool | str | None) -> ssl.SSLContext:
    """TLS settings for ``requests``' `verify`: a bundle file or a directory of them.

    Anything but a path means certifi's bundle, as ``True`` does in
    ``requests``; certificates and host names are always checked.
    """
    bundle = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


def environment_settings(url: str) -> dict[str, Any]:
    """What ``requests`` takes from the environment for `url`: ``proxies`` (``NO_PROXY``
    honoured) and ``verify`` (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``)."""
    found = requests.Session().merge_environment_settings(url, {}, None, None, None)
    return {"proxies": found["proxies"], "verify": found["verify"]}


def read_headers(fp: Any) -> http.client.HTTPMessage:
    """An answer's header lines from `fp`, as the ``HTTPMessage`` http.client makes of them.

    http.client hands them to the ``email`` package's parser: 54 µs for the
    Bot API's five headers, against 7 µs here (``timeit``), and the bot reads
    about four answers per update. Same limits and errors as http.client; a
    folded line continues the value before it; a line that is no header is
    skipped (the parser would have dropped the rest instead).
    """
    pairs: list[list[str]] = []
    while True:
        line = fp.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            break
        if len(pairs) >= MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        text = line.decode("iso-8859-1")
        if text[0] in " \t":
            if pairs:
                pairs[-1][1] += " " + text.strip()
            continue
        name, colon, value = text.partition(":")
        if colon and name and name == name.rstrip():
            pairs.append([name, value.strip()])
    message = http.client.HTTPMessage()
    for name, value in pairs:
        message[name] = value
    return message


class LeanResponse(http.client.HTTPResponse):
    """http.client's response, its headers read by :func:`read_headers`.

    :meth:`begin` is ``HTTPResponse.begin`` (the same in CPython 3.10 to
    3.13) but for the header parser.
    """

    def begin(self) -> None:
        """Read the status line and headers; settle how the body is delimited."""
        if self.headers is not None:
            return
        this: Any = self  # http.client's private helpers are not in its stubs
        while True:
            version, status, reason = this._read_status()
            if status != http.client.CONTINUE:
                break
            read_headers(self.fp)  # a 100 Continue's headers, skipped
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = read_headers(self.fp)
        coding = self.headers.get("transfer-encoding")
        this.chunked = bool(coding) and coding.lower() == "chunked"
        if this.chunked:
            this.chunk_left = None
        self.will_close = this._check_close()
        this.length = None
        length = self.headers.get("content-length")
        if length and not this.chunked:
            try:
                this.length = int(length)
            except ValueError:
                this.length = None
            else:
                if this.length < 0:  # a nonsensical negative length is ignored
                    this.length = None
        if status in (204, 304) or 100 <= status < 200 or this._method == "HEAD":
            this.length = 0
        if not self.will_close and not this.chunked and this.length is None:
            self.will_close = True  # no length, not chunked: the body ends with the connection


class Origin:
    """One server (scheme, host, port): how to connect, and its idle connections."""

    def __init__(
        self,
        origin: str,
        context: ssl.SSLContext | None,
        response_class: type[http.client.HTTPResponse] | None = None,
    ) -> None:
        parts = urlsplit(origin)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        #: Host and port, for messages (never a path: a token may be in it).
        self.where = f"{self.host}:{self.port}"
        self.context = context
        self.response_class = response_class or LeanResponse
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
        connection.response_class = self.response_class
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


class KeptConnections:
    """Kept-alive connections to a few servers, for many threads at once.

    Each call takes a connection of its own (an idle one still open, or a
    new one) and gives it back once its answer is read; at most `keep` per
    server stay open while idle. Answers are read as :class:`LeanResponse`,
    or with `response_class` (a subclass of it, e.g. one with a deadline).
    """

    def __init__(
        self, keep: int, response_class: type[http.client.HTTPResponse] | None = None
    ) -> None:
        self.keep = keep
        self.response_class = response_class
        self._origins: dict[tuple[str, str | None], Origin] = {}
        self._contexts: dict[str | None, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self._closed = False
        #: Connections opened so far (kept-alive ones are used again).
        self.opened = 0

    def origin(self, origin: str, verify: bool | str | None = True) -> Origin:
        """The server at `origin` (``scheme://host[:port]``), certificates checked per `verify`."""
        bundle = verify if isinstance(verify, str) else None
        key = (origin, bundle)
        found = self._origins.get(key)
        if found is None:
            with self._lock:
                found = self._origins.get(key)
                if found is None:
                    context = None
                    if origin.startswith("https:"):
                        context = self._contexts.get(bundle)
                        if context is None:
                            context = self._contexts[bundle] = tls_context(verify)
                    found = Origin(origin, context, self.response_class)
                    self._origins[key] = found
        return found

    def take(self, origin: Origin, connect_timeout: float) -> http.client.HTTPConnection:
        """An idle connection still open, or a new one (connecting may raise ``OSError``)."""
        while True:
            with self._lock:
                connection = origin.idle.pop() if origin.idle else None
            if connection is None:
                break
            if not _dropped(connection):
                return connection
            connection.close()  # the server closed it while it was idle
        connection = origin.connect(connect_timeout)
        with self._lock:
            self.opened += 1
        return connection

    def give_back(self, origin: Origin, connection: http.client.HTTPConnection) -> None:
        """`connection`, its answer read whole: kept for the next call, or closed."""
        if connection.sock is None:  # the server said it closes this one
            return
        with self._lock:
            if not self._closed and len(origin.idle) < self.keep:
                origin.idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the idle connections; those in use are closed when given back."""
        with self._lock:
            self._closed = True
            idle = [c for origin in self._origins.values() for c in origin.idle]
            for origin in self._origins.values():
                origin.idle.clear()
        for connection in idle:
            connection.close()
