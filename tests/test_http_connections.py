"""Kept-alive connections (flows.http_connections) read answers as http.client reads them.

A local server answers in each shape HTTP/1.1 allows (a length, chunks, up to
the close, none at all, folded and repeated headers); the lean reader must
make of each what http.client's own makes, and keep a connection alive only
where the answer allows it.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from flows.http_connections import KeptConnections
from tests.support.local_server import KeepAliveHandler, KeepAliveServer, LocalServer

#: Raw answers by path: status line and headers as sent, then the body.
ANSWERS: dict[str, bytes] = {
    "/length": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: 11\r\n\r\n{\"a\": true}",
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\n{\"a\"\r\n7\r\n: true}\r\n0\r\n\r\n",
    "/until-close": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it",
    "/closing": b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
    b"Content-Length: 4\r\n\r\nbusy",
    "/folded": b"HTTP/1.1 200 OK\r\nX-Long: first part\r\n  second part\r\n"
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok",
    "/empty": b"HTTP/1.1 204 No Content\r\nX-Empty: yes\r\n\r\n",
    "/continue": b"HTTP/1.1 100 Continue\r\nX-Ignored: 1\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone",
    "/http10": b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold",
}
#: Answers after which the server closes the connection.
CLOSING = {"/until-close", "/closing", "/http10"}


class RawServer(LocalServer):
    """Answers each GET with the raw bytes of ANSWERS[path]."""

    name = "raw-answers"

    def _make_server(self) -> KeepAliveServer:
        class Handler(KeepAliveHandler):
            def do_GET(self) -> None:
                self.wfile.write(ANSWERS[self.path])
                self.wfile.flush()
                if self.path in CLOSING:
                    self.close_connection = True

        return KeepAliveServer(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def server() -> Iterator[RawServer]:
    with RawServer() as running:
        yield running


def read_with_http_client(server: RawServer, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    port = int(server.base_url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path", sorted(ANSWERS))
def test_every_shape_of_answer_reads_as_http_client_reads_it(server: RawServer, path: str) -> None:
    kept = KeptConnections(keep=2)
    origin = kept.origin(server.base_url)
    connection = kept.take(origin, 5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        mine = response.status, response.getheaders(), response.read()
        kept.give_back(origin, connection)
    finally:
        kept.close()
    status, headers, body = read_with_http_client(server, path)
    # The email parser keeps a folded value's line break; the lean reader joins with a space.
    assert mine[0] == status and mine[2] == body
    assert [(n, " ".join(v.split())) for n, v in mine[1]] == [
        (n, " ".join(v.split())) for n, v in headers
    ]
    assert response.will_close == (path in CLOSING)


def test_a_connection_is_used_again_only_after_an_answer_that_allows_it(
    server: RawServer,
) -> None:
    kept = KeptConnections(keep=2)
    origin = kept.origin(server.base_url)
    try:
        for path in ("/length", "/chunked", "/folded", "/empty", "/closing", "/length"):
            connection = kept.take(origin, 5)
            connection.request("GET", path)
            connection.getresponse().read()
            kept.give_back(origin, connection)
        # one for the four that keep it open, a second after "/closing" closed it
        assert kept.opened == 2
    finally:
        kept.close()


def test_too_many_headers_are_refused_as_http_client_refuses_them(server: RawServer) -> None:
    ANSWERS["/flood"] = b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 101 + b"Content-Length: 0\r\n\r\n"
    kept = KeptConnections(keep=2)
    origin = kept.origin(server.base_url)
    connection = kept.take(origin, 5)
    try:
        connection.request("GET", "/flood")
        with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
            connection.getresponse()
    finally:
        connection.close()
        kept.close()
        del ANSWERS["/flood"]
