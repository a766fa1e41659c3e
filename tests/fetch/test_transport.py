"""`GuardedTransport` at its own level: real loopback servers, no gRPC."""

from __future__ import annotations

import contextlib
import inspect
import socket
import threading
from collections.abc import Iterator

import httpcore
import httpx
import pytest
from pkgloader.errors import UpstreamBlocked
from pkgloader.fetch.guard import UpstreamPolicy
from pkgloader.fetch.transport import HTTPCORE_ERRORS, GuardedTransport
from pytest_httpserver import HTTPServer

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=2)


def client(allow: tuple[str, ...] = ("127.0.0.1",), timeout: float = 10.0) -> httpx.Client:
    return httpx.Client(
        transport=GuardedTransport(UpstreamPolicy(allow), LIMITS), timeout=timeout, trust_env=False
    )


class RawServer:
    """A loopback TCP server that answers each connection with `reply`, then waits for `release`
    before closing: a body cut short, or a response that stalls."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.release = threading.Event()
        self.accepted = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.accepted += 1
        with conn:
            conn.recv(65536)
            conn.sendall(self.reply)
            self.release.wait(30)

    def close(self) -> None:
        self.release.set()
        # shutdown() wakes a thread blocked in accept(); close() alone does not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(30)


@pytest.fixture
def raw() -> Iterator[list[RawServer]]:
    made: list[RawServer] = []
    yield made
    for server in made:
        server.close()


def test_every_exception_httpcore_exports_has_an_httpx_class() -> None:
    """The table misses no exception class of httpcore's public API (fails on an upgrade that
    adds one), and each maps to an httpx transport error."""
    exported = [getattr(httpcore, name) for name in httpcore.__all__ if hasattr(httpcore, name)]
    classes = [c for c in exported if inspect.isclass(c) and issubclass(c, Exception)]
    assert classes, "httpcore exports no exception classes: has its API changed?"
    assert [c.__name__ for c in classes if c not in HTTPCORE_ERRORS] == []
    assert all(issubclass(t, httpx.TransportError) for t in HTTPCORE_ERRORS.values())


def test_a_get_streams_the_body_through_the_guarded_pool(httpserver: HTTPServer) -> None:
    """An allowed loopback upstream answers; status, headers and body come back intact."""
    httpserver.expect_request("/pkg").respond_with_data(b"x" * 300_000, headers={"X-A": "1"})
    with client() as http, http.stream("GET", httpserver.url_for("/pkg")) as response:
        assert response.status_code == 200
        assert response.headers["x-a"] == "1"
        assert b"".join(response.iter_bytes()) == b"x" * 300_000


def test_a_refused_address_is_never_connected_to() -> None:
    """With an empty allow-list loopback is refused at connect time: UpstreamBlocked passes
    through the exception table unchanged, and the listener sees no connection."""
    listener = RawServer(b"")
    try:
        with client(allow=()) as http, pytest.raises(UpstreamBlocked):
            http.get(f"http://127.0.0.1:{listener.port}/")
        assert listener.accepted == 0
    finally:
        listener.close()


def test_a_refused_connection_is_httpx_connect_error() -> None:
    """Nothing listening: httpcore's ConnectError arrives as httpx.ConnectError."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # bound, never listened: the port refuses
    with client() as http, pytest.raises(httpx.ConnectError) as caught:
        http.get(f"http://127.0.0.1:{port}/")
    assert isinstance(caught.value.__cause__, httpcore.ConnectError)


def test_a_body_cut_short_is_httpx_remote_protocol_error(raw: list[RawServer]) -> None:
    """A response that ends before its Content-Length, read while streaming: the most specific
    httpx class (RemoteProtocolError), not its base."""
    server = RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this")
    raw.append(server)
    with client() as http, http.stream("GET", f"http://127.0.0.1:{server.port}/") as response:
        server.release.set()  # the server closes the connection 991 bytes short
        with pytest.raises(httpx.RemoteProtocolError):
            b"".join(response.iter_bytes())


def test_a_stalled_response_is_httpx_read_timeout(raw: list[RawServer]) -> None:
    """Headers that never arrive: httpcore's ReadTimeout maps to httpx.ReadTimeout."""
    server = RawServer(b"")
    raw.append(server)
    with client(timeout=0.2) as http, pytest.raises(httpx.ReadTimeout):
        http.get(f"http://127.0.0.1:{server.port}/")
