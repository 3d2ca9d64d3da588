"""A test-only load balancer: POSTs to it go to its backends in turn.

As a load balancer in front of several bot instances does: a backend that
refuses the connection (a killed instance) is skipped for the next one; a
request cut short (an instance killed while answering) is answered 502, so
the fake Telegram sends the update again, as Telegram would.
"""

from __future__ import annotations

import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import requests

#: Headers passed on to the backend (what the webhook reads).
PASSED = ("Content-Type", "X-Telegram-Bot-Api-Secret-Token")


class _Server(ThreadingHTTPServer):
    # The default backlog (5) drops connections under a burst: a 1 s SYN retry each.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.request_threads: list[threading.Thread] = []
        self._numbers = itertools.count(1)

    def process_request(self, request: Any, client_address: Any) -> None:
        """As ThreadingMixIn does, with each thread named and kept to be joined on stop."""
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"round-robin-request-{next(self._numbers)}",
            daemon=True,
        )
        self.request_threads = [kept for kept in self.request_threads if kept.is_alive()]
        self.request_threads.append(thread)
        thread.start()

    def join_requests(self, timeout: float) -> None:
        """Wait for the requests in flight (each ends within the forwarding timeouts)."""
        deadline = time.monotonic() + timeout
        for thread in self.request_threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class RoundRobin:
    """``with RoundRobin(urls) as proxy: proxy.url``: forwards POSTs to `urls` in turn."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self._turn = itertools.count()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name: self.headers[name] for name in PASSED if name in self.headers}
                status = owner.forward(self.path, body, headers)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="round-robin")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def forward(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """The status of the first backend (in turn) that answers; 502 if none does."""
        with requests.Session() as session:
            session.trust_env = False
            return self._first_answer(session, path, body, headers)

    def _first_answer(
        self, session: requests.Session, path: str, body: bytes, headers: dict[str, str]
    ) -> int:
        start = next(self._turn)
        for offset in range(len(self.backends)):
            backend = self.backends[(start + offset) % len(self.backends)]
            try:
                return session.post(backend + path, data=body, headers=headers,
                                    timeout=(1, 10)).status_code  # fmt: skip
            except requests.ConnectionError as error:
                if "refused" not in str(error).lower():
                    return 502  # it took the request and died: Telegram sends it again
            except requests.RequestException:
                return 502
        return 502

    def __enter__(self) -> RoundRobin:
        self.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        self.server.join_requests(timeout=15)
