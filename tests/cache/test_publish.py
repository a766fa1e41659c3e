"""`DiskCache.publish` keeps the cache's promise itself, on a real folder, with no gRPC: a temp
file is published under a name only when it is finished and is exactly that name's bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from pkgloader.cache.disk import DiskCache
from pkgloader.cache.spool import Spool
from pkgloader.errors import CacheBusy, FetchError, PublishRefused
from pkgloader.hashes import WebcHash

CONTENT = b"webc bytes " * 10_000
SHA = WebcHash(hashlib.sha256(CONTENT).hexdigest())
OTHER = WebcHash("ab" * 32)


def filled(disk: DiskCache, data: bytes = CONTENT, *, finish: bool = True) -> Spool:
    spool = disk.spool(max_bytes=len(data) + 1)
    for start in range(0, len(data), 4096):
        spool.write(data[start : start + 4096])
    if finish:
        spool.finish()
    return spool


def entry_names(disk: DiskCache) -> list[str]:
    return sorted(p.name for p in disk.root.iterdir() if p.is_file())


@pytest.fixture
def disk(tmp_path: Path) -> DiskCache:
    return DiskCache(tmp_path / "cache")


def test_a_finished_spool_is_published_under_its_hash(disk: DiskCache) -> None:
    """The happy path: the file appears under `<sha256>.bin` with the spooled bytes, and no
    temp file is left behind."""
    spool = filled(disk)
    try:
        assert disk.publish(spool, SHA, size=len(CONTENT)) == f"{SHA.hex}.bin"
    finally:
        disk.discard(spool)
    assert disk.path(SHA).read_bytes() == CONTENT
    assert os.listdir(disk.temp) == []


def test_a_spool_is_never_published_under_another_hash(disk: DiskCache) -> None:
    """A spool whose sha256 is not the name's is refused: nothing appears at either name, and
    the temp file stays for the caller's discard, which removes it."""
    spool = filled(disk)
    try:
        with pytest.raises(PublishRefused) as caught:
            disk.publish(spool, OTHER)
        assert caught.value.metadata["actual_sha256"] == SHA.hex
        assert entry_names(disk) == []
        assert spool.path is not None
        assert spool.path.exists()
    finally:
        disk.discard(spool)
    assert os.listdir(disk.temp) == []


def test_an_unfinished_spool_is_refused(disk: DiskCache) -> None:
    """Before `finish` (writer drained, fsync done) nothing is known of the content: refused."""
    spool = filled(disk, finish=False)
    try:
        with pytest.raises(PublishRefused):
            disk.publish(spool, SHA)
        assert entry_names(disk) == []
    finally:
        disk.discard(spool)


def test_a_size_other_than_the_expected_one_is_refused(disk: DiskCache) -> None:
    """The caller's expected size (webc_size) must be the spooled size."""
    spool = filled(disk)
    try:
        with pytest.raises(PublishRefused):
            disk.publish(spool, SHA, size=len(CONTENT) - 1)
        assert entry_names(disk) == []
    finally:
        disk.discard(spool)


def test_a_file_that_lost_bytes_after_hashing_is_refused(disk: DiskCache) -> None:
    """What is on disk must be what was counted and hashed: a temp file truncated behind the
    spool's back (a bad disk, another process) is never published."""
    spool = filled(disk)
    try:
        os.ftruncate(spool.fd, len(CONTENT) // 2)
        with pytest.raises(PublishRefused):
            disk.publish(spool, SHA)
        assert entry_names(disk) == []
    finally:
        disk.discard(spool)


def test_waiting_too_long_for_another_replica_is_a_cache_error_not_a_fetch_error(
    disk: DiskCache,
) -> None:
    """The storage layer raises its own error (CacheBusy) when another holder keeps a package's
    lease past the wait; nothing was fetched, so it is no FetchError."""
    held = disk.await_or_lease(SHA, ttl=60, timeout=5)
    assert held is not None
    try:
        with pytest.raises(CacheBusy) as caught:
            disk.await_or_lease(SHA, ttl=60, timeout=0)
        assert not isinstance(caught.value, FetchError)
    finally:
        held.release()


def test_entry_file_paths_stay_in_the_folder(disk: DiskCache) -> None:
    """`file(name)` accepts only cache entry names, so maintenance can build no other path."""
    assert disk.file(f"{SHA.hex.upper()}.bin") == disk.root / f"{SHA.hex.upper()}.bin"
    for bad in ("../x.bin", f"{SHA.hex}.part", "__temp__", f"sub/{SHA.hex}.bin"):
        with pytest.raises(ValueError, match="not a cache file name"):
            disk.file(bad)


def test_job_markers_are_shared_through_the_temp_folder(tmp_path: Path) -> None:
    """Two DiskCaches on one folder (two replicas) see one job lease and one last-run mark."""
    one, two = DiskCache(tmp_path / "c"), DiskCache(tmp_path / "c")
    assert one.job_last_run("size-limit") is None
    lease = one.job_lease("size-limit", ttl=60)
    assert lease is not None
    try:
        assert two.job_lease("size-limit", ttl=60) is None
        one.mark_job_run("size-limit")
        assert two.job_last_run("size-limit") is not None
    finally:
        lease.release()
    with pytest.raises(ValueError, match="not a job name"):
        one.job_lease("../escape", ttl=60)
