"""The gRPC servers' event loop, and `Server`: a `grpc.aio` server driven from synchronous code.

pkgloader serves on grpcio's asyncio server. A warm Load is a few tens of microseconds of our
Python; grpcio's sync server wrapped each call in GIL hand-overs between its poller and 64 worker
threads that cost several times that, and capped warm Loads at about half of a bare server's
rate (docs/performance.md). On the event loop a call that needs no I/O (a memory hit) is answered
where it arrived; everything that blocks (downloads, disk, hashing, the cache scans) still runs
on the business thread pool, a step at a time (`rpc.interceptors`).

The rest of the program (the CLI, the tests, Kubernetes' stop signal) is synchronous: `Server`
gives it the sync server's methods (`start`, `stop(grace).wait()`, `wait_for_termination`) over
an aio server that lives on one loop thread per process (grpcio's asyncio support expects one
loop per process; every server of a process, main and health port, shares it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent import futures
from typing import Any, TypeVar

from grpc import aio

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The process's gRPC event loop, running on a daemon thread of its own (started on first
    use, stopped only by `shutdown`, when the process is about to exit)."""
    global _loop, _thread
    with _lock:
        if _loop is None:
            new = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(new)
                new.call_soon(ready.set)
                new.run_forever()

            thread = threading.Thread(target=run, name="grpc-loop", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = new, thread
        return _loop


def shutdown(timeout: float = 5.0) -> None:
    """Stop the process's gRPC loop, once every server on it has stopped (a process about to
    exit). The tasks still on it (grpcio's own, winding down) are cancelled and awaited first:
    a task destroyed pending at interpreter exit is logged as an error after our last line.

    Returns once the loop has stopped (its thread joined), not merely asked to: a loop still
    running while the caller goes on to close the app and exit can run a handle that another
    thread cancels at that moment (asyncio's handles are not thread-safe), which fails as
    "Exception in callback None() handle: <Handle cancelled>", logged after our "stopped" (seen
    once in CI's SIGTERM test). On a stopped loop a cancelled handle never runs."""
    global _loop, _thread
    with _lock:
        running, _loop = _loop, None
        thread, _thread = _thread, None
    if running is None:
        return

    async def drain() -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    try:
        asyncio.run_coroutine_threadsafe(drain(), running).result(timeout + 1)
    finally:
        running.call_soon_threadsafe(running.stop)
        if thread is not None:
            thread.join(timeout)


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coro` on the gRPC loop from another thread and return its result."""
    running = loop()
    if _on_loop(running):
        raise RuntimeError("run() called on the gRPC loop itself: await the coroutine instead")
    return asyncio.run_coroutine_threadsafe(coro, running).result(timeout)


def _on_loop(running: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is running
    except RuntimeError:
        return False


class Server:
    """A `grpc.aio.Server` on the process's gRPC loop, with the sync server's methods."""

    def __init__(self, server: aio.Server) -> None:
        self.aio = server
        self._stopped = threading.Event()

    @classmethod
    def build(cls, make: Callable[[], tuple[aio.Server, T]]) -> tuple[Server, T]:
        """`make()` (which creates and configures the aio server) run on the gRPC loop, where
        grpcio's asyncio objects must be created."""

        async def build() -> tuple[aio.Server, T]:
            return make()

        server, extra = run(build())
        return cls(server), extra

    def start(self) -> None:
        run(self.aio.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Stop taking calls; calls still running get `grace` seconds (None: none) before they
        are cancelled. Returns an event set once the server has stopped, as grpc's sync
        server does."""
        done = asyncio.run_coroutine_threadsafe(self.aio.stop(grace), loop())

        def stopped(_: futures.Future[None]) -> None:
            self._stopped.set()

        done.add_done_callback(stopped)
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Wait for the server to stop; True when `timeout` passed first (grpc's meaning)."""
        return not self._stopped.wait(timeout)
