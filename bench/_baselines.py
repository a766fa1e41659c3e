"""Bare gRPC servers, the baselines: as little work per call as grpcio allows.

`python -m bench._baselines --kind sync|aio --port P --mode echo|stream|file ...`

- `echo`: a unary request answered by one streamed message of `--reply-bytes` bytes (the shape of
  a metadata-only Load).
- `stream`: a unary request answered by `--total` bytes in pre-serialized `LoadResponse.chunk`
  messages of `--chunk` bytes (tag 0x12, varint length, data): the cheapest possible Load.
- `file` (sync only): the file `--file` in such messages, read per call as `--read` says:
  `mmap` (a mapping sliced into each message: how pkgloader served disk files before issue 10,
  which a truncation turned into SIGBUS) or `pread` (one read into a buffer per chunk).

Handlers take and return raw bytes (no (de)serializers), so the numbers are grpcio's own.
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc import aio

from bench._common import field_bytes, varint

OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
]
METHOD = "/bench.Bare/Call"


def _messages(args: argparse.Namespace) -> list[bytes]:
    if args.mode == "echo":
        return [field_bytes(1, b"x" * max(0, args.reply_bytes - 4))]
    data = os.urandom(min(args.chunk, args.total))
    count = -(-args.total // args.chunk)
    # One distinct message per chunk, as a package's chunks would be (not one object reused).
    return [field_bytes(2, bytes(data[:-1]) + bytes([i % 256])) for i in range(count)]


def _file_messages(path: str, chunk: int, read: str) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if read == "mmap":
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped, memoryview(mapped) as view:
                for start in range(0, size, chunk):
                    piece = view[start : start + chunk]
                    yield b"".join((b"\x12", varint(len(piece)), piece))
                    piece.release()
        else:
            for start in range(0, size, chunk):
                piece = os.pread(fd, min(chunk, size - start), start)
                yield b"".join((b"\x12", varint(len(piece)), piece))
    finally:
        os.close(fd)


def serve_sync(args: argparse.Namespace, messages: list[bytes]) -> None:
    def call(request: bytes, context: Any) -> Iterator[bytes]:
        if args.mode == "file":
            yield from _file_messages(args.file, args.chunk, args.read)
        else:
            yield from messages

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare", {"Call": grpc.unary_stream_rpc_method_handler(call)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(args.workers),
        options=OPTIONS,
        maximum_concurrent_rpcs=args.workers * 16,
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(None)


async def serve_aio(args: argparse.Namespace, messages: list[bytes]) -> None:
    async def call(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for message in messages:
            yield message

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare", {"Call": grpc.unary_stream_rpc_method_handler(call)}
    )
    server = aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["sync", "aio"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["echo", "stream", "file"], required=True)
    parser.add_argument("--file", help="for --mode file: the file to stream")
    parser.add_argument("--read", choices=["mmap", "pread"], default="pread")
    parser.add_argument("--reply-bytes", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=1024 * 1024)
    parser.add_argument("--total", type=int, default=256 * 1024 * 1024)
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args()
    messages = [] if args.mode == "file" else _messages(args)
    if args.kind == "sync":
        serve_sync(args, messages)
    else:
        asyncio.run(serve_aio(args, messages))


if __name__ == "__main__":
    main()
