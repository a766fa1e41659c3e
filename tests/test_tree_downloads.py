"""LoadTree's downloads, counted at a real loopback upstream: at most 32 at once, within the
process's download limits (a tree larger than the queue waits for room), each package once even
when two trees load together."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pkgloader_client import pb

from tests._trees import (
    Published,
    publish,
    resolution,
    tree_request,
    v3_package,
    wasi_command,
    wasm,
)
from tests.conftest import Running

DEPENDENCIES = 40


@dataclass
class Upstream:
    """An HTTP server on 127.0.0.1 that serves packages by path and counts what it serves.

    With `gate_at`, every request waits until that many are in progress at once (or the test
    opens the gate), so the peak the server sees is exactly the client's concurrency."""

    packages: dict[str, bytes]
    gate_at: int | None = None
    inflight: Callable[[], int] = lambda: 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate: threading.Event = field(default_factory=threading.Event)
    active: int = 0
    peak: int = 0
    #: The most downloads the loader had in flight when a request arrived.
    loader_peak: int = 0
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = upstream.packages.get(self.path)
                with upstream.lock:
                    upstream.active += 1
                    upstream.peak = max(upstream.peak, upstream.active)
                    upstream.loader_peak = max(upstream.loader_peak, upstream.inflight())
                    upstream.requests[self.path] += 1
                    if upstream.gate_at is not None and upstream.active >= upstream.gate_at:
                        upstream.gate.set()
                try:
                    if upstream.gate_at is not None:
                        # A safety net only: the gate opens on the count, not on the clock.
                        upstream.gate.wait(60)
                    if body is None:
                        self.send_error(404)
                        return
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with upstream.lock:
                        upstream.active -= 1

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def upstream() -> Iterator[Callable[..., Upstream]]:
    servers: list[ThreadingHTTPServer] = []

    def start(packages: dict[str, bytes], **options: object) -> Upstream:
        up = Upstream(packages, **options)  # type: ignore[arg-type]
        server = ThreadingHTTPServer(("127.0.0.1", 0), up.handler())
        server.daemon_threads = True
        up.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return up

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def wide_tree(files: Path, up: Upstream) -> pb.Resolution:
    """A root (a file) whose 40 dependencies (at the upstream) each declare one command."""
    deps = []
    for i in range(DEPENDENCIES):
        data = v3_package(
            f"dep/pkg-{i}",
            "1.0.0",
            atoms={"main": wasm(f"dep-{i}")},
            commands={f"cmd-{i}": wasi_command("main")},
        )
        up.packages[f"/pkg-{i}.webc"] = data
        published = publish(files, f"dep/pkg-{i}@1.0.0", data)
        deps.append(Published(published.id, up.url(f"/pkg-{i}.webc"), published.sha256, len(data)))
    root = publish(
        files,
        "app/wide@1.0.0",
        v3_package("app/wide", "1.0.0", use={f"d{i}": f"dep/pkg-{i}@1" for i in range(40)}),
    )
    return resolution(
        root,
        deps,
        edges=[(root.id, d.id, f"d{i}") for i, d in enumerate(deps)],
        commands=[(f"cmd-{i}", d.id, f"cmd-{i}") for i, d in enumerate(deps)],
    )


def tree_packages(server: Running, res: pb.Resolution) -> pb.BinaryPackage:
    responses = list(server.stub.LoadTree(tree_request(res), timeout=120))
    return responses[0].package


def test_never_more_than_32_downloads_at_once(
    make_server: Callable[..., Running], upstream: Callable[..., Upstream], tmp_path: Path
) -> None:
    """With PKGLOADER_MAX_DOWNLOADS above 32 a 40-package tree still downloads at most 32 at a
    time: the upstream sees exactly 32 at once, and the loader never had more in flight."""
    server = make_server(max_downloads=48)
    up = upstream({}, gate_at=32)
    up.inflight = lambda: server.app.loader.inflight
    res = wide_tree(tmp_path / "files", up)
    package = tree_packages(server, res)
    assert len(package.commands) == DEPENDENCIES
    assert up.peak == 32
    assert up.loader_peak <= 32
    assert sorted(up.requests.values()) == [1] * DEPENDENCIES


def test_with_the_default_limits_the_tree_still_loads(
    make_server: Callable[..., Running], upstream: Callable[..., Upstream], tmp_path: Path
) -> None:
    """The default PKGLOADER_MAX_DOWNLOADS (16) is the upstream's peak; all 40 load."""
    server = make_server()
    assert server.app.settings.max_downloads == 16
    up = upstream({}, gate_at=16)
    package = tree_packages(server, wide_tree(tmp_path / "files", up))
    assert [p.source for p in package.packages[1:]] == [pb.SOURCE_DOWNLOAD] * DEPENDENCIES
    assert up.peak == 16


def test_a_tree_larger_than_the_download_queue_waits_for_room(
    make_server: Callable[..., Running], upstream: Callable[..., Upstream], tmp_path: Path
) -> None:
    """With a queue of 4 downloads, a Load of a fifth package would be RESOURCE_EXHAUSTED; the
    tree's loads wait for room instead, and all 40 packages arrive."""
    server = make_server(max_downloads=48, max_queued_downloads=4)
    up = upstream({}, gate_at=4)
    up.inflight = lambda: server.app.loader.inflight
    package = tree_packages(server, wide_tree(tmp_path / "files", up))
    assert len(package.packages) == DEPENDENCIES + 1
    assert up.peak == 4
    assert up.loader_peak <= 4


def test_two_trees_at_once_download_each_package_once(
    make_server: Callable[..., Running], upstream: Callable[..., Upstream], tmp_path: Path
) -> None:
    """Two concurrent LoadTrees of the same 40 packages share the loader's single flight."""
    server = make_server(max_downloads=48)
    up = upstream({}, gate_at=10_000)  # held until the test opens the gate
    res = wide_tree(tmp_path / "files", up)
    with ThreadPoolExecutor(2) as pool:
        trees = [pool.submit(tree_packages, server, res) for _ in range(2)]
        deadline = time.monotonic() + 60
        while up.active < 32 and time.monotonic() < deadline:
            time.sleep(0.01)  # a poll with a deadline: waiting for the upstream to fill
        up.gate.set()
        packages = [t.result(timeout=120) for t in trees]
    assert all(len(p.commands) == DEPENDENCIES for p in packages)
    assert sorted(up.requests.values()) == [1] * DEPENDENCIES
