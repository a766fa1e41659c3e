"""One load-generating client process: `python -m tests.reliability._load_client PORT COUNT
THREADS SEED FILES_ROOT`. Sends COUNT Loads of a fixed mix from THREADS threads to
127.0.0.1:PORT and prints one JSON object: {"kind/outcome": count, ...}.

An outcome is "ok" when the call ended as its kind expects (a code, and for content the exact
bytes), else "unexpected:<code>"; the test fails on any of those.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import threading
from collections import Counter
from pathlib import Path

import grpc
from pkgloader_client import PackageLoaderServiceStub, pb

from tests.conftest import COWSAY, DASH, FIXTURES, HELLO, STATIC, WABT

OK = grpc.StatusCode.OK
WRONG = "ab" * 32


def mix(files: Path) -> list[tuple[str, int, pb.LoadRequest, grpc.StatusCode, bytes | None]]:
    """(kind, weight, request, expected code, expected content or None)."""

    def req(url: str, sha: str, content: bool = False, policy: int = 0) -> pb.LoadRequest:
        return pb.LoadRequest(
            summary=pb.PackageSummary(dist=pb.DistributionInfo(webc_url=url, webc_sha256=sha)),
            include_content=content,
            hash_validation=policy,
        )

    return [
        ("memory-hit", 10, req(HELLO.url, HELLO.sha256), OK, None),
        ("memory-hit", 10, req(STATIC.url, STATIC.sha256), OK, None),
        ("memory-hit", 10, req(DASH.url, DASH.sha256), OK, None),
        ("memory-hit", 10, req(COWSAY.url, COWSAY.sha256), OK, None),
        ("disk-hit", 10, req(WABT.url, WABT.sha256), OK, None),
        ("content", 8, req(HELLO.url, HELLO.sha256, True), OK, HELLO.data),
        ("content", 5, req(STATIC.url, STATIC.sha256, True), OK, STATIC.data),
        ("content", 2, req(DASH.url, DASH.sha256, True), OK, DASH.data),
        ("miss", 10, req(HELLO.url, WRONG, True, pb.HASH_VALIDATION_NONE), OK, HELLO.data),
        ("error-mismatch", 5, req(STATIC.url, WRONG), grpc.StatusCode.DATA_LOSS, None),
        ("error-hash", 5, req(HELLO.url, "xyz"), grpc.StatusCode.INVALID_ARGUMENT, None),
        (
            "error-outside",
            5,
            req(f"file://{FIXTURES}/../../etc/passwd", HELLO.sha256),
            grpc.StatusCode.PERMISSION_DENIED,
            None,
        ),
        (
            "error-missing",
            5,
            req((files / "missing.webc").as_uri(), "cd" * 32),  # a cached hash would be served
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
    ]


def main(port: int, count: int, threads: int, seed: int, files: Path) -> dict[str, int]:
    choices = mix(files)
    weights = [c[1] for c in choices]
    rng = random.Random(seed)
    plan = rng.choices(range(len(choices)), weights, k=count)
    digests = {id(c[4]): hashlib.sha256(c[4]).digest() for c in choices if c[4] is not None}
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = PackageLoaderServiceStub(channel)

    def worker(part: list[int]) -> None:
        local: Counter[str] = Counter()
        for index in part:
            kind, _, request, expected, content = choices[index]
            code, body = OK, b""
            try:
                responses = list(stub.Load(request, timeout=60))
                body = b"".join(r.chunk for r in responses[1:])
            except grpc.RpcError as err:
                code = err.code()
            good = code == expected and (
                content is None or hashlib.sha256(body).digest() == digests[id(content)]
            )
            local[f"{kind}/{'ok' if good else 'unexpected:' + code.name}"] += 1
        with lock:
            outcomes.update(local)

    parts = [plan[i::threads] for i in range(threads)]
    pool = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    channel.close()
    return dict(outcomes)


if __name__ == "__main__":
    port, count, threads, seed = (int(a) for a in sys.argv[1:5])
    print(json.dumps(main(port, count, threads, seed, Path(sys.argv[5]))))
