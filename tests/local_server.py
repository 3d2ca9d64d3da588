"""What the tests' fake HTTP servers share: a life on 127.0.0.1 with no thread left behind."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import TypeVar

Served = TypeVar("Served", bound="LocalServer")


class LocalServer:
    """Serves on a free port of 127.0.0.1 on a named thread, until :meth:`stop`.

    A subclass makes its HTTP server in :meth:`_make_server` and may wake
    requests that wait (long polls, hanging answers) in :meth:`_closing`.
    """

    #: Names the serving thread and the errors.
    name = "local-server"

    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _make_server(self) -> ThreadingHTTPServer:
        raise NotImplementedError

    def _opening(self) -> None:
        """Before serving: reset what the last stop set."""

    def _closing(self) -> None:
        """Before shutting down: release requests that wait."""

    def _shut(self, server: ThreadingHTTPServer) -> None:
        """After the serving loop stopped, before the request threads are joined."""

    def start(self: Served) -> Served:
        """Listen and serve on a thread named after the server."""
        if self._server is not None:
            raise RuntimeError(f"the {self.name} is already running")
        self._opening()
        self._server = self._make_server()
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
        self._shut(server)
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
        """``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError(f"the {self.name} is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"
