"""Cross-cutting concerns of every RPC, in one place: error mapping, the access log, metrics,
and the server's concurrency limits (`CallLimits`).

Servicer methods raise domain errors and return; this wraps every handler, of every kind, so that
each error is mapped once (`status.to_status`), every call is authenticated (when auth is on) and
logs one structured line from its typed `CallRecord` (`rpc.calls`), and an unexpected exception is
logged with its traceback and sent as a bare INTERNAL.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import trace
from pkgloader_client import SERVICE_NAME

from pkgloader import logs
from pkgloader.errors import (
    PkgloaderError,
    ResponseTooLarge,
    SendStalled,
    StreamIdle,
    TooManyStreams,
)
from pkgloader.rpc import calls
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
#: `contextvars.Context.run` of the call's context: runs a callable where the call is current.
_Run = Callable[..., Any]

#: Streams of bulk data, limited per connection: method -> "is this request one?".
_CONTENT_STREAMS: dict[str, Callable[[Any], bool]] = {
    f"/{SERVICE_NAME}/Load": lambda request: bool(request.include_content),
    f"/{SERVICE_NAME}/Scan": lambda request: True,
}
#: gRPC's own services (health, reflection): served by `CallLimits.infra_pool`.
_INFRA = "/grpc."


@dataclass(frozen=True)
class CallLimits:
    """The server's concurrency limits, enforced per call (see `app.create_server`)."""

    #: content Loads and Scans one HTTP/2 connection (one `context.peer()`) may have running
    content_streams_per_connection: int
    #: seconds one streamed message may wait to be sent before the call is cancelled
    send_timeout: float
    #: the threads of gRPC's own services; business calls never run there
    infra_pool: futures.ThreadPoolExecutor
    #: long-lived streams (reflection) on those threads at once: the rest stay for health Check
    infra_streams: int
    #: of those, what one connection may hold: one client cannot take them all
    infra_streams_per_connection: int = 1
    #: seconds such a stream may wait for its next request before the server ends it (grpcurl
    #: sends its requests at once; a client holding a stream open idle frees its place)
    infra_idle_timeout: float = 10.0


class CallInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        observers: list[Observer] | None = None,
        auth: TokenAuth | None = None,
        limits: CallLimits | None = None,
        tracing: grpc.ServerInterceptor | None = None,  # type: ignore[type-arg]
    ) -> None:
        self._observers = observers or []
        #: OpenTelemetry's server interceptor (None when tracing is off), applied around ours
        self._tracing = tracing
        self._auth = auth
        self._limits = limits
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
        self._watchdog = SendWatchdog(limits.send_timeout) if limits else None
        self._idle_watchdog = (
            SendWatchdog(limits.infra_idle_timeout, _idle_stream) if limits else None
        )
        # Wrapped handlers by method: grpc asks on every call, and building the wrappers anew
        # each time showed up in the warm-Load profile. Handlers are fixed once the server runs.
        self._wrapped: dict[str, Any] = {}

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = self._wrap(continuation(details), details.method, details)
            if wrapped is not None:
                self._wrapped[details.method] = wrapped
        return wrapped

    def _wrap(self, handler: Any, method: str, details: grpc.HandlerCallDetails) -> Any:
        wrapped = self._wrap_behaviour(handler, method)
        if wrapped is not None and self._tracing is not None:
            wrapped = _traced(self._tracing, wrapped, details)
        if wrapped is not None and self._limits is not None and method.startswith(_INFRA):
            # grpcio runs a behaviour that names a pool of its own there (the seam grpcio's
            # HealthServicer uses for Watch): health answers however busy the business pool is.
            behaviour = next(
                b
                for b in (wrapped.unary_unary, wrapped.unary_stream, wrapped.stream_stream)
                if b is not None
            )
            setattr(behaviour, "experimental_thread_pool", self._limits.infra_pool)  # noqa: B010
        return wrapped

    def _wrap_behaviour(self, handler: Any, method: str) -> Any:
        """Every handler kind through the same path (auth, limits, error mapping, log line):
        unary and client-streaming requests as `unary`, server and bidi streams as `stream`."""
        if handler is None:
            return None
        if handler.unary_stream is not None and getattr(
            handler.unary_stream, "experimental_non_blocking", False
        ):
            return self._wrap_non_blocking(handler, method)
        if handler.unary_unary is not None or handler.stream_unary is not None:
            # Client streams (none in our service today) get no request for auth to inspect:
            # their requests have not arrived when the call is admitted.
            streamed_request = handler.stream_unary is not None
            inner_u = handler.stream_unary if streamed_request else handler.unary_unary
            serialize = handler.response_serializer

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                call, run = self._begin(context, method)
                started, code = time.perf_counter(), "OK"
                try:
                    self._authorize(method, call, None if streamed_request else request)
                    # Serialized here, not by grpc after we return: a response that cannot be
                    # serialized, or is over the send limit, then fails where it is logged.
                    return _serialized(run(inner_u, request, context), serialize, method)
                except Exception as exc:
                    code = self._fail(exc, context, method, call)
                    raise
                finally:
                    self._end(method, code, started, call)

            make_u = (
                grpc.stream_unary_rpc_method_handler
                if streamed_request
                else grpc.unary_unary_rpc_method_handler
            )
            return make_u(unary, handler.request_deserializer, None)
        if handler.unary_stream is not None or handler.stream_stream is not None:
            # Server streams (Load, Scan, health Watch) and bidi streams (reflection) alike.
            bidi = handler.stream_stream is not None
            inner_s = handler.stream_stream if bidi else handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call, run = self._begin(context, method)
                started, code = time.perf_counter(), "OK"
                release: Callable[[], None] | None = None
                watched: _Watched | None = None
                idle: _Watched | None = None
                items: Iterator[Any] | None = None
                try:
                    self._authorize(method, call, None if bidi else request)
                    release = self._admit(method, request, context)
                    if bidi and self._idle_watchdog is not None and method.startswith(_INFRA):
                        # Reflection: a stream whose client sends nothing is ended, not kept.
                        idle = self._idle_watchdog.watch(context)
                        request = _awaited(request, idle)
                    # Each step of the servicer's generator runs in the call's context, on
                    # whichever worker thread grpc resumes us: `calls.current()` is this call.
                    items = run(inner_s, request, context)
                    watchdog = self._watchdog
                    if watchdog is not None:
                        watched = watchdog.watch(context)
                    first = True
                    while True:
                        try:
                            item = run(next, items)
                        except StopIteration:
                            break
                        if first:
                            # The metadata of a Load or LoadTree comes first, in one message:
                            # refused here, where it is logged, not by grpc after we yield.
                            first = False
                            _check_first(item, method)
                        if watched is not None:
                            # Suspended here, grpc is sending `item` from this thread.
                            watched.since = time.monotonic()
                            yield item
                            watched.since = None
                        else:
                            yield item
                except GeneratorExit:
                    code = "CANCELLED"  # the client went away mid-stream
                    # What `yield from` did: close the servicer's generator (its `finally`
                    # blocks run), in the call's context.
                    close = getattr(items, "close", None)
                    if close is not None:
                        run(close)
                    raise
                except Exception as exc:
                    if idle is not None and idle.stalled is not None:
                        # The request iterator fails once the idle watchdog cancelled the call:
                        # the end this server chose, logged as such below, not an INTERNAL.
                        return
                    code = self._fail(exc, context, method, call)
                    raise
                finally:
                    for dog, entry in ((self._watchdog, watched), (self._idle_watchdog, idle)):
                        if entry is None or dog is None:
                            continue
                        dog.forget(entry)
                        if entry.stalled is not None:
                            code = "CANCELLED"
                            call.error = entry.stalled.message
                            call.reason = entry.stalled.reason
                    if release is not None:
                        release()
                    if code == "OK" and not context.is_active():
                        code = "CANCELLED"
                    self._end(method, code, started, call)

            make = (
                grpc.stream_stream_rpc_method_handler
                if bidi
                else grpc.unary_stream_rpc_method_handler
            )
            return make(stream, handler.request_deserializer, handler.response_serializer)
        # A handler with no behaviour grpc knows: refuse to serve it rather than pass it by.
        raise TypeError(f"{method}: a method handler of no kind grpc defines: {handler!r}")

    def _wrap_non_blocking(self, handler: Any, method: str) -> Any:
        """A behaviour that returns at once and sends later through a callback (health Watch):
        it holds no thread while it waits, and keeps doing so wrapped."""
        inner = handler.unary_stream

        def watch(
            request: Any,
            context: grpc.ServicerContext,
            send_response_callback: Callable[[Any], None] | None = None,
        ) -> None:
            call, run = self._begin(context, method)
            started = time.perf_counter()
            try:
                self._authorize(method, call, request)
                run(inner, request, context, send_response_callback)
            except Exception as exc:
                self._end(method, self._fail(exc, context, method, call), started, call)
                raise
            # Such a stream ends when the client leaves or the server stops.
            if not context.add_callback(lambda: self._end(method, "OK", started, call)):
                self._end(method, "OK", started, call)

        setattr(watch, "experimental_non_blocking", True)  # noqa: B010 - grpcio's marker
        return grpc.unary_stream_rpc_method_handler(
            watch, handler.request_deserializer, handler.response_serializer
        )

    def _admit(
        self, method: str, request: Any, context: grpc.ServicerContext
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

    def _authorize(self, method: str, call: CallRecord, request: Any) -> None:
        if self._auth is not None:
            role = self._auth.check(method, call.metadata, request)
            if role is not None:
                call.role = role

    @staticmethod
    def _begin(context: grpc.ServicerContext, method: str) -> tuple[CallRecord, _Run]:
        """Open the call's record and the context the handler runs in (where it is current).

        The one place a call starts: a tracing hook opens its span here and writes its ids into
        the record (`trace_id`, `span_id`), so every log line carries them."""
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get("x-request-id")
        if not isinstance(request_id, str) or not request_id or len(request_id) > 128:
            request_id = f"{_PROCESS_ID}-{next(_SEQUENCE):x}"
        call = CallRecord(method=method, request_id=request_id, metadata=metadata)
        # A copy of the worker thread's context (O(1)): what other layers keep there stays
        # visible, and what the call sets there stays with the call.
        scope = contextvars.copy_context()
        scope.run(calls.bind, call)
        return call, scope.run

    @staticmethod
    def _fail(exc: Exception, context: grpc.ServicerContext, method: str, call: CallRecord) -> str:
        """Set the status for `exc` on the call; the caller re-raises, and grpc sends it."""
        if isinstance(exc, PkgloaderError):
            call.error = exc.message
            call.reason = exc.reason
            status = to_status(exc)
            code = code_for(exc).name
        else:
            log.error(
                "unexpected error in %s",
                method,
                exc_info=exc,
                extra={"request_id": call.request_id},
            )
            status, code = internal_status(), "INTERNAL"
        # abort_with_status records the status, then raises by design; the original exception
        # propagates instead, and grpc sends the recorded status.
        with contextlib.suppress(Exception):
            context.abort_with_status(status)
        return code

    def _end(self, method: str, code: str, started: float, call: CallRecord) -> None:
        call.seconds = time.perf_counter() - started
        call.code = code
        if self._tracing is not None:
            _note_trace(call)
        # Health checks and reflection come every few seconds from probes: keep them at DEBUG.
        level = logging.DEBUG if method.startswith("/grpc.") else logging.INFO
        if log.isEnabledFor(level):
            logs.emit(log, level, "rpc", call.log_fields())
        for observe in self._observers:
            observe(call)


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


class _Watched:
    """One streaming call under the watchdog's eye."""

    __slots__ = ("context", "since", "stalled")

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        #: time.monotonic() when the call handed grpc a message to send; None while it runs
        self.since: float | None = None
        #: set when the watchdog cancelled the call
        self.stalled: PkgloaderError | None = None


class SendWatchdog:
    """Cancels a streaming call whose message has waited `timeout` seconds to be sent.

    grpcio's sync server sends a streamed message from the worker thread that produced it, and
    that thread waits until the message is written. A client that stops reading (and so grants
    no flow-control window) would hold the thread until the connection closes, maybe forever.
    The stream wrapper marks when it hands grpc a message and when it is resumed; this thread,
    running only while there are streams, cancels (`RpcContext.cancel`) those waiting too long:
    the waiting send then fails and the worker is free. The client gets CANCELLED (in trailers,
    which flow control does not hold back) when it reads again; the access log says
    SEND_STALLED.
    """

    #: Ticks without a stream after which the thread ends (a new stream starts another).
    IDLE_TICKS = 30

    def __init__(
        self, timeout: float, stalled: Callable[[float], PkgloaderError] | None = None
    ) -> None:
        self.timeout = timeout
        #: the error a cancelled call is logged with (default: a send that waited too long)
        self._stalled = stalled or _send_stalled
        self._tick = min(1.0, timeout / 4)
        self._lock = threading.Lock()
        self._watched: dict[int, _Watched] = {}
        self._running = False

    def watch(self, context: grpc.ServicerContext) -> _Watched:
        entry = _Watched(context)
        with self._lock:
            self._watched[id(entry)] = entry
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="send-watchdog", daemon=True).start()
        return entry

    def forget(self, entry: _Watched) -> None:
        with self._lock:
            self._watched.pop(id(entry), None)

    def _run(self) -> None:
        idle = 0
        while True:
            time.sleep(self._tick)  # a period, not a synchronisation
            now = time.monotonic()
            with self._lock:
                if not self._watched:
                    idle += 1
                    if idle >= self.IDLE_TICKS:
                        self._running = False
                        return
                    continue
                idle = 0
                late = [
                    e
                    for e in self._watched.values()
                    if e.stalled is None and e.since is not None and now - e.since > self.timeout
                ]
            for entry in late:
                entry.stalled = self._stalled(self.timeout)
                entry.context.cancel()  # type: ignore[no-untyped-call]


# --- tracing hook (issue 13.1) ---------------------------------------------------------------


def _traced(
    tracing: grpc.ServerInterceptor,  # type: ignore[type-arg]
    wrapped: Any,
    details: grpc.HandlerCallDetails,
) -> Any:
    """`wrapped` inside OpenTelemetry's server interceptor, so its SERVER span is current
    while ours runs (and logs). Applied here, once per method and cached with our wrapper,
    rather than listed beside us: the thread-pool marker `_wrap` sets must be on the outermost
    behaviour. A non-blocking stream (health Watch) is left alone: the instrumentation would
    call it without its send callback, and it lasts as long as the client watches."""
    if wrapped.unary_stream is not None and getattr(
        wrapped.unary_stream, "experimental_non_blocking", False
    ):
        return wrapped
    return tracing.intercept_service(lambda _details: wrapped, details)


def _note_trace(call: CallRecord) -> None:
    """The call's trace and span id into its record (so its access-log line leads to its
    trace), and its status onto its span: the instrumentation sees only `abort`, and `_fail`
    uses `abort_with_status`."""
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


def _awaited(requests: Iterator[Any], watched: _Watched) -> Iterator[Any]:
    """`requests`, with `watched.since` set while the next one is awaited: the watchdog ends a
    stream whose client sends nothing for its timeout."""
    iterator = iter(requests)
    while True:
        watched.since = time.monotonic()
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            watched.since = None
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
