"""Scan, Retain, Evict and ValidateCache through the real gRPC API, on a real cache folder."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from pkgloader_client import pb

from tests.conftest import ALL, COWSAY, DASH, HELLO, STATIC, WABT, Running, load_request, sha256


def names(server: Running) -> list[str]:
    root = server.app.settings.cache_dir
    assert root is not None
    return sorted(p.name for p in root.iterdir() if p.is_file())


def load_all(server: Running, fixtures=ALL) -> None:
    for fixture in fixtures:
        server.load(fixture.url, fixture.sha256)


def scan(server: Running, batch_size: int = 0) -> list[pb.CacheEntry]:
    responses = list(server.stub.Scan(pb.ScanRequest(batch_size=batch_size)))
    return [entry for response in responses for entry in response.entries]


def age(server: Running, sha: str, seconds: float) -> None:
    path = server.app.settings.cache_dir / f"{sha}.bin"
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_scan_of_an_empty_cache_lists_nothing(server: Running) -> None:
    """A new cache folder scans as empty (the reference's first scan)."""
    assert scan(server) == []


def test_scan_lists_every_entry_with_size_last_use_and_memory_flag(server: Running) -> None:
    """Each stored package appears once with its size, mtime-based last use and memory flag."""
    load_all(server)
    server.stub.Evict(pb.EvictRequest(webc_sha256=[DASH.sha256]))
    entries = {e.webc_sha256: e for e in scan(server)}
    assert set(entries) == {f.sha256 for f in ALL}
    for fixture in ALL:
        entry = entries[fixture.sha256]
        assert entry.size == fixture.size
        assert entry.cache_path == f"{fixture.sha256}.bin"
        assert abs(entry.last_used.ToSeconds() - time.time()) < 120
        assert entry.in_memory == (fixture is not DASH)


def test_scan_streams_in_batches(server: Running) -> None:
    """batch_size bounds the entries per message; all entries still arrive."""
    load_all(server)
    responses = list(server.stub.Scan(pb.ScanRequest(batch_size=2)))
    assert [len(r.entries) for r in responses] == [2, 2, 1]


def test_scan_ignores_temp_files_and_foreign_names(server: Running) -> None:
    """Temp files, upper-case names, other suffixes, folders and symlinks are never listed."""
    load_all(server, [HELLO])
    root = server.app.settings.cache_dir
    (root / "__temp__" / "abc.part").write_bytes(b"partial")
    (root / ("A" * 64 + ".bin")).write_bytes(HELLO.data)
    (root / ("b" * 64 + ".bin.old")).write_bytes(HELLO.data)
    (root / "notes.txt").write_text("operator notes")
    (root / ("c" * 64 + ".bin")).mkdir()
    (root / ("d" * 64 + ".bin")).symlink_to(HELLO.path)
    assert [e.webc_sha256 for e in scan(server)] == [HELLO.sha256]


def test_retain_keep_list_removes_everything_else(server: Running) -> None:
    """keep_sha256: only the listed entries stay, on disk and in memory (the reference's retain)."""
    load_all(server)
    response = server.stub.Retain(pb.RetainRequest(keep_sha256=[HELLO.sha256, STATIC.sha256]))
    assert names(server) == sorted([f"{HELLO.sha256}.bin", f"{STATIC.sha256}.bin"])
    assert {e.webc_sha256 for e in response.removed} == {DASH.sha256, WABT.sha256, COWSAY.sha256}
    assert response.kept_files == 2
    assert response.kept_bytes == HELLO.size + STATIC.size
    assert response.removed_bytes == DASH.size + WABT.size + COWSAY.size
    assert server.app.loader.memory.keys() == [HELLO.sha256, STATIC.sha256]


def test_retain_remove_list_removes_only_those(server: Running) -> None:
    """remove_sha256 deletes exactly the listed entries."""
    load_all(server)
    response = server.stub.Retain(pb.RetainRequest(remove_sha256=[WABT.sha256]))
    assert [e.webc_sha256 for e in response.removed] == [WABT.sha256]
    assert f"{WABT.sha256}.bin" not in names(server)
    assert len(names(server)) == 4
    assert server.load(WABT.url, WABT.sha256)[0].source == pb.SOURCE_DOWNLOAD


def test_retain_unused_for_removes_stale_entries(server: Running) -> None:
    """unused_for removes entries whose last use is older than the duration."""
    load_all(server)
    age(server, DASH.sha256, 7200)
    age(server, COWSAY.sha256, 4000)
    response = server.stub.Retain(pb.RetainRequest(unused_for=duration_pb2.Duration(seconds=3600)))
    assert {e.webc_sha256 for e in response.removed} == {DASH.sha256, COWSAY.sha256}
    assert response.kept_files == 3


def test_retain_max_total_bytes_drops_least_recently_used(server: Running) -> None:
    """max_total_bytes keeps the most recently used entries that fit."""
    load_all(server)
    for i, fixture in enumerate(ALL):  # HELLO oldest ... COWSAY newest
        age(server, fixture.sha256, 1000 - i * 100)
    budget = COWSAY.size + STATIC.size + WABT.size
    response = server.stub.Retain(pb.RetainRequest(max_total_bytes=budget))
    assert {e.webc_sha256 for e in response.removed} == {HELLO.sha256, DASH.sha256}
    assert response.kept_bytes == budget


def test_retain_max_total_bytes_zero_removes_everything(server: Running) -> None:
    """An explicit max_total_bytes of 0 is honoured (presence, not truthiness)."""
    load_all(server)
    response = server.stub.Retain(pb.RetainRequest(max_total_bytes=0))
    assert response.kept_files == 0
    assert names(server) == []


def test_retain_dry_run_changes_nothing(server: Running) -> None:
    """dry_run reports what would go and removes nothing, on disk or in memory."""
    load_all(server)
    before = names(server)
    response = server.stub.Retain(pb.RetainRequest(keep_sha256=[HELLO.sha256], dry_run=True))
    assert len(response.removed) == 4
    assert names(server) == before
    assert len(server.app.loader.memory) == 5


def test_empty_retain_removes_nothing(server: Running) -> None:
    """No criteria, no removals."""
    load_all(server)
    response = server.stub.Retain(pb.RetainRequest())
    assert (len(response.removed), response.kept_files) == (0, 5)


def test_retain_never_touches_foreign_files(server: Running) -> None:
    """Only cache entries are candidates: temp files and other names survive any Retain."""
    load_all(server, [HELLO])
    root = server.app.settings.cache_dir
    foreign = [root / "notes.txt", root / ("E" * 64 + ".bin"), root / "__temp__" / "x.part"]
    for path in foreign:
        path.write_bytes(b"keep me")
    server.stub.Retain(pb.RetainRequest(max_total_bytes=0))
    assert all(path.read_bytes() == b"keep me" for path in foreign)


def test_retain_bad_hash_is_invalid_argument_and_removes_nothing(server: Running) -> None:
    """One malformed hash fails the whole request before anything is removed."""
    load_all(server)
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Retain(pb.RetainRequest(remove_sha256=[HELLO.sha256, "nope"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(names(server)) == 5


def test_retain_negative_duration_is_invalid_argument(server: Running) -> None:
    """A negative unused_for is refused."""
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Retain(pb.RetainRequest(unused_for=duration_pb2.Duration(seconds=-5)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_evict_memory_scope_keeps_the_file(server: Running) -> None:
    """EVICT_SCOPE_MEMORY (the default) drops the memory entry only; a second evict finds none."""
    load_all(server, [DASH])
    first = server.stub.Evict(pb.EvictRequest(webc_sha256=[DASH.sha256]))
    assert (list(first.evicted), list(first.deleted)) == ([DASH.sha256], [])
    second = server.stub.Evict(pb.EvictRequest(webc_sha256=[DASH.sha256]))
    assert list(second.evicted) == []
    assert names(server) == [f"{DASH.sha256}.bin"]


def test_evict_all_scope_deletes_the_file(server: Running) -> None:
    """EVICT_SCOPE_ALL drops memory and disk; the next Load downloads again."""
    load_all(server, [DASH, HELLO])
    response = server.stub.Evict(
        pb.EvictRequest(webc_sha256=[DASH.sha256], scope=pb.EVICT_SCOPE_ALL)
    )
    assert (list(response.evicted), list(response.deleted)) == ([DASH.sha256], [DASH.sha256])
    assert names(server) == [f"{HELLO.sha256}.bin"]
    assert server.load(DASH.url, DASH.sha256)[0].source == pb.SOURCE_DOWNLOAD


def test_validate_cache_warn_reports_a_corrupted_file(server: Running) -> None:
    """WARN lists files whose bytes do not hash to their name and leaves them."""
    load_all(server)
    path = server.app.settings.cache_dir / f"{DASH.sha256}.bin"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    response = server.stub.ValidateCache(pb.ValidateCacheRequest())
    assert response.checked_files == 5
    assert response.checked_bytes == sum(f.size for f in ALL)
    [mismatch] = response.mismatches
    assert mismatch.source == f"{DASH.sha256}.bin"
    assert mismatch.expected_sha256 == DASH.sha256
    assert mismatch.actual_sha256 == hashlib.sha256(bytes(data)).hexdigest()
    assert not mismatch.pruned
    assert path.exists()


def test_validate_cache_prune_deletes_mismatches_and_drops_them_from_memory(
    server: Running,
) -> None:
    """PRUNE deletes the mismatching file and its memory entry; the rest stays."""
    load_all(server)
    path = server.app.settings.cache_dir / f"{WABT.sha256}.bin"
    path.write_bytes(b"fail")
    response = server.stub.ValidateCache(pb.ValidateCacheRequest(mode=pb.CACHE_VALIDATION_PRUNE))
    assert [m.pruned for m in response.mismatches] == [True]
    assert not path.exists()
    assert WABT.sha256 not in server.app.loader.memory
    assert len(names(server)) == 4
    again = server.stub.ValidateCache(pb.ValidateCacheRequest())
    assert list(again.mismatches) == []


def test_validate_cache_deep_reports_packages_that_fail_their_own_checks(
    server: Running,
) -> None:
    """deep: a file that hashes to its name but whose atom fails its signature is reported."""
    data = bytearray(DASH.data)
    data[2000] ^= 0xFF  # inside the dash atom
    sha = hashlib.sha256(bytes(data)).hexdigest()
    (server.app.settings.cache_dir / f"{sha}.bin").write_bytes(bytes(data))
    load_all(server, [HELLO])
    shallow = server.stub.ValidateCache(pb.ValidateCacheRequest())
    assert list(shallow.mismatches) == []
    assert list(shallow.invalid_packages) == []
    deep = server.stub.ValidateCache(pb.ValidateCacheRequest(deep=True))
    [broken] = deep.invalid_packages
    assert broken.webc_sha256 == sha
    assert any("dash" in problem for problem in broken.problems)


def test_no_disk_cache_makes_cache_rpcs_failed_precondition(make_server) -> None:
    """Without a cache folder, Scan, Retain, ValidateCache and Evict(ALL) say so."""
    server = make_server(cache_dir=None)
    calls = [
        lambda: list(server.stub.Scan(pb.ScanRequest())),
        lambda: server.stub.Retain(pb.RetainRequest()),
        lambda: server.stub.ValidateCache(pb.ValidateCacheRequest()),
        lambda: server.stub.Evict(
            pb.EvictRequest(webc_sha256=[HELLO.sha256], scope=pb.EVICT_SCOPE_ALL)
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    response = server.stub.Evict(pb.EvictRequest(webc_sha256=[HELLO.sha256]))
    assert list(response.evicted) == []


def test_a_load_streaming_a_file_completes_when_retain_removes_it(make_server) -> None:
    """Removing a file mid-stream does not cut the stream: the mapping outlives the name."""
    server = make_server(memory_cache_bytes=0)
    server.load(WABT.url, WABT.sha256)
    stream = server.stub.Load(load_request(WABT.url, WABT.sha256, include_content=True))
    first = next(stream)
    assert first.package.source == pb.SOURCE_DISK
    server.stub.Retain(pb.RetainRequest(max_total_bytes=0))
    assert names(server) == []
    content = b"".join(r.chunk for r in stream)
    assert content == WABT.data


def test_concurrent_retain_and_loads_never_serve_torn_bytes(make_server) -> None:
    """Loads racing with Retain either succeed with exact bytes or download again; never torn."""
    server = make_server(memory_cache_bytes=0, workers=32)
    stop = threading.Event()
    loaded = threading.Semaphore(0)  # one release per finished Load
    failures: list[str] = []

    def loader(fixture) -> None:
        while not stop.is_set():
            try:
                _, content = server.load(fixture.url, fixture.sha256, include_content=True)
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")
                continue
            finally:
                loaded.release()
            if content != fixture.data:
                failures.append(f"torn content for {fixture.name}")

    threads = [threading.Thread(target=loader, args=(f,)) for f in (DASH, COWSAY, HELLO)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(40):
            assert loaded.acquire(timeout=30)  # Loads and Retains interleave, whatever the load
            server.stub.Retain(pb.RetainRequest(max_total_bytes=0))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []


def test_disk_cache_save_scan_remove_scan(tmp_path: Path) -> None:
    """The reference's scan/retain contract at the DiskCache level: save, scan, remove, scan."""
    from pkgloader.cache.disk import DiskCache
    from pkgloader.hashes import WebcHash

    cache = DiskCache(tmp_path / "c")
    assert list(cache.entries()) == []
    saved = []
    for body in (b"test1", b"test2"):
        spool = cache.spool(1 << 20)
        spool.write(body)
        actual = spool.finish()
        h = WebcHash(actual)
        cache.publish(spool, h)
        cache.discard(spool)
        saved.append(h)
    assert {e.hash for e in cache.entries()} == set(saved)
    assert cache.remove(saved[1])
    assert [e.hash for e in cache.entries()] == [saved[0]]
    assert list((tmp_path / "c" / "__temp__").iterdir()) == []


def test_cache_files_appear_under_their_name_only_complete(tmp_path: Path) -> None:
    """Atomic publish: while a package is written (3 x 1 MiB) its name does not exist and no
    entry is listed; it appears by one rename of the finished, fsynced temp file (the same
    inode, the full size), and nothing is left in __temp__/."""
    import os

    from pkgloader.cache.disk import DiskCache
    from pkgloader.hashes import WebcHash

    cache = DiskCache(tmp_path / "c")
    body = os.urandom(3 << 20)
    h = WebcHash(sha256(body))
    spool = cache.spool(1 << 30)
    for start in range(0, len(body), 1 << 20):
        spool.write(body[start : start + (1 << 20)])
        assert not cache.path(h).exists()
        assert list(cache.entries()) == []
    assert spool.finish() == h.hex
    temp = spool.path
    assert temp is not None
    assert temp.parent == cache.temp
    written = os.stat(temp)
    assert written.st_size == len(body)
    assert not cache.path(h).exists()
    assert cache.publish(spool, h) == f"{h.hex}.bin"
    published = os.stat(cache.path(h))
    assert (published.st_ino, published.st_size) == (written.st_ino, len(body))
    assert not temp.exists()
    cache.discard(spool)
    assert list(cache.temp.iterdir()) == []
    assert cache.path(h).read_bytes() == body
