"""What the tests' fake HTTP servers share: a life on 127.0.0.1 with no thread left behind."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

#: The test certificate (self-signed, for 127.0.0.1) that HTTPS fakes serve with.
TEST_CERTIFICATE = Path(__file__).resolve().parent.parent / "fixtures" / "tls" / "cert.pem"

Served = TypeVar("Served", bound="LocalServer")
Fake = TypeVar("Fake")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (bound, then released: a server binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class LocalServer:
    """Serves on a free port of 127.0.0.1 on a named thread, until :meth:`stop`.

    A subclass makes its HTTP server in :meth:`_make_server` and may wake
    requests that wait (long polls, hanging answers) in :meth:`_closing`.
    """

    #: Names the serving thread and the errors.
    name = "local-server"

    def __init__(self, *, tls: bool = False) -> None:
        #: Serve HTTPS with :data:`TEST_CERTIFICATE` instead of plain HTTP.
        self.tls = tls
        self._server: KeepAliveServer | None = None
        self._thread: threading.Thread | None = None

    def _make_server(self) -> KeepAliveServer:
        raise NotImplementedError

    def _opening(self) -> None:
        """Before serving: reset what the last stop set."""

    def _closing(self) -> None:
        """Before shutting down: release requests that wait."""

    def start(self: Served) -> Served:
        """Listen and serve on a thread named after the server."""
        if self._server is not None:
            raise RuntimeError(f"the {self.name} is already running")
        self._opening()
        self._server = self._make_server()
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(TEST_CERTIFICATE, TEST_CERTIFICATE.with_name("key.pem"))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and join every thread (fails if one will not stop)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._closing()
        server.shutdown()
        server.cut_connections()  # idle kept-alive connections end their threads
        server.server_close()  # joins the request threads
        thread.join(timeout=5)
        self._server = self._thread = None
        if thread.is_alive():
            raise RuntimeError(f"the {self.name}'s thread did not stop")

    def __enter__(self: Served) -> Served:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with `tls`)."""
        if self._server is None:
            raise RuntimeError(f"the {self.name} is not running")
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}"


class KeepAliveServer(ThreadingHTTPServer):
    """A threading HTTP server whose kept-alive connections can all be cut at a stop.

    Request threads are joined by ``server_close()``, so none outlives a test;
    a thread waiting for a client's next request on an idle connection ends
    when :meth:`cut_connections` shuts its socket.
    """

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128  # a crowd of clients connecting at once is not refused

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def cut_connections(self) -> None:
        """Shut every open connection, so idle keep-alive threads end now."""
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class FakeServer(KeepAliveServer, Generic[Fake]):
    """A :class:`KeepAliveServer` whose handlers reach their fake as ``self.server.fake``."""

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: Fake
    ) -> None:
        self.fake = fake
        super().__init__(address, handler)


class KeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with kept-alive connections, as the real services speak it."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each answer waits ~40 ms for a delayed ACK
    wbufsize = -1  # headers and body leave in one write (flushed after each request)
    server: KeepAliveServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def handle(self) -> None:
        # Answers leave at the flush after each request: a client that went
        # away (stopped, or gave up waiting) is no error of the server's.
        with contextlib.suppress(ConnectionError):
            super().handle()

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def respond(self, status: int, body: bytes, content_type: str) -> None:
        """Send a whole answer; a client that went away (stopped, gave up waiting) is no error."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet: the fakes record what they were asked
