"""Clients that go away: cancelled streams and passed deadlines free the server's threads,
descriptors and mappings; a shared download is never cancelled by a caller leaving, and when
every caller has left it still completes into the cache (the documented choice).

The server is a `pkgloader serve` subprocess, so its /proc figures are its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from pkgloader_client import PackageLoaderServiceStub, pb

from tests.conftest import DASH, FIXTURES, WABT
from tests.reliability.conftest import (
    Conn,
    ProcStats,
    Served,
    assert_cache_sound,
    big_package,
    load,
    wait_until,
)

REPEATS = 20
SLACK = 2  # a leak of one per call would show as REPEATS


def request(url: str, sha: str, include_content: bool = False) -> pb.LoadRequest:
    return pb.LoadRequest(
        summary=pb.PackageSummary(dist=pb.DistributionInfo(webc_url=url, webc_sha256=sha)),
        include_content=include_content,
    )


def settled(server: Served, base: ProcStats, cache: Path) -> Callable[[], bool]:
    def check() -> bool:
        now = server.stats()
        return (
            now.threads <= base.threads + SLACK
            and now.fds <= base.fds + SLACK
            and len(now.held(cache)) <= len(base.held(cache))
        )

    return check


def warm(server: Served, url: str, sha: str, n: int = 8) -> None:
    """Fill the server's worker pool: n concurrent content streams, each on a connection of its
    own (the server runs fewer content streams than it has workers per connection)."""

    def one(_: int) -> None:
        # A local subchannel pool: a connection of its own, not the one channels share.
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
            load(PackageLoaderServiceStub(channel), url, sha, include_content=True)

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))


def test_cancelled_streams_free_threads_fds_and_mappings(served, tmp_path: Path) -> None:
    """20 Loads cancelled mid-stream: threads, fds and cache files held (open or mapped) return
    to baseline."""
    cache, files = tmp_path / "cache", tmp_path / "files"
    files.mkdir()
    url, sha = big_package(files, 32 << 20)
    # No memory tier: every hit holds a cache file open, visible in /proc/<pid>/fd.
    server = served(memory_cache_bytes=0, workers=8, file_roots=f"{FIXTURES}:{files}")
    warm(server, url, sha)
    base = server.stats()
    # A stream nobody reads holds its file: the check below is able to fail.
    held = server.stub.Load(request(url, sha, include_content=True))
    assert next(held).WhichOneof("item") == "package"
    assert wait_until(lambda: len(server.stats().held(cache)) > len(base.held(cache)), 10)
    held.cancel()
    for _ in range(REPEATS):
        stream = server.stub.Load(request(url, sha, include_content=True))
        next(stream)
        next(stream)  # one chunk of 1 MiB read, many more to come
        stream.cancel()
    assert wait_until(settled(server, base, cache), 15), (base, server.stats())
    after = server.stats()
    print(f"cancel: threads {base.threads}->{after.threads}, fds {base.fds}->{after.fds}")
    assert load(server.stub, url, sha)[0].source == pb.SOURCE_DISK


def test_passed_deadlines_free_the_callers_and_the_download_completes(
    served, upstream, tmp_path: Path
) -> None:
    """Callers whose deadline passes leave at once; the download they started completes."""
    cache = tmp_path / "cache"
    release = threading.Event()

    def gated(c: Conn) -> None:
        c.head(200, {"Content-Length": str(DASH.size)})
        c.send(DASH.data[:1000])
        release.wait(30)
        c.send(DASH.data[1000:])

    up = upstream(gated)
    server = served(memory_cache_bytes=0, workers=8, max_downloads=2, read_timeout=30)
    warm(server, WABT.url, WABT.sha256)
    base = server.stats()
    for _ in range(REPEATS):
        with pytest.raises(grpc.RpcError) as caught:
            load(server.stub, up.url(), DASH.sha256, timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value.details()
    assert len(up.seen) == 1  # every caller joined the one download
    # The callers are gone (their threads did not pile up); the download is not.
    assert server.stats().threads < base.threads + REPEATS // 2
    assert not (cache / f"{DASH.sha256}.bin").exists()
    release.set()
    assert wait_until((cache / f"{DASH.sha256}.bin").exists, 15)
    assert assert_cache_sound(cache) == sorted([f"{DASH.sha256}.bin", f"{WABT.sha256}.bin"])
    package, content = load(server.stub, up.url(), DASH.sha256, include_content=True)
    assert (package.source, content) == (pb.SOURCE_DISK, DASH.data)
    assert len(up.seen) == 1
    assert wait_until(settled(server, base, cache), 15), (base, server.stats())


def test_first_caller_leaving_does_not_cancel_the_shared_download(served, upstream) -> None:
    """Three callers share one download; the first cancels; the other two get every byte."""
    release = threading.Event()

    def gated(c: Conn) -> None:
        c.head(200, {"Content-Length": str(WABT.size)})
        c.send(WABT.data[:4096])
        release.wait(30)
        c.send(WABT.data[4096:])

    up = upstream(gated)
    server = served(memory_cache_bytes=0, workers=8)
    first = server.stub.Load(request(up.url(), WABT.sha256, include_content=True), timeout=60)
    assert wait_until(lambda: len(up.seen) == 1, 10)
    with ThreadPoolExecutor(2) as pool:
        others = [
            pool.submit(load, server.stub, up.url(), WABT.sha256, include_content=True)
            for _ in range(2)
        ]
        first.cancel()
        release.set()
        results = [f.result(timeout=60) for f in others]
    assert all(content == WABT.data for _, content in results)
    assert len(up.seen) == 1
