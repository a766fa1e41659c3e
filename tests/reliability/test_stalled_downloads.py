"""Issue 10 item 3: stalled and abandoned downloads must not hold download slots, nor another
replica's download of the same package. Real loopback upstreams that trickle (paced by events),
a real server, and real replica processes sharing one cache folder."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from pkgloader_client import pb

from tests.conftest import DASH, HELLO, WABT, load_request
from tests.reliability.conftest import Conn, error_info, wait_until
from tests.replicas import replicas


def trickler(
    served: threading.Event, closed: threading.Event, body: bytes, pause: float, ok: bytes = b""
):
    """An upstream behaviour: the head, then one byte every `pause` s (an event wait, so the
    test's end stops it at once); `closed` is set when the client hangs up on it. Any other path
    answers `ok` at once."""

    def behave(c: Conn) -> None:
        if c.request.path != "/slow":
            c.respond(200, ok)
            return
        served.set()
        c.head(200, {"Content-Length": str(len(body))})
        if not c.trickle(body, step=1, pause=pause, limit=120) and not c.stop.is_set():
            closed.set()

    return behave


def test_stalled_download_ends_unavailable_at_the_minimum_rate(make_server, upstream) -> None:
    """1 byte per 0.2 s against a minimum of 1 KiB per second: UNAVAILABLE naming the minimum
    rate (before: the download ran until its deadline; the caller saw DEADLINE_EXCEEDED)."""
    served, closed = threading.Event(), threading.Event()
    up = upstream(trickler(served, closed, DASH.data, 0.2))
    server = make_server(min_transfer_bytes=1024, min_transfer_interval=1.0, download_timeout=60.0)
    with pytest.raises(grpc.RpcError) as caught:
        list(server.stub.Load(load_request(up.url("/slow"), DASH.sha256), timeout=20))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert error_info(caught.value).reason == "UPSTREAM_UNAVAILABLE"
    assert "minimum transfer rate" in caught.value.details()
    assert closed.wait(10), "the stalled connection was not closed"
    assert server.app.loader.inflight == 0


def test_abandoned_downloads_free_their_slots(make_server, upstream) -> None:
    """Two Loads with a 1 s deadline of a trickling upstream (1 byte per 0.5 s, above no minimum)
    on a server with 2 download slots: once their callers are gone for the grace period the
    downloads stop, and a legitimate Load gets a slot (before: it waited until the download
    deadline and failed DEADLINE_EXCEEDED)."""
    served, closed = threading.Event(), threading.Event()
    up = upstream(trickler(served, closed, WABT.data, 0.5, ok=HELLO.data))
    server = make_server(
        max_downloads=2, abandon_grace=0.5, min_transfer_bytes=0, download_timeout=60.0
    )
    for sha in (WABT.sha256, DASH.sha256):  # two flights: (hash, URL) differ
        with pytest.raises(grpc.RpcError) as caught:
            list(server.stub.Load(load_request(up.url("/slow"), sha), timeout=1))
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert served.is_set()
    package, content = server.load(up.url("/ok"), HELLO.sha256, include_content=True)
    assert content == HELLO.data
    assert package.source == pb.SOURCE_DOWNLOAD
    assert closed.wait(10), "the abandoned trickles were not hung up on"


def test_a_caller_that_comes_back_within_the_grace_rejoins_the_download(
    make_server, upstream
) -> None:
    """A Load that times out and is retried at once joins the same download, which goes on:
    one upstream request for both calls, and the retry gets the package."""
    release = threading.Event()

    def slow_then_whole(c: Conn) -> None:
        c.head(200, {"Content-Length": str(len(DASH.data))})
        c.send(DASH.data[:100])
        release.wait(30)
        c.send(DASH.data[100:])

    up = upstream(slow_then_whole)
    server = make_server(abandon_grace=30.0, min_transfer_bytes=0)
    with pytest.raises(grpc.RpcError) as caught:
        list(server.stub.Load(load_request(up.url("/pkg"), DASH.sha256), timeout=1))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with ThreadPoolExecutor(1) as pool:
        retry = pool.submit(server.load, up.url("/pkg"), DASH.sha256, include_content=True)
        assert wait_until(lambda: server.app.loader.waiting == 1, 10)
        release.set()
        _, content = retry.result(30)
    assert content == DASH.data
    assert len(up.seen) == 1


def test_a_lease_held_for_another_url_is_waited_for_only_briefly(tmp_path: Path, upstream) -> None:
    """Replica A downloads DASH's hash from a trickling URL (and holds the lease for that hash);
    replica B, asked for DASH at a correct URL, waits at most PKGLOADER_FOREIGN_LEASE_WAIT and
    then downloads it itself (before: it waited for A's download, here past a 15 s deadline)."""
    served, closed = threading.Event(), threading.Event()
    up = upstream(trickler(served, closed, DASH.data, 0.5, ok=DASH.data))
    cache = tmp_path / "cache"
    env = {"PKGLOADER_FOREIGN_LEASE_WAIT": "1", "PKGLOADER_MIN_TRANSFER_BYTES": "0"}
    with replicas(cache, 2, **env) as (a, b):
        stuck = a.stub.Load(load_request(up.url("/slow"), DASH.sha256), timeout=60)
        assert served.wait(20)
        lease = cache / "__temp__" / f"{DASH.sha256}.lease"
        assert wait_until(lease.exists, 10)
        responses = list(
            b.stub.Load(load_request(up.url("/ok"), DASH.sha256, include_content=True), timeout=15)
        )
        stuck.cancel()
    assert responses[0].package.source == pb.SOURCE_DOWNLOAD
    assert b"".join(r.chunk for r in responses[1:]) == DASH.data
    assert (cache / f"{DASH.sha256}.bin").read_bytes() == DASH.data
