"""Crash safety: `pkgloader serve` SIGKILLed at random points of downloads and of Retains.

One cache folder lives through every trial; each restart is the next trial's server. After
every restart: every name in the folder is the sha256 of its bytes, start-up removed every temp
file and lease of the dead process, every package still loads, and ValidateCache finds nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
from pkgloader_client import PackageLoaderServiceStub, pb

from tests.conftest import ALL, COWSAY, DASH, WABT
from tests.reliability.conftest import (
    SOAK,
    Conn,
    Served,
    assert_cache_sound,
    load,
)

TRIALS = 200 if SOAK else 50
SYNTHETIC = 400  # entries another replica "wrote", so that a Retain has work to be cut in


def slow_body(data: bytes) -> Callable[[Conn], None]:
    """Serve `data` in 64 KiB steps, 4 ms apart: about 0.2 s for wabt, a wide window to kill."""

    def behave(c: Conn) -> None:
        c.head(200, {"Content-Length": str(len(data))})
        c.trickle(data, step=64 * 1024, pause=0.004, limit=20)

    return behave


def background_load(stub: PackageLoaderServiceStub, url: str, sha: str) -> threading.Thread:
    """A Load nobody waits for: the server dies under it."""

    def run() -> None:
        # ValueError: on a busy machine the kill and the channel's close can come before this
        # thread has started its call ("Cannot invoke RPC: Channel closed!").
        with contextlib.suppress(grpc.RpcError, ValueError):
            load(stub, url, sha, timeout=15)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def plant_entries(cache: Path, rng: random.Random, count: int) -> None:
    """Valid entries written the way any replica writes them: temp file, then rename."""
    for _ in range(count):
        data = rng.randbytes(rng.randrange(1, 512))
        name = hashlib.sha256(data).hexdigest() + ".bin"
        temp = cache / "__temp__" / f"planted-{name}.part"
        temp.write_bytes(data)
        os.replace(temp, cache / name)


def check_restarted(server: Served, cache: Path) -> None:
    """The invariants every restart must show."""
    assert_cache_sound(cache, leases_too=True)
    for fixture in ALL:
        package, _ = load(server.stub, fixture.url, fixture.sha256)
        assert (package.webc_sha256, package.size) == (fixture.sha256, fixture.size)
    report = server.stub.ValidateCache(pb.ValidateCacheRequest(), timeout=60)
    assert list(report.mismatches) == []
    assert_cache_sound(cache, leases_too=True)


def test_sigkill_during_downloads_and_retains_loses_nothing(
    served, upstream, tmp_path: Path, rng: random.Random, record_property
) -> None:
    """SIGKILL at random points of downloads and Retains: no torn or misnamed file survives."""
    cache = tmp_path / "cache"
    ups = {f.sha256: upstream(slow_body(f.data)) for f in (WABT, DASH, COWSAY)}
    server = served(memory_cache_bytes=0)
    check_restarted(server, cache)
    seen: Counter[str] = Counter()
    for trial in range(TRIALS):
        kind = "retain" if trial % 2 else "download"
        if kind == "download":
            # Make sure the three are misses, then start them all and kill somewhere inside.
            server.stub.Evict(
                pb.EvictRequest(webc_sha256=list(ups), scope=pb.EVICT_SCOPE_ALL), timeout=30
            )
            threads = [
                background_load(server.stub, up.url(f"/{trial}"), sha) for sha, up in ups.items()
            ]
            delay = rng.uniform(0.0, 0.35)
        else:
            plant_entries(cache, rng, SYNTHETIC)
            request = pb.RetainRequest(max_total_bytes=rng.randrange(0, 4 << 20))
            future = server.stub.Retain.future(request, timeout=30)
            threads = []
            delay = rng.uniform(0.0, 0.03)
        time.sleep(delay)
        server.kill(signal.SIGKILL)
        if kind == "retain":
            try:
                future.result()
                seen["retain finished before the kill"] += 1
            except grpc.RpcError:
                seen["retain cut"] += 1
        for thread in threads:
            thread.join(20)
        temp = [n for n in os.listdir(cache / "__temp__") if n.endswith(".part")]
        if temp:
            seen[f"{kind}: killed with a partial temp file"] += 1
        seen[f"{kind} trials"] += 1
        server = served(memory_cache_bytes=0)
        check_restarted(server, cache)
    report = server.stub.ValidateCache(pb.ValidateCacheRequest(deep=True), timeout=120)
    assert list(report.mismatches) == []
    packages = {f.sha256 for f in ALL}  # the planted entries are bytes, not packages
    assert [b.source for b in report.invalid_packages if b.webc_sha256 in packages] == []
    server.kill(signal.SIGTERM)
    for key, value in sorted(seen.items()):
        record_property(key, value)
        print(f"crash: {key}: {value}")
    assert seen["download: killed with a partial temp file"] > 0, seen  # the kills hit writes
