"""Cross-cutting concerns of every RPC, in one place: error mapping, the access log, metrics.

Servicer methods raise domain errors and return; this wraps every handler so that each error is
mapped once (`status.to_status`), every call logs one structured line, and an unexpected
exception is logged with its traceback and sent as a bare INTERNAL.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from pkgloader.errors import PkgloaderError, ResourceExhausted
from pkgloader.rpc.auth import TokenAuth
from pkgloader.rpc.status import code_for, internal_status, to_status

log = logging.getLogger("pkgloader.access")

# Generated request ids: unique per process start, then a counter (uuid4 per call costs an
# os.urandom call on every RPC; these only need to be unique, not unguessable).
_PROCESS_ID = uuid.uuid4().hex[:12]
_SEQUENCE = itertools.count(1)

#: The server's grpc.max_send_message_length (app.SERVER_OPTIONS; a test keeps the two equal).
MAX_RESPONSE_BYTES = 8 * 1024 * 1024

#: Called once per finished RPC with (method, code name, seconds, the servicer's log fields).
Observer = Callable[[str, str, float, dict[str, Any]], None]


class CallContext:
    """Per-call facts the servicer adds for the access log (package id, hash, source, bytes)."""

    __slots__ = ("fields", "metadata")

    def __init__(self, metadata: dict[str, Any]) -> None:
        self.fields: dict[str, Any] = {}
        self.metadata = metadata


class CallInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self, observers: list[Observer] | None = None, auth: TokenAuth | None = None
    ) -> None:
        self._observers = observers or []
        self._auth = auth
        # Wrapped handlers by method: grpc asks on every call, and building the wrappers anew
        # each time showed up in the warm-Load profile. Handlers are fixed once the server runs.
        self._wrapped: dict[str, Any] = {}

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = self._wrap(continuation(details), details.method)
            if wrapped is not None:
                self._wrapped[details.method] = wrapped
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        if handler is None:
            return None
        if handler.unary_unary is not None:
            inner_uu, serialize = handler.unary_unary, handler.response_serializer

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                call = self._begin(context)
                started, code = time.perf_counter(), "OK"
                try:
                    self._authorize(method, call, request)
                    # Serialized here, not by grpc after we return: a response that cannot be
                    # serialized, or is over the send limit, then fails where it is logged.
                    return _serialized(inner_uu(request, context), serialize)
                except Exception as exc:
                    code = self._fail(exc, context, method, call)
                    raise
                finally:
                    self._end(method, code, started, call)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, None)
        if handler.unary_stream is not None or handler.stream_stream is not None:
            # Server streams (Load, Scan, health Watch) and bidi streams (reflection) alike.
            bidi = handler.stream_stream is not None
            inner_s = handler.stream_stream if bidi else handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call = self._begin(context)
                started, code = time.perf_counter(), "OK"
                try:
                    self._authorize(method, call, None if bidi else request)
                    yield from inner_s(request, context)
                except GeneratorExit:
                    code = "CANCELLED"  # the client went away mid-stream
                    raise
                except Exception as exc:
                    code = self._fail(exc, context, method, call)
                    raise
                finally:
                    if code == "OK" and not context.is_active():
                        code = "CANCELLED"
                    self._end(method, code, started, call)

            make = (
                grpc.stream_stream_rpc_method_handler
                if bidi
                else grpc.unary_stream_rpc_method_handler
            )
            return make(stream, handler.request_deserializer, handler.response_serializer)
        return handler

    def _authorize(self, method: str, call: CallContext, request: Any) -> None:
        if self._auth is not None:
            role = self._auth.check(method, call.metadata, request)
            if role is not None:
                call.fields["role"] = role

    @staticmethod
    def _begin(context: grpc.ServicerContext) -> CallContext:
        metadata = dict(context.invocation_metadata() or ())
        call = CallContext(metadata)
        request_id = metadata.get("x-request-id")
        if not isinstance(request_id, str) or not request_id or len(request_id) > 128:
            request_id = f"{_PROCESS_ID}-{next(_SEQUENCE):x}"
        call.fields["request_id"] = request_id
        setattr(context, "pkgloader_call", call)  # noqa: B010 - the servicer adds its facts here
        return call

    @staticmethod
    def _fail(exc: Exception, context: grpc.ServicerContext, method: str, call: CallContext) -> str:
        """Set the status for `exc` on the call; the caller re-raises, and grpc sends it."""
        if isinstance(exc, PkgloaderError):
            call.fields["error"] = exc.message
            call.fields["reason"] = exc.reason
            status = to_status(exc)
            code = code_for(exc).name
        else:
            log.error(
                "unexpected error in %s",
                method,
                exc_info=exc,
                extra={"request_id": call.fields["request_id"]},
            )
            status, code = internal_status(), "INTERNAL"
        # abort_with_status records the status, then raises by design; the original exception
        # propagates instead, and grpc sends the recorded status.
        with contextlib.suppress(Exception):
            context.abort_with_status(status)
        return code

    def _end(self, method: str, code: str, started: float, call: CallContext) -> None:
        seconds = time.perf_counter() - started
        # Health checks and reflection come every few seconds from probes: keep them at DEBUG.
        level = logging.DEBUG if method.startswith("/grpc.") else logging.INFO
        log.log(
            level,
            "rpc",
            extra={
                "method": method,
                "status": code,
                "duration_ms": round(seconds * 1e3, 3),
                **call.fields,
            },
        )
        for observe in self._observers:
            observe(method, code, seconds, call.fields)


def _serialized(response: Any, serialize: Callable[[Any], bytes] | None) -> bytes:
    data = response if serialize is None else serialize(response)
    if len(data) > MAX_RESPONSE_BYTES:
        raise ResourceExhausted(
            f"the response ({len(data)} bytes) is larger than the server's send limit "
            f"({MAX_RESPONSE_BYTES} bytes)",
            limit=str(MAX_RESPONSE_BYTES),
        )
    return bytes(data)
