"""An overall deadline for an HTTP request made with requests, with no thread of its own.

requests' read timeout applies to each read from the socket, so a server that
trickles one byte every few seconds can hold a request for ever. Here every
read of a response (status line, headers and body alike) first looks at a
monotonic deadline and waits at most until it: past the deadline a read raises
:class:`TimeoutError`, which urllib3 and requests report as the usual read
timeout. Mount :class:`DeadlineAdapter` on a session and make each request
inside ``with deadline(seconds):`` on the same thread::

    session.mount("https://", DeadlineAdapter())
    with deadline(13.0):
        response = session.get(url, timeout=(3.05, 10))
        body = response.content

Outside a ``with deadline`` block the adapter behaves like requests' own.
SOCKS proxies keep their own connection classes and get only the per-read
timeout.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection

__all__ = ["DeadlineAdapter", "DeadlineResponse", "deadline", "remaining_seconds"]

_current = threading.local()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Give every response read on this thread, inside the block, `seconds` in all.

    Yields the deadline as a :func:`time.monotonic` value. Blocks nest: the
    earlier deadline wins.
    """
    outer: float | None = getattr(_current, "deadline", None)
    ends = time.monotonic() + seconds
    _current.deadline = ends if outer is None else min(outer, ends)
    try:
        yield _current.deadline
    finally:
        _current.deadline = outer


def remaining_seconds() -> float | None:
    """Seconds left of this thread's deadline (may be negative), or None outside one."""
    ends: float | None = getattr(_current, "deadline", None)
    return None if ends is None else ends - time.monotonic()


class _DeadlineSocketReader(io.RawIOBase):
    """Reads a socket, each read waiting no longer than the deadline allows.

    It takes the place of ``socket.makefile("rb")``'s raw reader; the
    connection keeps owning (and closing) the socket.
    """

    def __init__(self, sock: socket.socket, ends: float) -> None:
        super().__init__()
        self._sock = sock
        self._ends = ends

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._ends - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's overall deadline passed")
        per_read = self._sock.gettimeout()
        self._sock.settimeout(remaining if per_read is None else min(per_read, remaining))
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(per_read)


class DeadlineResponse(http.client.HTTPResponse):
    """http.client's response, reading through the thread's deadline if it has one.

    Also a ``response_class`` for plain ``http.client`` connections
    (``flows.http_connections.KeptConnections``).
    """

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        ends: float | None = getattr(_current, "deadline", None)
        if ends is not None:
            self.fp.close()  # only drops makefile()'s reference; the socket stays open
            self.fp = io.BufferedReader(_DeadlineSocketReader(sock, ends))


class _DeadlineHTTPConnection(HTTPConnection):
    response_class = DeadlineResponse


class _DeadlineHTTPSConnection(HTTPSConnection):
    response_class = DeadlineResponse


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


_POOL_CLASSES = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose responses read within the thread's :func:`deadline`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOL_CLASSES)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_POOL_CLASSES)
        return manager
