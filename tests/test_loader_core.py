"""`PackageLoader` directly, no gRPC, on the production wiring (`app.build`) with a disk and a
memory tier: the download queue's limits, per-caller policies on one shared download, deadlines
that leave a download running for the next caller, and a cache file that does not parse."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pkgloader import app as app_module
from pkgloader.errors import (
    CacheFileChanged,
    Cancelled,
    DeadlineExceeded,
    HashMismatch,
    PackageTooLarge,
    ResourceExhausted,
)
from pkgloader.formats import writer
from pkgloader.hashes import WebcHash
from pkgloader.loader import (
    BACKGROUND_PROMOTION,
    LoaderEvents,
    LoadRequest,
    LoadResult,
    PackageLoader,
)
from pkgloader.policy import HashPolicy, Source
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.conftest import DASH, HELLO, STATIC, Fixture, test_settings, wait_until


class Recorder(LoaderEvents):
    def __init__(self) -> None:
        self.downloads: list[tuple[int, bool]] = []
        self.mismatches = 0

    def downloaded(self, size: int, seconds: float, ok: bool) -> None:
        self.downloads.append((size, ok))

    def hash_mismatch(self) -> None:
        self.mismatches += 1


@pytest.fixture
def make_loader(tmp_path: Path) -> Iterator[Callable[..., PackageLoader]]:
    apps: list[app_module.App] = []

    def build(**overrides: Any) -> PackageLoader:
        app = app_module.build(test_settings(tmp_path, **overrides))
        apps.append(app)
        return app.loader

    yield build
    for app in apps:
        app.close()


class Gate:
    """An upstream path that answers only once `release` is set (or after 30 s)."""

    def __init__(self, httpserver: HTTPServer, path: str, fixture: Fixture) -> None:
        self.release = threading.Event()
        self.url = httpserver.url_for(path)

        def answer(request: Request) -> Response:
            self.release.wait(30)
            return Response(fixture.data)

        httpserver.expect_request(path).respond_with_handler(answer)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `fn` on a thread; its result or exception lands in the returned list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_full_download_queue_refuses_or_waits(
    make_loader: Callable[..., PackageLoader], httpserver: HTTPServer
) -> None:
    """With max_queued_downloads downloads in flight, another Load is refused at once
    (ResourceExhausted), or with wait_for_room waits, and stops when its caller leaves."""
    loader = make_loader(max_queued_downloads=1)
    gate = Gate(httpserver, "/held", DASH)
    httpserver.expect_request("/other").respond_with_data(HELLO.data)
    thread, out = in_thread(lambda: loader.load(LoadRequest(gate.url, DASH.sha256), timeout=30))
    try:
        assert wait_until(lambda: loader.inflight == 1, timeout=30)
        other = LoadRequest(httpserver.url_for("/other"), HELLO.sha256)
        with pytest.raises(ResourceExhausted, match="too many downloads"):
            loader.load(other)
        with pytest.raises(ResourceExhausted):
            loader.load_url(httpserver.url_for("/other"))
        with pytest.raises(Cancelled):
            loader.load(other, alive=lambda: False, wait_for_room=True)
    finally:
        gate.release.set()
        thread.join(30)
    assert isinstance(out[0], LoadResult)
    # Room again: the queued caller's next try goes through.
    assert loader.load(other).package.hash.hex == HELLO.sha256


def test_one_shared_download_applies_each_callers_policy(
    make_loader: Callable[..., PackageLoader], httpserver: HTTPServer
) -> None:
    """Two callers of one (hash, URL) share a download of mismatching bytes: the FAIL caller
    gets HashMismatch, the NONE caller the content, and upstream saw one request."""
    loader = make_loader()
    events = Recorder()
    loader.events = events
    gate = Gate(httpserver, "/wrong", HELLO)
    strict, lax = (
        LoadRequest(gate.url, STATIC.sha256, policy=policy)
        for policy in (HashPolicy.FAIL, HashPolicy.NONE)
    )
    threads = [in_thread(functools.partial(loader.load, r, timeout=30)) for r in (strict, lax)]
    try:
        assert wait_until(lambda: loader.waiting == 2, timeout=30)
    finally:
        gate.release.set()
        for thread, _ in threads:
            thread.join(30)
    failed, served = threads[0][1][0], threads[1][1][0]
    assert isinstance(failed, HashMismatch)
    assert isinstance(served, LoadResult)
    assert served.package.size == HELLO.size
    assert len(httpserver.log) == 1
    assert events.mismatches == 2
    assert events.downloads == [(HELLO.size, True)]


def test_a_caller_past_its_deadline_leaves_the_download_running_for_the_next(
    make_loader: Callable[..., PackageLoader], httpserver: HTTPServer
) -> None:
    """DeadlineExceeded ends the call, not the download: a Load within abandon_grace joins it,
    and upstream is asked once."""
    loader = make_loader(abandon_grace=30.0)
    gate = Gate(httpserver, "/slow", DASH)
    with pytest.raises(DeadlineExceeded, match="continues"):
        loader.load(LoadRequest(gate.url, DASH.sha256), timeout=0.1)
    assert loader.inflight == 1
    thread, out = in_thread(lambda: loader.load(LoadRequest(gate.url, DASH.sha256), timeout=30))
    try:
        assert wait_until(lambda: loader.waiting == 1, timeout=30)
    finally:
        gate.release.set()
        thread.join(30)
    assert isinstance(out[0], LoadResult)
    assert out[0].source is Source.DOWNLOAD
    assert len(httpserver.log) == 1


def test_a_cache_file_that_does_not_parse_is_downloaded_again_and_replaced(
    make_loader: Callable[..., PackageLoader], httpserver: HTTPServer
) -> None:
    """A file under a package's name that is no package (not ours; cut short) is a miss: the
    download that follows replaces it with the real bytes."""
    loader = make_loader()
    assert loader.disk is not None
    path = loader.disk.path(WebcHash(HELLO.sha256))
    path.write_bytes(b"garbage, not a package")
    assert loader.cached(HELLO.sha256) is None
    httpserver.expect_request("/hello").respond_with_data(HELLO.data)
    result = loader.load(LoadRequest(httpserver.url_for("/hello"), HELLO.sha256))
    assert result.source is Source.DOWNLOAD
    assert path.read_bytes() == HELLO.data


def test_a_memory_hit_renews_the_disk_files_last_use(
    make_loader: Callable[..., PackageLoader], httpserver: HTTPServer
) -> None:
    """Last use is the disk file's mtime: a hit served from memory renews it too (at most once
    per touch_interval), so the size limit does not evict what memory keeps serving."""
    loader = make_loader(touch_interval=60.0)
    assert loader.disk is not None
    httpserver.expect_request("/hello").respond_with_data(HELLO.data)
    request = LoadRequest(httpserver.url_for("/hello"), HELLO.sha256)
    loader.load(request)
    path = loader.disk.root / f"{HELLO.sha256}.bin"
    old = time.time() - 3600
    os.utime(path, (old, old))
    kept = loader.memory.get(HELLO.sha256)
    assert kept is not None
    kept.touched = float("-inf")  # as if the last touch were long ago
    assert loader.load(request).source is Source.MEMORY
    assert time.time() - path.stat().st_mtime < 60


def test_load_from_memory_answers_only_what_needs_no_io(
    make_loader: Callable[..., PackageLoader], httpserver: HTTPServer
) -> None:
    """What the event loop may call: a package memory does not hold is None (not fetched, not
    checked: no file system call); a held one is a MEMORY result; one whose disk stamp is due
    for renewal is None unless `touch` (then `load` renews it); and a held package named by a
    refused request is still refused."""
    loader = make_loader(touch_interval=60.0)
    httpserver.expect_request("/hello").respond_with_data(HELLO.data)
    request = LoadRequest(httpserver.url_for("/hello"), HELLO.sha256)
    assert loader.load_from_memory(request) is None
    assert httpserver.log == []  # nothing was fetched
    loader.load(request)
    # In memory now, its stamp not yet renewed by the touch clock: `load` does that first.
    assert loader.load_from_memory(request) is None
    assert loader.load(request).source is Source.MEMORY
    hit = loader.load_from_memory(request)
    assert hit is not None
    assert (hit.source, hit.package.size) == (Source.MEMORY, HELLO.size)
    kept = loader.memory.get(HELLO.sha256)
    assert kept is not None
    kept.touched = float("-inf")  # the disk file's stamp is due
    assert loader.load_from_memory(request) is None
    touched = loader.load_from_memory(request, touch=True)
    assert touched is not None
    assert loader.load_from_memory(request) is not None  # renewed: memory answers again
    with pytest.raises(PackageTooLarge):
        loader.load_from_memory(LoadRequest(request.url, HELLO.sha256, size_hint=1 << 62))


def test_a_large_package_on_disk_is_served_from_its_file_and_promoted_behind_it(
    make_loader: Callable[..., PackageLoader], tmp_path: Path
) -> None:
    """A package of BACKGROUND_PROMOTION bytes or more found only on disk is returned at once,
    reading from its file (so the first Load after an Evict streams without waiting for a whole
    copy), and promoted behind it: once that settles, the next Load is a memory hit, and the
    first caller's package still reads the right bytes from its file."""
    loader = make_loader(memory_cache_bytes=128 << 20)
    assert loader.disk is not None
    data = writer.write_v1({"package": {}}, {"big": os.urandom(BACKGROUND_PROMOTION)}, {})
    sha = hashlib.sha256(data).hexdigest()
    loader.disk.path(WebcHash(sha)).write_bytes(data)
    request = LoadRequest((tmp_path / "files" / "absent.webc").as_uri(), sha)  # never fetched

    first = loader.load(request)
    assert first.source is Source.DISK
    assert not first.package.in_memory
    # The copy waits until the first Load is done with its package; a Load meanwhile shares
    # its parse, and holding it does not put the copy off.
    other = loader.load(request)
    assert other.package is not first.package
    assert other.package.container is first.package.container
    assert not loader.settle(0)
    assert b"".join(first.package.chunks()) == data
    manifest = first.package.container.manifest
    del first
    assert loader.settle(60)
    second = loader.load(request)
    assert second.source is Source.MEMORY
    assert second.package.in_memory
    assert second.package.container.manifest == manifest
    assert b"".join(second.package.chunks()) == data
    assert b"".join(other.package.chunks()) == data  # still reading its file


def test_a_small_package_on_disk_is_promoted_before_it_is_returned(
    make_loader: Callable[..., PackageLoader], httpserver: HTTPServer
) -> None:
    """Below BACKGROUND_PROMOTION the copy costs less than a second file read would: the first
    Load from disk already returns the package from memory, and nothing runs behind it."""
    loader = make_loader()
    assert loader.disk is not None
    loader.disk.path(WebcHash(DASH.sha256)).write_bytes(DASH.data)
    result = loader.load(LoadRequest(httpserver.url_for("/never-fetched"), DASH.sha256))
    assert result.source is Source.DISK
    assert result.package.in_memory
    assert loader.settle(0)
    assert loader.memory.get(DASH.sha256) is result.package


def test_an_evict_during_a_promotion_behind_a_load_wins(
    make_loader: Callable[..., PackageLoader], tmp_path: Path
) -> None:
    """An Evict from memory that comes while a large package is promoted behind its Load leaves
    it out of memory: the promotion, finishing later, does not put it back (whichever ends first,
    the package is not in memory once both are done)."""
    loader = make_loader(memory_cache_bytes=128 << 20)
    assert loader.disk is not None
    data = writer.write_v1({"package": {}}, {"big": os.urandom(BACKGROUND_PROMOTION)}, {})
    sha = hashlib.sha256(data).hexdigest()
    loader.disk.path(WebcHash(sha)).write_bytes(data)
    request = LoadRequest((tmp_path / "files" / "absent.webc").as_uri(), sha)
    assert loader.load(request).source is Source.DISK
    loader.memory.remove(sha)  # what Evict(MEMORY) does
    assert loader.settle(60)
    assert sha not in loader.memory
    assert loader.load(request).source is Source.DISK  # and the next Load promotes it again
    assert loader.settle(60)
    assert sha in loader.memory


def test_views_of_a_package_on_disk_reuse_one_buffer_and_fail_when_the_file_shrinks(
    make_loader: Callable[..., PackageLoader], tmp_path: Path
) -> None:
    """A file-backed package's `views` are its bytes, each chunk read into the same buffer
    (fresh 1 MiB buffers page-faulted on every chunk) and released when the next is asked for;
    a file truncated mid-stream ends them with CacheFileChanged, as `chunks` does. A package
    in memory gives what `chunks` gives."""
    loader = make_loader(memory_cache_bytes=128 << 20)
    assert loader.disk is not None
    data = writer.write_v1({"package": {}}, {"big": os.urandom(BACKGROUND_PROMOTION)}, {})
    sha = hashlib.sha256(data).hexdigest()
    path = loader.disk.path(WebcHash(sha))
    path.write_bytes(data)
    request = LoadRequest((tmp_path / "files" / "absent.webc").as_uri(), sha)  # never fetched

    package = loader.load(request).package
    assert not package.in_memory
    buffers, received = set(), bytearray()
    for view in package.views(1 << 20):
        assert isinstance(view, memoryview)
        buffers.add(id(view.obj))
        received += view
    assert bytes(received) == data
    assert len(data) > 2 << 20  # several chunks, all in one buffer
    assert len(buffers) == 1

    views = package.views(1 << 20)
    kept = next(views)
    next(views)
    with pytest.raises(ValueError, match="released"):
        bytes(kept)  # kept past the next one: refused, not the next chunk's bytes
    os.truncate(path, 1 << 20)
    with pytest.raises(CacheFileChanged):
        list(views)
    del package, views
    # The promotion behind the Load finds the shorter file, which does not parse: nothing is
    # promoted, and the next Load of the package downloads it.
    assert loader.settle(60)
    assert not loader.memory.get(sha)

    small = writer.write_v1({"package": {}}, {"small": b"x" * 5000}, {})
    small_sha = hashlib.sha256(small).hexdigest()
    loader.disk.path(WebcHash(small_sha)).write_bytes(small)
    held = loader.load(LoadRequest(request.url, small_sha)).package
    assert held.in_memory
    assert [bytes(v) for v in held.views(2048)] == [bytes(c) for c in held.chunks(2048)]
