"""`GuardedTransport`: an httpx transport over httpcore's public pool with our network backend.

httpx's `HTTPTransport` builds its httpcore pool itself and has no parameter for the network
backend, the one place where the *resolved* address of every connection can be checked
(`guard.GuardedBackend`). So this transport builds the pool itself, through httpcore's public
`ConnectionPool(network_backend=...)`, and does the little `HTTPTransport` does around it: turn
an httpx request into an httpcore one and back, and translate httpcore's exceptions into httpx's
by one table (`HTTPCORE_ERRORS`, the pattern of httpx's `map_httpcore_exceptions`). A test fails
if the table misses an exception class httpcore exports.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterable, Iterator
from types import TracebackType

import httpcore
import httpx

from pkgloader.fetch.guard import GuardedBackend, UpstreamPolicy

#: Every exception class httpcore exports → the httpx class callers catch. Ordered as httpcore's
#: tree; `_mapped` picks the most specific match, so a subclass never becomes its base.
HTTPCORE_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    # The pool retries internally on this one; should it ever escape, it is a connect failure.
    httpcore.ConnectionNotAvailable: httpx.ConnectError,
}


def _mapped(exc: Exception) -> type[httpx.TransportError] | None:
    found: type[httpx.TransportError] | None = None
    for source, target in HTTPCORE_ERRORS.items():
        if isinstance(exc, source) and (found is None or issubclass(target, found)):
            found = target
    return found


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """Re-raise httpcore's exceptions as httpx's; anything else (`UpstreamBlocked` from the
    backend's address check included) passes through unchanged."""
    try:
        yield
    except Exception as exc:
        target = _mapped(exc)
        if target is None:
            raise
        raise target(str(exc)) from exc


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class GuardedTransport(httpx.BaseTransport):
    """HTTP/1.1 to any host, every connection's resolved address checked by `policy` first."""

    def __init__(
        self,
        policy: UpstreamPolicy,
        limits: httpx.Limits,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = self._pool.handle_request(core)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> GuardedTransport:
        self._pool.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        with _httpx_errors():
            self._pool.__exit__(exc_type, exc_value, traceback)
