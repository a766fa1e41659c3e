"""The load generator: one process, grpc.aio, raw bytes in and out.

Requests are pre-serialized and responses are not parsed, so the client costs the same against
every server under test and leaves as much CPU as it can to the server. Run as
`python -m bench._client '<json spec>'`; prints one JSON answer on stdout.

Modes:
- `rate`: `concurrency` calls in flight for `duration` seconds after `warmup`; the count of calls
  completed inside the window and their latencies.
- `stream`: one call at a time, `repeats` times; seconds, bytes and time to the first and second
  message of each.
- `burst`: `concurrency` identical calls started together, once; the time until all are done.
- `sync_stream`: as `stream`, on a sync channel reading raw bytes (the way a plain Python
  client downloads); `before` (a unary call) runs untimed before each call, e.g. an Evict.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from typing import Any

import grpc
from grpc import aio

OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def _callable(channel: aio.Channel, spec: dict[str, Any]) -> Any:
    if spec.get("kind", "unary_stream") == "unary_unary":
        return channel.unary_unary(spec["method"])
    return channel.unary_stream(spec["method"])


async def _one(call: Any, request: bytes, unary: bool, timeout: float) -> tuple[int, float, float]:
    """(bytes received, seconds to the first message, seconds to the second message)."""
    start = time.perf_counter()
    if unary:
        reply = await call(request, timeout=timeout)
        t = time.perf_counter() - start
        return len(reply), t, t
    total, first, second, n = 0, 0.0, 0.0, 0
    async for message in call(request, timeout=timeout):
        n += 1
        if n == 1:
            first = time.perf_counter() - start
        elif n == 2:
            second = time.perf_counter() - start
        total += len(message)
    return total, first, second or first


async def rate(spec: dict[str, Any]) -> dict[str, Any]:
    request = base64.b64decode(spec["request"])
    unary = spec.get("kind") == "unary_unary"
    channels = [
        aio.insecure_channel(spec["target"], options=OPTIONS)
        for _ in range(spec.get("channels", 1))
    ]
    calls = [_callable(c, spec) for c in channels]
    for c in channels:
        await asyncio.wait_for(c.channel_ready(), 30)
    # Every client process starts measuring at the same wall-clock moment.
    start_at = spec.get("start_at", time.time())
    await asyncio.sleep(max(0.0, start_at - time.time()))
    begin = time.perf_counter() + spec["warmup"]
    end = begin + spec["duration"]
    latencies: list[float] = []
    errors = completed = 0

    async def worker(i: int) -> None:
        nonlocal errors, completed
        call = calls[i % len(calls)]
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                await _one(call, request, unary, 30)
            except grpc.RpcError:
                errors += 1
                continue
            completed += 1
            t1 = time.perf_counter()
            if t0 >= begin and t1 <= end:
                latencies.append(t1 - t0)

    cpu = time.process_time()
    await asyncio.gather(*(worker(i) for i in range(spec["concurrency"])))
    cpu = time.process_time() - cpu
    for c in channels:
        await c.close()
    return {
        "count": len(latencies),
        "seconds": spec["duration"],
        "errors": errors,
        "latencies": latencies,
        # The whole run, warm-up included, without the process's start-up: what one call cost
        # the client (bench.profile_warm --sampler threads).
        "completed": completed,
        "cpu_seconds": cpu,
    }


async def stream(spec: dict[str, Any]) -> dict[str, Any]:
    request = base64.b64decode(spec["request"])
    async with aio.insecure_channel(spec["target"], options=OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        call = _callable(channel, spec)
        runs = []
        for _ in range(spec.get("repeats", 1)):
            t0 = time.perf_counter()
            total, first, second = await _one(call, request, False, spec.get("timeout", 600))
            runs.append(
                {
                    "seconds": time.perf_counter() - t0,
                    "bytes": total,
                    "first": first,
                    "second": second,
                }
            )
            if spec.get("between"):
                between = base64.b64decode(spec["between"]["request"])
                await channel.unary_unary(spec["between"]["method"])(between, timeout=30)
    return {"runs": runs}


async def burst(spec: dict[str, Any]) -> dict[str, Any]:
    request = base64.b64decode(spec["request"])
    async with aio.insecure_channel(spec["target"], options=OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        call = _callable(channel, spec)
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(
                _one(call, request, False, spec.get("timeout", 600))
                for _ in range(spec["concurrency"])
            ),
            return_exceptions=True,
        )
        seconds = time.perf_counter() - t0
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {
        "seconds": seconds,
        "calls": len(results),
        "errors": errors[:5],
        "error_count": len(errors),
    }


def sync_stream(spec: dict[str, Any]) -> dict[str, Any]:
    request = base64.b64decode(spec["request"])
    with grpc.insecure_channel(spec["target"], options=OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        call = channel.unary_stream(spec["method"])  # no deserializer: raw bytes
        before = None
        if spec.get("before"):
            before_request = base64.b64decode(spec["before"]["request"])
            before_call = channel.unary_unary(spec["before"]["method"])
            before = lambda: before_call(before_request, timeout=30)  # noqa: E731
        runs = []
        for _ in range(spec.get("repeats", 1)):
            if before is not None:
                before()
            t0 = time.perf_counter()
            total, first = 0, 0.0
            for n, message in enumerate(call(request, timeout=spec.get("timeout", 600))):
                if n == 1:  # the first content chunk (the first message is the metadata)
                    first = time.perf_counter() - t0
                total += len(message)
            runs.append({"seconds": time.perf_counter() - t0, "bytes": total, "first": first})
    return {"runs": runs}


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["mode"] == "sync_stream":
        answer = sync_stream(spec)
    else:
        mode = {"rate": rate, "stream": stream, "burst": burst}[spec["mode"]]
        answer = asyncio.run(mode(spec))
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
