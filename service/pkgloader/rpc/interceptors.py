"""Cross-cutting concerns of every RPC, in one place: error mapping, the access log, metrics,
and the server's concurrency limits (`CallLimits`).

Servicer methods raise domain errors and return; this wraps every handler, of every kind, so that
each error is mapped once (`status.to_status`), every call is authenticated (when auth is on) and
logs one structured line from its typed `CallRecord` (`rpc.calls`), and an unexpected exception is
logged with its traceback and sent as a bare INTERNAL.

The server is grpcio's asyncio one (`rpc.server`). A behaviour written `async` (the servicer's
Load, grpcio's health and reflection services) runs on the event loop; every other one blocks, and
runs on the business thread pool a step at a time (`rpc.blocking`).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from opentelemetry import trace
from pkgloader_client import SERVICE_NAME

from pkgloader import logs
from pkgloader.errors import (
    InvalidRequest,
    PkgloaderError,
    ResponseTooLarge,
    SendStalled,
    StreamIdle,
    TooManyStreams,
)
from pkgloader.rpc import blocking, calls
from pkgloader.rpc.auth import TokenAuth
from pkgloader.rpc.calls import CallRecord
from pkgloader.rpc.status import code_for, internal_status, to_status

log = logging.getLogger("pkgloader.access")

# Generated request ids: unique per process start, then a counter (uuid4 per call costs an
# os.urandom call on every RPC; these only need to be unique, not unguessable).
_PROCESS_ID = uuid.uuid4().hex[:12]
_SEQUENCE = itertools.count(1)

#: The largest response message the server sends, and its grpc.max_send_message_length
#: (app.SERVER_OPTIONS takes it from here): 4 MiB, what Go, Java, Node and Python clients accept
#: by default (issue 10 item 8). Unary responses and a stream's first message are checked
#: against it (`ResponseTooLarge`); later stream messages are chunks of at most 1 MiB.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024

#: Called once per finished RPC with its record (code and seconds set).
Observer = Callable[[CallRecord], None]

#: Streams of bulk data, limited per connection: method -> "is this request one?".
_CONTENT_STREAMS: dict[str, Callable[[Any], bool]] = {
    f"/{SERVICE_NAME}/Load": lambda request: bool(request.include_content),
    f"/{SERVICE_NAME}/Scan": lambda request: True,
}
#: gRPC's own services (health, reflection).
_INFRA = "/grpc."
_END = object()


@dataclass(frozen=True)
class CallLimits:
    """The server's concurrency limits, enforced per call (see `app.create_server`)."""

    #: content Loads and Scans one HTTP/2 connection (one `context.peer()`) may have running
    content_streams_per_connection: int
    #: seconds one streamed message may wait to be sent before the call is cancelled
    send_timeout: float
    #: long-lived streams (reflection) open at once
    infra_streams: int
    #: of those, what one connection may hold: one client cannot take them all
    infra_streams_per_connection: int = 1
    #: seconds such a stream may wait for its next request before the server ends it (grpcurl
    #: sends its requests at once; a client holding a stream open idle frees its place)
    infra_idle_timeout: float = 10.0
    #: business calls running at once (health and reflection not counted); beyond it a call
    #: is refused at once, RESOURCE_EXHAUSTED, rather than queued
    max_calls: int | None = None


class CallInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        observers: list[Observer] | None = None,
        auth: TokenAuth | None = None,
        limits: CallLimits | None = None,
        tracing: aio.ServerInterceptor[Any, Any] | None = None,
        pool: futures.ThreadPoolExecutor | None = None,
    ) -> None:
        self._observers = observers or []
        #: OpenTelemetry's server interceptor (None when tracing is off), applied around ours
        self._tracing = tracing
        self._auth = auth
        self._limits = limits
        #: where blocking behaviours run (None: `rpc.blocking`'s own small pool)
        self._pool = pool
        self._connections = (
            _PerConnection(limits.content_streams_per_connection) if limits else None
        )
        self._infra_limit = limits.infra_streams if limits else 0
        self._infra_streams = threading.BoundedSemaphore(self._infra_limit) if limits else None
        self._infra_connections = (
            _PerConnection(limits.infra_streams_per_connection, _reflection_per_connection)
            if limits
            else None
        )
        #: stream messages waiting to be sent, each call ended past `send_timeout`
        self._sends = _SendWatch(limits.send_timeout) if limits else None
        self._max_calls = limits.max_calls if limits else None
        #: business calls running now (all on the event loop thread: a plain count)
        self._running = 0
        self._idle_timeout = limits.infra_idle_timeout if limits else None
        # Wrapped handlers by method: grpc asks on every call, and building the wrappers anew
        # each time showed up in the warm-Load profile. Handlers are fixed once the server runs.
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = self._wrap_behaviour(await continuation(details), details.method)
            if wrapped is not None and self._tracing is not None:
                wrapped = await _traced(self._tracing, wrapped, details)
            if wrapped is not None:
                self._wrapped[details.method] = wrapped
        return wrapped

    def _wrap_behaviour(self, handler: Any, method: str) -> Any:
        """Every handler kind through the same path (auth, limits, error mapping, log line):
        unary and client-streaming requests as `unary`, server and bidi streams as `stream`."""
        if handler is None:
            return None
        if handler.unary_unary is not None or handler.stream_unary is not None:
            return self._wrap_unary(handler, method)
        if handler.unary_stream is not None or handler.stream_stream is not None:
            return self._wrap_stream(handler, method)
        # A handler with no behaviour grpc knows: refuse to serve it rather than pass it by.
        raise TypeError(f"{method}: a method handler of no kind grpc defines: {handler!r}")

    def _wrap_unary(self, handler: Any, method: str) -> Any:
        # Client streams (none in our service today) get no request for auth to inspect:
        # their requests have not arrived when the call is admitted.
        streamed_request = handler.stream_unary is not None
        inner = handler.stream_unary if streamed_request else handler.unary_unary
        on_loop = inspect.iscoroutinefunction(inner)
        serialize = handler.response_serializer
        deserialize = handler.request_deserializer

        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> bytes:
            call = self._begin(context, method)
            started, code = time.perf_counter(), "OK"
            try:
                request = _request(deserialize, request, streamed=streamed_request)
                self._authorize(method, call, None if streamed_request else request)
                self._admit_call(method)
                if on_loop:
                    response = await inner(request, context)
                else:
                    sync = blocking.SyncContext(context)
                    if streamed_request:
                        request = blocking.SyncRequests(request, asyncio.get_running_loop())
                    # Serialized there too (off the loop), not by grpc after we return: a
                    # response that cannot be serialized, or is over the send limit, then
                    # fails where it is logged.
                    try:
                        return await blocking.Steps(blocking.pool()).run(  # type: ignore[no-any-return]
                            _respond, inner, request, sync, serialize, method
                        )
                    finally:
                        sync.end()
                return _serialized(response, serialize, method)
            except asyncio.CancelledError:
                code = "CANCELLED"  # the client went away, or the server is stopping
                raise
            except aio.AbortError:
                code = _code_name(context)  # an async behaviour ended the call itself
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to its status
                code, status = self._failure(exc, method, call)
                _set_status(context, *status)
                return b""  # grpc sends the status set, not this
            finally:
                self._end(method, code, started, call)

        make = (
            grpc.stream_unary_rpc_method_handler
            if streamed_request
            else grpc.unary_unary_rpc_method_handler
        )
        return make(unary, None, None)  # requests parsed in the call: `_parsed`

    def _wrap_stream(self, handler: Any, method: str) -> Any:
        # Server streams (Load, Scan, health Watch) and bidi streams (reflection) alike.
        bidi = handler.stream_stream is not None
        inner = handler.stream_stream if bidi else handler.unary_stream
        make = (
            grpc.stream_stream_rpc_method_handler if bidi else grpc.unary_stream_rpc_method_handler
        )
        if inspect.iscoroutinefunction(inner):
            # A behaviour that writes its messages itself (grpcio's health Watch, which sends
            # only when the status changes): no message of ours to watch or check.
            return make(
                self._writer(inner, method, bidi, handler.request_deserializer),
                None,  # parsed in the call: `_parsed`
                handler.response_serializer,
            )
        on_loop = inspect.isasyncgenfunction(inner)
        infra = method.startswith(_INFRA)
        serialize = handler.response_serializer or _as_bytes
        deserialize = handler.request_deserializer

        def source(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            if on_loop:
                return inner(request, context)  # type: ignore[no-any-return]
            if bidi:
                request = blocking.SyncRequests(request, asyncio.get_running_loop())
            return blocking.stepped(inner, request, context, serialize)

        async def stream(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            # An async generator, as grpc's stream behaviours (and OpenTelemetry's wrapper around
            # them) are, that writes its messages itself, so that each write can be watched
            # (`_SendWatch`).
            call = self._begin(context, method)
            end = _End(self, method, call)
            stalled: list[PkgloaderError] = []
            watch = self._sends
            try:
                request = _request(deserialize, request, streamed=bidi)
                self._authorize(method, call, None if bidi else request)
                self._admit_call(method)
                end.release = self._admit(method, request, context)
                if bidi and infra and self._idle_timeout is not None:
                    # Reflection: a stream whose client sends nothing is ended, not kept.
                    request = _awaited(request, self._idle_timeout, stalled)
                end.items = items = source(request, context)
                first = True
                async for item in items:
                    if first:
                        # The metadata of a Load or LoadTree comes first, in one message:
                        # refused here, where it is logged, not by grpc after we yield.
                        first = False
                        _check_first(item, method)
                    if watch is None:
                        sent = await _written(context, item)
                    else:
                        watch.waiting(end)
                        sent = await _written(context, item)
                        watch.sent(end)
                        if end.stalled is not None:
                            # The watch ended this call while the message waited; the client
                            # has read it now, and is told how the call ended.
                            _set_status(context, *_error_status(end.stalled))
                            return
                    if not sent:
                        end.code = "CANCELLED"
                        return
            except (GeneratorExit, asyncio.CancelledError):
                end.code = "CANCELLED"  # the client went away mid-stream
                raise
            except aio.AbortError:
                end.code = _code_name(context)
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to its status
                if stalled:
                    # The idle timeout ended the stream: the end this server chose, logged as
                    # such, not an INTERNAL.
                    error = stalled[0]
                    call.error, call.reason = error.message, error.reason
                    end.code = "CANCELLED"
                    _set_status(context, *_error_status(error))
                    return
                end.code, status = self._failure(exc, method, call)
                _set_status(context, *status)
            finally:
                if watch is not None:
                    watch.sent(end)  # a write cancelled (server stop) is not waiting any more
                try:
                    await end.close()  # the behaviour's own `finally` blocks, before the log
                finally:
                    end.done()
            if False:  # pragma: no cover - makes this function an async generator
                yield

        return make(stream, None, handler.response_serializer)  # requests: `_parsed`

    def _writer(
        self,
        inner: Callable[..., Awaitable[None]],
        method: str,
        bidi: bool,
        deserialize: Callable[[bytes], Any] | None,
    ) -> Any:
        async def writer(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
            call = self._begin(context, method)
            started, code = time.perf_counter(), "OK"
            try:
                request = _request(deserialize, request, streamed=bidi)
                self._authorize(method, call, None if bidi else request)
                await inner(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"  # such a stream ends when the client leaves
                raise
            except aio.AbortError:
                code = _code_name(context)
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to its status
                code, status = self._failure(exc, method, call)
                _set_status(context, *status)
            finally:
                self._end(method, code, started, call)

        return writer

    def _admit(
        self, method: str, request: Any, context: aio.ServicerContext[Any, Any]
    ) -> Callable[[], None] | None:
        """Take a place among the streams of its kind, or raise TooManyStreams. Returns what
        gives the place back (None: the call is not limited)."""
        if self._connections is None or self._infra_streams is None:
            return None
        if method.startswith(_INFRA):
            assert self._infra_connections is not None
            # This connection's share first: one client holding streams idle cannot take the
            # places another connection's grpcurl needs (and idle ones end, `_awaited`).
            leave = self._infra_connections.enter(context.peer())
            if not self._infra_streams.acquire(blocking=False):
                leave()
                raise TooManyStreams(
                    f"{self._infra_limit} reflection streams are open, the most this server "
                    "allows at once; try again when one is closed",
                    limit=str(self._infra_limit),
                )
            infra = self._infra_streams

            def release() -> None:
                infra.release()
                leave()

            return release
        is_content = _CONTENT_STREAMS.get(method)
        if is_content is None or not is_content(request):
            return None
        return self._connections.enter(context.peer())

    def _admit_call(self, method: str) -> None:
        """Refuse a business call beyond `max_calls` running (grpcio's own
        `maximum_concurrent_rpcs` queues calls instead, and costs a task per call). Health and
        reflection are neither counted nor refused."""
        if (
            self._max_calls is not None
            and self._running > self._max_calls
            and not method.startswith(_INFRA)
        ):
            raise TooManyStreams(
                f"{self._max_calls} calls are running on this server, the most it takes at "
                "once; try again shortly",
                limit=str(self._max_calls),
            )

    def _authorize(self, method: str, call: CallRecord, request: Any) -> None:
        if self._auth is not None:
            role = self._auth.check(method, call.metadata, request)
            if role is not None:
                call.role = role

    def _begin(self, context: aio.ServicerContext[Any, Any], method: str) -> CallRecord:
        """Open the call's record and make it current in the call's task (grpcio's asyncio
        server runs each call in a task of its own, with its own copy of the context).

        The one place a call starts: a tracing hook opens its span here and writes its ids into
        the record (`trace_id`, `span_id`), so every log line carries them."""
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get("x-request-id")
        if not isinstance(request_id, str) or not request_id or len(request_id) > 128:
            request_id = f"{_PROCESS_ID}-{next(_SEQUENCE):x}"
        call = CallRecord(method=method, request_id=request_id, metadata=metadata)
        if not method.startswith(_INFRA):
            self._running += 1  # given back in `_end`
        calls.bind(call)
        if self._pool is not None:
            blocking.bind_pool(self._pool)
        return call

    @staticmethod
    def _failure(
        exc: Exception, method: str, call: CallRecord
    ) -> tuple[str, tuple[grpc.StatusCode, str, tuple[Any, ...]]]:
        """The status for `exc`: the code's name for the log line, and the status's code,
        details and trailing metadata (`grpc-status-details-bin`)."""
        if isinstance(exc, blocking.Aborted):
            # A blocking behaviour called abort (or set a code) itself.
            return exc.code.name, (exc.code, exc.details, exc.trailing_metadata)
        if isinstance(exc, PkgloaderError):
            call.error = exc.message
            call.reason = exc.reason
            status, name = to_status(exc), code_for(exc).name
        else:
            log.error(
                "unexpected error in %s",
                method,
                exc_info=exc,
                extra={"request_id": call.request_id},
            )
            status, name = internal_status(), "INTERNAL"
        return name, (status.code, status.details, tuple(status.trailing_metadata or ()))

    def _end(self, method: str, code: str, started: float, call: CallRecord) -> None:
        call.seconds = time.perf_counter() - started
        if not method.startswith(_INFRA):
            self._running -= 1
        call.code = code
        if self._tracing is not None:
            _note_trace(call)
        # Health checks and reflection come every few seconds from probes: keep them at DEBUG.
        level = logging.DEBUG if method.startswith("/grpc.") else logging.INFO
        if log.isEnabledFor(level):
            logs.emit(log, level, "rpc", call.log_fields())
        for observe in self._observers:
            observe(call)


class _End:
    """How a stream call ends: its code, the place it gives back, its behaviour closed, its log
    line, exactly once (by the call itself, or by `_SendWatch` while a message waits)."""

    __slots__ = (
        "call",
        "closing",
        "code",
        "context",
        "interceptor",
        "items",
        "method",
        "release",
        "stalled",
        "started",
    )

    def __init__(self, interceptor: CallInterceptor, method: str, call: CallRecord) -> None:
        self.interceptor = interceptor
        self.method = method
        self.call = call
        self.code = "OK"
        self.started = time.perf_counter()
        self.release: Callable[[], None] | None = None
        #: the behaviour's messages, until closed
        self.items: AsyncIterator[Any] | None = None
        #: the task closing them, when `expire` started it
        self.closing: asyncio.Task[None] | None = None
        #: why the watch ended the call (its status details), once it has
        self.stalled: PkgloaderError | None = None
        #: the call's context (its record, its span), for closing it from the watch's timer
        self.context = contextvars.copy_context()

    async def close(self) -> None:
        """Close the behaviour (its `finally` blocks run), once."""
        if self.closing is not None:
            await self.closing
            return
        items, self.items = self.items, None
        await _closed(items)

    def expire(self, error: PkgloaderError) -> None:
        """End the call now, as `error` says, while its message still waits to be sent: the
        behaviour is closed, the call's places given back and its line logged."""
        self.call.error, self.call.reason = error.message, error.reason
        self.code = "CANCELLED"
        self.stalled = error
        items, self.items = self.items, None
        self.closing = asyncio.get_running_loop().create_task(
            self._expired(items), context=self.context
        )

    async def _expired(self, items: AsyncIterator[Any] | None) -> None:
        try:
            await _closed(items)
        except Exception:  # the call has ended: there is no client to send it to
            log.exception("closing %s after its send stalled", self.method)
        finally:
            self.done()

    def done(self) -> None:
        if self.started < 0:
            return
        release, self.release = self.release, None
        if release is not None:
            release()
        self.interceptor._end(self.method, self.code, self.started, self.call)
        self.started = -1.0


class _SendWatch:
    """The stream messages waiting to be sent, and one timer that ends each call whose message
    has waited `timeout` seconds: a client that stops reading grants no flow-control window, and
    the send would otherwise wait as long as the connection lives, holding the call's places.

    A waiting write is never cancelled. grpcio's asyncio server marks a call's headers sent
    only when the write carrying them completes: after a cancelled first write, the status it
    sends would carry the headers again, core refuses that batch, and the client never learns
    how the call ended. (Sending the headers alone first would avoid that, at the cost of a
    batch on every call, a sixth of the warm Load rate; a deadline per write cost a timer
    each.) So the call is ended from our side (`_End.expire`): its behaviour is closed, its
    places freed, its line logged; what stays is grpc's task, holding the one message until the
    client reads again (and then gets CANCELLED after it) or the connection closes, at most
    `grpc.max_concurrent_streams` such calls per connection."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: how often the timer looks: a stalled call ends within timeout + tick
        self._tick = min(1.0, timeout / 4)
        #: call -> when its message began to wait (time.monotonic)
        self._waiting: dict[_End, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def waiting(self, end: _End) -> None:
        self._waiting[end] = time.monotonic()
        if self._timer is None:
            # In a context of its own: not the call's that happened to arm it.
            self._timer = asyncio.get_running_loop().call_later(
                self._tick, self._sweep, context=contextvars.Context()
            )

    def sent(self, end: _End) -> None:
        self._waiting.pop(end, None)

    def _sweep(self) -> None:
        # Armed only while messages wait: an idle server has no timer.
        self._timer = None
        since = time.monotonic() - self.timeout
        late = [end for end, began in self._waiting.items() if began <= since]
        for end in late:
            del self._waiting[end]
            end.expire(_send_stalled(self.timeout))
        if self._waiting:
            self._timer = asyncio.get_running_loop().call_later(
                self._tick, self._sweep, context=contextvars.Context()
            )


def _as_bytes(item: Any) -> bytes:
    return bytes(item)


def _parsed(deserialize: Callable[[bytes], Any] | None, raw: Any) -> Any:
    """A request message from its bytes, parsed in the call: a request that is not a valid
    message is INVALID_ARGUMENT, logged and counted like any bad request. (Left to grpc, the
    parse fails before the call starts: UNKNOWN with a Python class name in its details, a
    traceback in the log, no access-log line and no metrics.)"""
    if deserialize is None:
        return raw
    try:
        return deserialize(raw)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or a custom parser's
        raise InvalidRequest(f"the request is not a valid message: {exc}") from None


def _request(deserialize: Callable[[bytes], Any] | None, request: Any, *, streamed: bool) -> Any:
    """The call's request parsed (`_parsed`), or a client stream's requests, each parsed."""
    if deserialize is None:
        return request
    return _parse_each(deserialize, request) if streamed else _parsed(deserialize, request)


async def _parse_each(deserialize: Callable[[bytes], Any], requests: Any) -> AsyncIterator[Any]:
    async for raw in requests:
        yield _parsed(deserialize, raw)


async def _written(context: aio.ServicerContext[Any, Any], item: Any) -> bool:
    """Write `item`; False when the call can no longer send (the client left, the server is
    stopping): the end of a call, not an error of ours to log."""
    try:
        await context.write(item)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - grpc's ExecuteBatchError, UsageError and kin
        return False
    return True


def _respond(
    behaviour: Callable[..., Any],
    request: Any,
    context: blocking.SyncContext,
    serialize: Callable[[Any], bytes] | None,
    method: str,
) -> bytes:
    """A blocking unary behaviour's response, serialized and checked, on the pool."""
    try:
        response = behaviour(request, context)
    except NotImplementedError as exc:
        # A generated servicer base's answer (see `SyncContext.pending_status`); any other
        # exception keeps its own status, and an unexpected one its log line.
        status = context.pending_status()
        if status is None:
            raise
        raise status from exc
    status = context.pending_status()
    if status is not None:
        raise status
    return _serialized(response, serialize, method)


def _set_status(
    context: aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    details: str,
    trailing_metadata: tuple[Any, ...],
) -> None:
    """The call's status, sent by grpc once the behaviour has returned. Not `abort`, which
    sends it at once: then the client could see the end of a call before its span had ended
    and its line been logged."""
    context.set_code(code)
    context.set_details(details)
    if trailing_metadata:
        context.set_trailing_metadata(trailing_metadata)


async def _closed(items: AsyncIterator[Any] | None) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


def _code_name(context: aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _content_per_connection(limit: int) -> TooManyStreams:
    return TooManyStreams(
        f"this connection already has {limit} content streams (content Loads "
        "and Scans) running, the most the server allows per connection; read one "
        "to its end first, or open another connection",
        limit=str(limit),
    )


def _reflection_per_connection(limit: int) -> TooManyStreams:
    return TooManyStreams(
        f"this connection already has {limit} reflection streams open, the most the server "
        "allows per connection; close one first",
        limit=str(limit),
    )


class _PerConnection:
    """Streams of one kind running per HTTP/2 connection, each named by its `context.peer()`."""

    def __init__(
        self, limit: int, refuse: Callable[[int], TooManyStreams] = _content_per_connection
    ) -> None:
        self.limit = limit
        self._refuse = refuse
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()

    def enter(self, peer: str) -> Callable[[], None]:
        with self._lock:
            if self._running[peer] >= self.limit:
                raise self._refuse(self.limit)
            self._running[peer] += 1

        def leave() -> None:
            with self._lock:
                self._running[peer] -= 1
                if self._running[peer] <= 0:
                    del self._running[peer]

        return leave


# --- tracing hook (issue 13.1) ---------------------------------------------------------------


async def _traced(
    tracing: aio.ServerInterceptor[Any, Any],
    wrapped: Any,
    details: grpc.HandlerCallDetails,
) -> Any:
    """`wrapped` inside OpenTelemetry's server interceptor, so its SERVER span is current
    while ours runs (and logs). Applied here, once per method and cached with our wrapper,
    rather than listed beside us. A stream that writes its own messages (health Watch) is left
    alone: the instrumentation iterates streams, and a Watch lasts as long as the client
    watches."""
    behaviours = (wrapped.unary_stream, wrapped.stream_stream)
    if any(b is not None and inspect.iscoroutinefunction(b) for b in behaviours):
        return wrapped

    async def continuation(_details: grpc.HandlerCallDetails) -> Any:
        return wrapped

    return await tracing.intercept_service(continuation, details)


def _note_trace(call: CallRecord) -> None:
    """The call's trace and span id into its record (so its access-log line leads to its
    trace), and its status onto its span (also where a blocking behaviour or the interceptor
    set it without the instrumentation's context wrapper seeing it)."""
    span = trace.get_current_span()  # the SERVER span `_traced` opened around this call
    ids = span.get_span_context()
    if not ids.is_valid:
        return
    call.trace_id = trace.format_trace_id(ids.trace_id)
    call.span_id = trace.format_span_id(ids.span_id)
    if call.code != "OK" and span.is_recording():
        status = grpc.StatusCode[call.code]
        span.set_attribute("rpc.grpc.status_code", status.value[0])
        span.set_status(trace.StatusCode.ERROR, call.code)


def _error_status(error: PkgloaderError) -> tuple[grpc.StatusCode, str, tuple[Any, ...]]:
    """How the server ending a call itself (`SendStalled`, `StreamIdle`) is told to its client:
    the mapped code and details, with the ErrorInfo every error of ours carries."""
    status = to_status(error)
    return status.code, status.details, tuple(status.trailing_metadata or ())


def _send_stalled(timeout: float) -> PkgloaderError:
    return SendStalled(
        f"a response message waited more than {timeout:g} s to be sent (the "
        "client stopped reading); the server cancelled the call"
    )


def _idle_stream(timeout: float) -> PkgloaderError:
    return StreamIdle(
        f"the stream sent no request for {timeout:g} s; the server ended it to free its place "
        "(reflection streams are few)"
    )


async def _awaited(
    requests: AsyncIterator[Any], timeout: float, stalled: list[PkgloaderError]
) -> AsyncIterator[Any]:
    """`requests`, each awaited at most `timeout` seconds: a stream whose client sends nothing
    for that long is ended (the error is kept in `stalled`)."""
    iterator = aiter(requests)
    while True:
        try:
            async with asyncio.timeout(timeout):
                item = await anext(iterator, _END)
        except TimeoutError:
            stalled.append(_idle_stream(timeout))
            raise
        if item is _END:
            return
        yield item


def _too_large(what: str, size: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"{what} would be {size} bytes, larger than {MAX_RESPONSE_BYTES} bytes (4 MiB), the most "
        "a gRPC client accepts by default; it was not sent",
        limit=str(MAX_RESPONSE_BYTES),
        size=str(size),
    )


def _serialized(response: Any, serialize: Callable[[Any], bytes] | None, method: str) -> bytes:
    data = response if serialize is None else serialize(response)
    if len(data) > MAX_RESPONSE_BYTES:
        raise _too_large(f"the {method.rsplit('/', 1)[-1]} response", len(data))
    return bytes(data)


def _check_first(item: Any, method: str) -> None:
    """A stream's first message (a Load's or LoadTree's package metadata) within the limit."""
    size = item.ByteSize() if hasattr(item, "ByteSize") else len(item)
    if size > MAX_RESPONSE_BYTES:
        raise _too_large(f"the first message of the {method.rsplit('/', 1)[-1]} stream", size)
