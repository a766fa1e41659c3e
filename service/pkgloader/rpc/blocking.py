"""Blocking behaviours on the event loop server: run on the business thread pool, a step at a time.

The core (loader, caches, fetchers, resolver) is synchronous: a download, a disk read, a hash
pass block the thread they run on. On the asyncio server the interceptor runs each such RPC
behaviour (every servicer method that is not `async`) on the business pool: a unary behaviour in
one step; a streaming one (a generator) one `next()` per step, so while its message waits to be
sent no thread is held. Every step runs in the call's own `contextvars.Context` (where
`calls.current()` is the call), the same one each time, so a span opened in one step and closed
in a later one stays balanced.

A behaviour on a worker thread must not touch grpcio's asyncio objects (they belong to the
loop); it gets a `SyncContext`: the sync server's `ServicerContext` methods the servicer uses,
answered from what was read on the loop, with `abort` raising (as grpcio's sync server does) and
the status applied on the loop afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from concurrent import futures
from contextvars import ContextVar
from typing import Any

import grpc
from grpc import aio

_POOL: ContextVar[futures.ThreadPoolExecutor | None] = ContextVar("pkgloader_pool", default=None)
_END = object()


def bind_pool(pool: futures.ThreadPoolExecutor) -> None:
    """Make `pool` the running call's business pool (the interceptor binds it in the call's
    task, where it stays for the call's life)."""
    _POOL.set(pool)


class Aborted(Exception):
    """The status a blocking behaviour ended its call with: `SyncContext.abort`, or a code it
    set (`SyncContext.pending_status`)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Sequence[Any]):
        super().__init__(code, details)
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata)


class SyncContext:
    """A call's context as a behaviour on a worker thread sees it (grpc.ServicerContext's
    methods that our behaviours and grpc's generic handlers use)."""

    __slots__ = (
        "_active",
        "_callbacks",
        "_deadline",
        "_metadata",
        "_peer",
        "code",
        "details",
        "trailing_metadata",
    )

    def __init__(self, context: aio.ServicerContext[Any, Any]) -> None:
        remaining = context.time_remaining()
        self._deadline = None if remaining is None else time.monotonic() + remaining
        self._metadata = tuple(context.invocation_metadata() or ())
        self._peer = context.peer()
        self._active = True
        self._callbacks: list[Callable[[], None]] = []
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None
        self.trailing_metadata: tuple[Any, ...] = ()
        context.add_done_callback(self._done)  # type: ignore[arg-type]

    def _done(self, _context: object) -> None:
        self.end()

    def end(self) -> None:
        """The call is over for the behaviour (done, cancelled, or its stream closed): from now
        `is_active()` is False, so a blocking wait it runs (`alive`) gives up. grpc's done
        callback comes only once the call's task has finished, which waits for that step."""
        if not self._active:
            return
        self._active = False
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def is_active(self) -> bool:
        return self._active

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def invocation_metadata(self) -> tuple[Any, ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if not self._active:
            return False
        self._callbacks.append(callback)
        return True

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        # Recorded, as grpc's own context does: the abort's status is the call's, whatever
        # code was set before it.
        self.code, self.details = code, details
        raise Aborted(code, details, self.trailing_metadata)

    def abort_with_status(self, status: Any) -> None:
        self.code, self.details = status.code, status.details
        self.trailing_metadata = tuple(status.trailing_metadata or ())
        raise Aborted(status.code, status.details, self.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def pending_status(self) -> Aborted | None:
        """The status the behaviour set (a code other than OK), as the `Aborted` that sends
        it; None when it set none. Also asked when a behaviour raised NotImplementedError:
        grpc's generated servicer bases set UNIMPLEMENTED and then raise it, and grpc's own
        servers answer with the code set."""
        if self.code is None or self.code is grpc.StatusCode.OK:
            return None
        return Aborted(self.code, self.details or "", self.trailing_metadata)

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: Sequence[Any]) -> None:
        self.trailing_metadata = tuple(metadata)


class Steps:
    """One call's blocking work on the pool, each step in the call's context."""

    def __init__(self, pool: futures.ThreadPoolExecutor) -> None:
        self._pool = pool
        self._scope = contextvars.copy_context()
        self._pending: futures.Future[Any] | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._wait(self._start(fn, *args))

    def _start(self, fn: Callable[..., Any], *args: Any) -> futures.Future[Any]:
        pending = self._pending = self._pool.submit(self._scope.run, fn, *args)
        return pending

    async def _wait(self, pending: futures.Future[Any]) -> Any:
        try:
            # Cancelled before it started, the step never runs; once started it runs out.
            return await asyncio.wrap_future(pending)
        finally:
            if pending.done() and self._pending is pending:
                self._pending = None

    async def settled(self) -> None:
        """Wait for a step still running on the pool (the call was cancelled while it ran); a
        step not started yet never runs."""
        pending = self._pending
        if pending is not None and not pending.done() and not pending.cancel():
            await asyncio.wait([asyncio.wrap_future(pending)])
        self._pending = None

    async def iterate(
        self, items: Iterator[Any], serialize: Callable[[Any], bytes] | None = None
    ) -> AsyncGenerator[Any, None]:
        """`items` (a generator on the pool) as an async iterator; closed however it ends.

        One step ahead: while the loop sends an item, the pool makes the next (a chunk's read
        and framing overlap the previous chunk's send), so a stream holds at most one item
        more than it has handed over. With `serialize`, each item is serialized there too, off
        the loop (a Scan batch or a LoadTree message is megabytes)."""
        produce = _next if serialize is None else _serialized_next(serialize)
        try:
            pending = self._start(produce, items)
            while True:
                item = await self._wait(pending)
                if item is _END:
                    return
                pending = self._start(produce, items)
                yield item
        finally:
            # What `yield from` did: close the generator (its `finally` blocks run) in the
            # call's context, once no step of it runs any more.
            await self.settled()
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    step = self._start(close)
                except RuntimeError:
                    # The pool is shut down (the server stopped, cancelling this call): close
                    # it here, so its `finally` blocks still run.
                    self._scope.run(close)
                else:
                    await self._wait(step)


_fallback: futures.ThreadPoolExecutor | None = None


def pool() -> futures.ThreadPoolExecutor:
    """The running call's business pool; outside an intercepted call (a servicer driven
    directly), a small pool of this module's."""
    global _fallback
    pool = _POOL.get()
    if pool is None:
        if _fallback is None:
            _fallback = futures.ThreadPoolExecutor(4, thread_name_prefix="blocking")
        pool = _fallback
    return pool


def _next(items: Iterator[Any]) -> Any:
    return next(items, _END)


def _serialized_next(serialize: Callable[[Any], bytes]) -> Callable[[Iterator[Any]], Any]:
    def produce(items: Iterator[Any]) -> Any:
        item = next(items, _END)
        return item if item is _END else serialize(item)

    return produce


def stepped(
    behaviour: Callable[..., Iterator[Any]],
    request: Any,
    context: aio.ServicerContext[Any, Any],
    serialize: Callable[[Any], bytes] | None = None,
) -> AsyncGenerator[Any, None]:
    """A generator behaviour on the running call's business pool, as an async iterator (of
    serialized items with `serialize`), with a `SyncContext` for `context`."""
    return _stepped(Steps(pool()), behaviour, request, SyncContext(context), serialize)


async def _stepped(
    steps: Steps,
    behaviour: Callable[..., Iterator[Any]],
    request: Any,
    context: SyncContext,
    serialize: Callable[[Any], bytes] | None,
) -> AsyncGenerator[Any, None]:
    try:
        items = await steps.run(behaviour, request, context)
        # Closed here, not by the garbage collector later: the behaviour's `finally` blocks
        # run before the call is logged and its place given back.
        async with contextlib.aclosing(steps.iterate(items, serialize)) as iterated:
            async for item in iterated:
                yield item
    except NotImplementedError as exc:
        # A generated servicer base's answer (see `SyncContext.pending_status`); any other
        # exception keeps its own status, and an unexpected one its log line.
        status = context.pending_status()
        if status is None:
            raise
        raise status from exc
    finally:
        context.end()
    status = context.pending_status()
    if status is not None:
        raise status


class SyncRequests:
    """A client stream's requests (an aio call's `read()`), as the sync iterator a blocking
    behaviour on a worker thread expects: each `next()` waits for the loop to read one."""

    def __init__(self, requests: AsyncIterator[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._requests = aiter(requests)
        self._loop = loop
        self._lock = threading.Lock()

    def __iter__(self) -> SyncRequests:
        return self

    def __next__(self) -> Any:
        with self._lock:
            step = asyncio.run_coroutine_threadsafe(_anext(self._requests), self._loop)
            item = step.result()
        if item is _END:
            raise StopIteration
        return item


async def _anext(requests: AsyncIterator[Any]) -> Any:
    return await anext(requests, _END)
