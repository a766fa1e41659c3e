"""Several server processes on one cache folder: one download between them, crash takeover,
and maintenance racing with Loads. Real processes on 127.0.0.1, a real loopback upstream."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from pkgloader_client import pb

from tests.conftest import COWSAY, DASH, HELLO, WABT, load_request, wait_until
from tests.replicas import replicas, upstream


def load(replica, url: str, sha: str) -> tuple[pb.Package, bytes]:
    responses = list(replica.stub.Load(load_request(url, sha, include_content=True), timeout=60))
    return responses[0].package, b"".join(r.chunk for r in responses[1:])


def test_concurrent_loads_on_three_replicas_make_one_upstream_request(tmp_path: Path) -> None:
    """The same uncached package asked of 3 replicas at once is downloaded exactly once: the
    body is held until both other replicas wait on the first one's download lease."""
    with replicas(tmp_path / "cache", 3) as nodes:
        others_waiting = threading.Event()

        def hold_body(number: int) -> None:
            # Whichever replica took the lease is downloading; each of the other two must be
            # waiting on it (counted per replica: two waits in one would prove nothing).
            def both_wait() -> bool:
                return sum(n.metric("pkgloader_lease_waits") >= 1 for n in nodes) == 2

            if wait_until(both_wait, 30):
                others_waiting.set()

        with upstream({"wabt": WABT.data}) as up, ThreadPoolExecutor(9) as pool:
            up.before_body = hold_body
            calls = [
                pool.submit(load, node, up.url("wabt"), WABT.sha256)
                for node in nodes
                for _ in range(3)
            ]
            results = [c.result(timeout=60) for c in calls]
            assert up.requests == ["wabt"]
    assert others_waiting.is_set(), "the other replicas never waited on the lease"
    assert all(content == WABT.data for _, content in results)
    sources = {p.source for p, _ in results}
    assert pb.SOURCE_DOWNLOAD in sources
    assert sources <= {pb.SOURCE_DOWNLOAD, pb.SOURCE_DISK, pb.SOURCE_MEMORY}


def test_a_killed_lease_holder_is_taken_over_after_the_lease_expires(tmp_path: Path) -> None:
    """SIGKILL the replica holding the download lease: another takes over once it is stale."""
    first_request = threading.Event()
    release = threading.Event()

    def stall_first(number: int) -> None:
        if number == 1:
            first_request.set()
            release.wait(30)  # the first downloader never gets its body

    cache = tmp_path / "cache"
    with upstream({"dash": DASH.data}) as up:
        up.before_body = stall_first
        env = {"PKGLOADER_LEASE_TTL": "1.5"}
        with replicas(cache, 2, **env) as (holder, other):
            stuck = holder.stub.Load(load_request(up.url("dash"), DASH.sha256))
            assert first_request.wait(20)
            assert [p.name for p in (cache / "__temp__").glob("*.lease")] == [
                f"{DASH.sha256}.lease"
            ]
            holder.kill()
            stuck.cancel()
            package, content = load(other, up.url("dash"), DASH.sha256)
            release.set()
        assert up.requests == ["dash", "dash"]
    assert package.source == pb.SOURCE_DOWNLOAD
    assert content == DASH.data
    assert sorted(p.name for p in cache.iterdir()) == [f"{DASH.sha256}.bin", "__temp__"]
    assert list((cache / "__temp__").glob("*.lease")) == []


def test_maintenance_racing_with_loads_never_serves_torn_bytes(tmp_path: Path) -> None:
    """Retain, Evict(ALL) and ValidateCache(prune) on one replica while two others Load:
    every Load succeeds with bytes matching the sha256, or fails cleanly."""
    fixtures = (HELLO, DASH, COWSAY)
    stop = threading.Event()
    bad: list[str] = []
    loads = [0]

    with replicas(
        tmp_path / "cache",
        3,
        PKGLOADER_MEMORY_CACHE_BYTES="0",
        PKGLOADER_FILE_ROOTS=str(HELLO.path.parent),
    ) as (admin, *loaders):

        def hammer(node) -> None:
            i = 0
            while not stop.is_set():
                fixture = fixtures[i % len(fixtures)]
                i += 1
                try:
                    _, content = load(node, fixture.url, fixture.sha256)
                except grpc.RpcError as exc:
                    bad.append(f"{exc.code()}: {exc.details()}")
                    continue
                loads[0] += 1
                if hashlib.sha256(content).hexdigest() != fixture.sha256:
                    bad.append(f"torn bytes for {fixture.name}")

        threads = [threading.Thread(target=hammer, args=(n,)) for n in loaders for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            i, deadline = 0, time.monotonic() + 90
            # Hundreds of maintenance operations, until the loaders have done 100 Loads.
            while (i < 150 or loads[0] < 100) and time.monotonic() < deadline:
                i += 1
                if i % 3 == 0:
                    admin.stub.Retain(pb.RetainRequest(max_total_bytes=0))
                elif i % 3 == 1:
                    admin.stub.Evict(
                        pb.EvictRequest(
                            webc_sha256=[f.sha256 for f in fixtures], scope=pb.EVICT_SCOPE_ALL
                        )
                    )
                else:
                    report = admin.stub.ValidateCache(
                        pb.ValidateCacheRequest(mode=pb.CACHE_VALIDATION_PRUNE)
                    )
                    assert list(report.mismatches) == []
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    assert bad == []
    assert loads[0] >= 100
    for path in (tmp_path / "cache").iterdir():
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() + ".bin" == path.name
