"""Cache operations at scale and under races, through a real server on a real cache folder.

- Bounded responses: Retain, Scan and ValidateCache over 60,000 real files answer a client with
  gRPC's default 4 MiB receive limit; a unary response that is too large, or that cannot be
  serialized, is logged and counted as the failure it is.
- Snapshot races: a file republished (or used) between the moment Retain or a prune judged it
  and the moment it would be deleted stays.
- Stale temp files of any writer (the wasmer CLI's `.tmpXXXXXX` too) go, at start-up before
  SERVING and periodically; live writers' files stay.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from pkgloader.app import SERVER_OPTIONS
from pkgloader.rpc.interceptors import MAX_RESPONSE_BYTES, CallInterceptor
from pkgloader.rpc.server import Server
from pkgloader_client import PackageLoaderServiceStub, pb
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.conftest import DASH, HELLO, WABT, Running, running, test_settings
from tests.reliability.conftest import wait_until

MANY = 60_000
CLIENT_LIMIT = 4 * 1024 * 1024  # what Go, Node, Java and Python clients accept by default


def plant(cache: Path, count: int) -> list[str]:
    """`count` empty files under entry names (`<sha256 of i>.bin`): real, small, fast to make.
    None hashes to its name, so ValidateCache finds `count` mismatches."""
    cache.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = hashlib.sha256(i.to_bytes(4, "big")).hexdigest() + ".bin"
        os.close(os.open(cache / name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        names.append(name)
    return names


def default_client(server: Running) -> tuple[grpc.Channel, PackageLoaderServiceStub]:
    """A channel with grpc's defaults: 4 MiB receive limit."""
    channel = grpc.insecure_channel(server.address)
    return channel, PackageLoaderServiceStub(channel)


def rpc_count(server: Running, method: str, code: str) -> float:
    value = server.app.metrics.registry.get_sample_value(
        "pkgloader_rpc_duration_seconds_count", {"method": method, "code": code}
    )
    return value or 0.0


def access_lines(caplog: pytest.LogCaptureFixture, method: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "pkgloader.access" and getattr(r, "method", "").endswith("/" + method)
    ]


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A server whose cache holds 60,000 entries, none of them valid (left in place: WARN)."""
    tmp = tmp_path_factory.mktemp("crowded")
    plant(tmp / "cache", MANY)
    with running(test_settings(tmp)) as server:
        yield server


# -- bounded responses --------------------------------------------------------------------------


def test_retain_of_60000_entries_answers_a_default_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Retain removing 60,000 files answers OK within 4 MiB: the first 1000 entries, the full
    count and `truncated`; the log and the metrics say OK, and the folder really is empty."""
    plant(tmp_path / "cache", MANY)
    caplog.set_level(logging.INFO, logger="pkgloader.access")
    with running(test_settings(tmp_path)) as server:
        channel, stub = default_client(server)
        with channel:
            response = stub.Retain(pb.RetainRequest(keep_sha256=["0" * 64]), timeout=120)
        assert response.ByteSize() < CLIENT_LIMIT
        assert (response.removed_files, len(response.removed), response.truncated) == (
            MANY,
            1000,
            True,
        )
        assert response.kept_files == 0
        assert [p.name for p in (tmp_path / "cache").iterdir()] == ["__temp__"]
        [line] = access_lines(caplog, "Retain")
        assert (line.status, line.removed_files) == ("OK", MANY)  # type: ignore[attr-defined]
        assert rpc_count(server, "Retain", "OK") == 1
    print(f"\nRetain of {MANY}: response {response.ByteSize()} bytes")


def test_scan_with_a_huge_batch_size_is_clamped(crowded: Running) -> None:
    """Scan(batch_size=2^32-1) over 60,000 entries: batches of at most 10,000, each < 4 MiB."""
    channel, stub = default_client(crowded)
    with channel:
        batches = list(stub.Scan(pb.ScanRequest(batch_size=2**32 - 1), timeout=120))
    assert [len(b.entries) for b in batches] == [10_000] * 6
    assert max(b.ByteSize() for b in batches) < CLIENT_LIMIT
    print(f"\nScan of {MANY}, huge batch: largest message {max(b.ByteSize() for b in batches)}")


def test_validate_with_60000_mismatches_answers_a_default_client(crowded: Running) -> None:
    """ValidateCache finding 60,000 mismatches answers within 4 MiB: the first 1000, the count."""
    channel, stub = default_client(crowded)
    with channel:
        response = stub.ValidateCache(pb.ValidateCacheRequest(), timeout=300)
    assert response.ByteSize() < CLIENT_LIMIT
    assert (response.mismatch_count, len(response.mismatches), response.truncated) == (
        MANY,
        1000,
        True,
    )
    assert response.checked_files == MANY
    assert len(list((crowded.app.settings.cache_dir or Path()).glob("*.bin"))) == MANY
    print(f"\nValidateCache of {MANY} mismatches: response {response.ByteSize()} bytes")


def test_server_send_limit_is_the_one_the_interceptor_checks() -> None:
    """The interceptor's size check and the server's grpc.max_send_message_length agree."""
    assert dict(SERVER_OPTIONS)["grpc.max_send_message_length"] == MAX_RESPONSE_BYTES


@pytest.fixture
def bare_server() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A real grpc server with only the CallInterceptor and two misbehaving unary methods (no
    real RPC of ours can produce such a response any longer)."""
    observed: list[tuple[str, str]] = []

    def big(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"x" * (MAX_RESPONSE_BYTES + 1)

    def unserializable(request: bytes, context: grpc.ServicerContext) -> object:
        return object()

    handlers = {
        "Big": grpc.unary_unary_rpc_method_handler(big),
        "Bad": grpc.unary_unary_rpc_method_handler(
            unserializable, response_serializer=lambda m: m.SerializeToString()
        ),
    }

    def make() -> tuple[aio.Server, int]:
        server = aio.server(
            interceptors=[
                CallInterceptor(observers=[lambda call: observed.append((call.method, call.code))])
            ],
            options=SERVER_OPTIONS,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
        return server, server.add_insecure_port("127.0.0.1:0")

    server, port = Server.build(make)
    server.start()
    try:
        yield f"127.0.0.1:{port}", observed
    finally:
        server.stop(None).wait()


@pytest.mark.parametrize(
    ("method", "code"),
    [("Big", grpc.StatusCode.RESOURCE_EXHAUSTED), ("Bad", grpc.StatusCode.INTERNAL)],
)
def test_a_unary_response_that_cannot_be_sent_is_logged_and_counted_as_failed(
    bare_server: tuple[str, list[tuple[str, str]]],
    method: str,
    code: grpc.StatusCode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over the send limit: RESOURCE_EXHAUSTED; not serializable: INTERNAL. Either way the access
    log and the observers (metrics) record that code, never OK."""
    address, observed = bare_server
    caplog.set_level(logging.INFO, logger="pkgloader.access")
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]  # the server must refuse
    with (
        grpc.insecure_channel(address, options=options) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        channel.unary_unary(f"/t.T/{method}")(b"", timeout=30)
    assert caught.value.code() == code
    assert observed == [(f"/t.T/{method}", code.name)]
    [line] = access_lines(caplog, method)
    assert line.status == code.name  # type: ignore[attr-defined]


# -- snapshot races -----------------------------------------------------------------------------


def republish(cache: Path, data: bytes, name: str) -> None:
    """Publish `data` under `name` as a writer does: a temp file, then one atomic rename."""
    temp = cache / "__temp__" / f"republish-{os.getpid()}.part"
    temp.write_bytes(data)
    os.replace(temp, cache / name)


def test_prune_keeps_a_good_file_republished_while_it_was_hashed(make_server) -> None:
    """A bad file is hashed; before the prune deletes it, a good one is published under its
    name: the good one stays (the mismatch is reported, not pruned) and is served."""
    server = make_server(memory_cache_bytes=0)
    cache = server.app.settings.cache_dir
    name = f"{HELLO.sha256}.bin"
    (cache / name).write_bytes(b"a torn or foreign file")
    seen: list[str] = []

    def hashed(hashed_name: str) -> None:
        seen.append(hashed_name)
        republish(cache, HELLO.data, name)

    report = server.app.maintenance.validate(prune=True, hashed=hashed)
    assert seen == [name]
    assert [(m.name, m.pruned) for m in report.mismatches] == [(name, False)]
    assert (cache / name).read_bytes() == HELLO.data
    package, _ = server.load(HELLO.url, HELLO.sha256)
    assert package.source == pb.SOURCE_DISK
    assert list((cache / "__temp__").iterdir()) == []


def test_prune_still_deletes_a_bad_file_nobody_replaced(make_server) -> None:
    """The same race without the republish: the bad file is pruned, nothing is left aside."""
    server = make_server()
    cache = server.app.settings.cache_dir
    name = f"{HELLO.sha256}.bin"
    (cache / name).write_bytes(b"a torn or foreign file")
    report = server.app.maintenance.validate(prune=True, hashed=lambda n: None)
    assert [(m.name, m.pruned) for m in report.mismatches] == [(name, True)]
    assert [p.name for p in cache.iterdir()] == ["__temp__"]
    assert list((cache / "__temp__").iterdir()) == []


def test_prune_deletes_a_bad_file_whose_last_use_was_renewed_meanwhile(make_server) -> None:
    """A prune judges content, not use: a bad file whose mtime a hit renews between its hash and
    the prune is still the same (bad) file, and is pruned."""
    from pkgloader.hashes import WebcHash

    server = make_server()
    cache = server.app.settings.cache_dir
    name = f"{HELLO.sha256}.bin"
    (cache / name).write_bytes(b"a torn or foreign file")
    _aged(cache / name, 3600)
    disk = server.app.loader.disk

    def hashed(hashed_name: str) -> None:
        before = (cache / name).stat().st_mtime_ns
        disk.touch(WebcHash(HELLO.sha256))
        assert (cache / name).stat().st_mtime_ns != before

    report = server.app.maintenance.validate(prune=True, hashed=hashed)
    assert [(m.name, m.pruned) for m in report.mismatches] == [(name, True)]
    assert not (cache / name).exists()


def test_retain_keeps_an_entry_loaded_after_it_was_judged_unused(make_server) -> None:
    """Retain(unused_for) judges three old entries; one of them is Loaded (a disk hit renews
    its last use) before the removals: it stays, the two others go."""
    server = make_server(memory_cache_bytes=0, touch_interval=1.0)
    for fixture in (HELLO, DASH, WABT):
        server.load(fixture.url, fixture.sha256)
    cache = server.app.settings.cache_dir
    old = time.time() - 3600
    for fixture in (HELLO, DASH, WABT):
        os.utime(cache / f"{fixture.sha256}.bin", (old, old))

    def decided() -> None:
        package, _ = server.load(DASH.url, DASH.sha256)
        assert package.source == pb.SOURCE_DISK

    from pkgloader.maintenance import RetainCriteria

    outcome = server.app.maintenance.retain(RetainCriteria(unused_for=60.0), decided=decided)
    assert {e.hash.hex for e in outcome.removed} == {HELLO.sha256, WABT.sha256}
    assert outcome.removed_files == 2
    assert sorted(p.name for p in cache.glob("*.bin")) == [f"{DASH.sha256}.bin"]


def test_a_second_validation_meanwhile_is_resource_exhausted(make_server) -> None:
    """One ValidateCache at a time per replica: one started while another hashes is refused."""
    server = make_server()
    server.load(HELLO.url, HELLO.sha256)
    refused: list[grpc.RpcError] = []

    def hashed(name: str) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            server.stub.ValidateCache(pb.ValidateCacheRequest(), timeout=30)
        refused.append(caught.value)

    report = server.app.maintenance.validate(prune=False, hashed=hashed)
    assert report.checked_files == 1
    [error] = refused
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already running" in error.details()
    assert server.stub.ValidateCache(pb.ValidateCacheRequest(), timeout=30).checked_files == 1


# -- stale temp files ---------------------------------------------------------------------------


def _aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def _hold_lock(path: Path) -> subprocess.Popen[str]:
    """Another process holding a POSIX write lock on `path` (as a live writer does)."""
    code = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_start_up_removes_stale_temp_files_of_any_writer(tmp_path: Path) -> None:
    """Before SERVING: the wasmer CLI's crashed `.tmpXXXXXX` files and other stale files older
    than PKGLOADER_TEMP_MAX_AGE go, counted in pkgloader_temp_files_removed_total; fresh ones,
    one a live process holds locked, and folders stay."""
    temp = tmp_path / "cache" / "__temp__"
    temp.mkdir(parents=True)
    for name in (".tmpAbC123", ".tmpZz9Yx8", "junk.partial"):
        (temp / name).write_bytes(b"half a package")
        _aged(temp / name, 7200)
    (temp / ".tmpFresh1").write_bytes(b"being written")
    (temp / ".tmpHeld01").write_bytes(b"held")
    _aged(temp / ".tmpHeld01", 7200)
    (temp / "a-folder").mkdir()
    _aged(temp / "a-folder", 7200)
    holder = _hold_lock(temp / ".tmpHeld01")
    try:
        with running(test_settings(tmp_path, temp_max_age=3600.0)) as server:
            left = sorted(p.name for p in temp.iterdir())
            assert left == [".tmpFresh1", ".tmpHeld01", "a-folder"]
            removed = server.app.metrics.registry.get_sample_value(
                "pkgloader_temp_files_removed_total"
            )
            assert removed == 3
    finally:
        holder.communicate("")


def test_stale_temp_files_are_swept_while_running_and_our_downloads_are_not(
    make_server, httpserver: HTTPServer
) -> None:
    """With a 1 s max age, the periodic sweep removes a stale file that appears while serving;
    a download of ours whose temp file has not changed for longer is left alone and completes."""
    server = make_server(temp_max_age=1.0)
    temp = server.app.settings.cache_dir / "__temp__"
    half = threading.Event()
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield DASH.data[: len(DASH.data) // 2]
        half.set()
        release.wait(30)
        yield DASH.data[len(DASH.data) // 2 :]

    def stalled(request: Request) -> Response:
        return Response(body(), headers={"Content-Length": str(DASH.size)})

    httpserver.expect_request("/dash").respond_with_handler(stalled)
    results: list[Any] = []
    loading = threading.Thread(
        target=lambda: results.append(server.load(httpserver.url_for("/dash"), DASH.sha256))
    )
    loading.start()
    try:
        assert half.wait(30)
        assert wait_until(lambda: any(p.stat().st_size for p in temp.glob("*.part")), 30)
        [ours] = temp.glob("*.part")
        _aged(ours, 60)
        (temp / ".tmpCrash1").write_bytes(b"x")
        _aged(temp / ".tmpCrash1", 60)
        server.app.start_background()
        # The sweep that removes it listed our stalled download's temp file too.
        assert wait_until(lambda: not (temp / ".tmpCrash1").exists(), 30)
        removed = server.app.metrics.registry.get_sample_value("pkgloader_temp_files_removed_total")
        assert removed == 1
        assert ours.exists()
    finally:
        release.set()
        loading.join(60)
    [(package, _)] = results
    assert package.source == pb.SOURCE_DOWNLOAD
    assert (server.app.settings.cache_dir / f"{DASH.sha256}.bin").read_bytes() == DASH.data


def test_remove_unchanged_deletes_only_the_file_it_was_given(tmp_path: Path) -> None:
    """DiskCache.remove_unchanged: a file replaced since it was listed stays; the listed one
    goes, even with `__temp__/` removed by an operator meanwhile; no other name is accepted."""
    from pkgloader.cache.disk import DiskCache

    cache = DiskCache(tmp_path / "c")
    name = f"{HELLO.sha256}.bin"
    (cache.root / name).write_bytes(b"old")
    [listed] = cache.entries()
    assert listed.file_id is not None
    republish(cache.root, HELLO.data, name)
    assert not cache.remove_unchanged(name, listed.file_id)
    assert (cache.root / name).read_bytes() == HELLO.data
    [current] = cache.entries()
    assert current.file_id is not None
    cache.temp.rmdir()
    assert cache.remove_unchanged(name, current.file_id)
    assert sorted(p.name for p in cache.root.iterdir()) == ["__temp__"]
    assert list(cache.temp.iterdir()) == []
    with pytest.raises(ValueError, match="not a cache file name"):
        cache.remove_unchanged("../escape.bin", current.file_id)


def test_start_up_removes_what_a_kill_cut_short(tmp_path: Path) -> None:
    """SIGKILL can cut a removal after its rename aside, or a lease between its creation and its
    holder record: at start-up both leftovers go (fresh as they are), so no temp file survives a
    restart (what test_crash.py checks at random kill points)."""
    temp = tmp_path / "cache" / "__temp__"
    temp.mkdir(parents=True)
    aside = temp / f"{HELLO.sha256}.bin.0123456789abcdef0123456789abcdef.removing"
    aside.write_bytes(b"doomed")
    (temp / f"{DASH.sha256}.lease").write_bytes(b"")
    (temp / f"{WABT.sha256}.lease").write_bytes(b'{"host": "')
    with running(test_settings(tmp_path)):
        assert list(temp.iterdir()) == []
