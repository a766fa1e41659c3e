"""`DiskCache` at its own level, on real temp folders, with no gRPC: reading, last use, listing,
removing only what was judged, the temp sweep, and the download leases."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from pkgloader.cache.disk import DiskCache, FileId
from pkgloader.cache.lease import Lease, Unleased, holder_url, try_acquire
from pkgloader.errors import CacheBusy, Cancelled, PackageTooLarge
from pkgloader.hashes import WebcHash

from tests.conftest import wait_until

DATA = b"package bytes " * 1000
SHA = WebcHash(hashlib.sha256(DATA).hexdigest())
OTHER = WebcHash("cd" * 32)


@pytest.fixture
def disk(tmp_path: Path) -> DiskCache:
    return DiskCache(tmp_path / "cache", touch_interval=60.0)


def store(disk: DiskCache, data: bytes = DATA) -> WebcHash:
    """Save `data` the way a download does: spool, finish, publish."""
    h = WebcHash(hashlib.sha256(data).hexdigest())
    spool = disk.spool(max_bytes=len(data))
    try:
        spool.write(data)
        spool.finish()
        assert disk.publish(spool, h) == disk.name(h)
    finally:
        disk.discard(spool)
    return h


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_a_stored_file_opens_and_reads_back(disk: DiskCache) -> None:
    """open returns a source over exactly the published bytes; a miss is None."""
    assert disk.open(SHA) is None
    store(disk)
    source = disk.open(SHA)
    assert source is not None
    try:
        assert source.size == len(DATA)
        assert bytes(source.read_at(0, source.size)) == DATA
    finally:
        source.close()
    assert disk.contains(SHA)


def test_what_is_not_a_regular_file_is_not_an_entry(disk: DiskCache, tmp_path: Path) -> None:
    """A symlink, a FIFO, an empty file or a folder at an entry name is a miss, never read
    (and a FIFO does not hang the open)."""
    target = tmp_path / "elsewhere"
    target.write_bytes(DATA)
    disk.path(SHA).symlink_to(target)
    assert disk.open(SHA) is None
    assert not disk.contains(SHA)
    os.mkfifo(disk.path(OTHER))
    assert disk.open(OTHER) is None
    empty = WebcHash("ee" * 32)
    disk.path(empty).touch()
    assert disk.open(empty) is None
    folder = WebcHash("ff" * 32)
    disk.path(folder).mkdir()
    assert disk.open(folder) is None
    assert not disk.remove(folder)
    # The empty file is a regular file, so it is listed (for Retain and ValidateCache to judge).
    assert [e.hash for e in disk.entries()] == [empty]


def test_a_use_renews_last_use_only_after_the_touch_interval(disk: DiskCache) -> None:
    """open and touch stamp the mtime when it is older than touch_interval, not on every hit."""
    store(disk)
    path = disk.path(SHA)
    age(path, 30)
    recent = path.stat().st_mtime
    disk.touch(SHA)
    source = disk.open(SHA)
    assert source is not None
    source.close()
    assert path.stat().st_mtime == recent
    age(path, 600)
    disk.touch(SHA)
    assert time.time() - path.stat().st_mtime < 60
    age(path, 600)
    source = disk.open(SHA)
    assert source is not None
    source.close()
    assert time.time() - path.stat().st_mtime < 60
    disk.touch(OTHER)  # not cached: nothing to stamp, no error


def test_entries_lists_only_package_files(disk: DiskCache) -> None:
    """Only `<64 lowercase hex>.bin` regular files are entries: temp files, other names,
    upper-case names and symlinks are not."""
    h = store(disk)
    (disk.root / "README").write_text("not an entry")
    (disk.root / (h.hex.upper() + ".bin")).write_bytes(b"x")
    (disk.root / (OTHER.hex + ".bin")).symlink_to(disk.path(h))
    spool = disk.spool(100)
    try:
        entries = list(disk.entries())
    finally:
        disk.discard(spool)
    assert [(e.hash, e.size, e.name) for e in entries] == [(h, len(DATA), disk.name(h))]
    assert entries[0].file_id == FileId.of(os.lstat(disk.path(h)))
    # ValidateCache's view is wider: any case.
    names = sorted(name for name, _ in disk.validation_candidates())
    assert names == sorted([disk.name(h), h.hex.upper() + ".bin"])


def test_remove_and_remove_name(disk: DiskCache) -> None:
    """remove says whether this call deleted the file; remove_name accepts only entry names,
    so no path can leave the folder."""
    h = store(disk)
    assert disk.remove(h)
    assert not disk.remove(h)
    store(disk)
    assert disk.remove_name(disk.name(h))
    assert not disk.remove_name(disk.name(h))
    with pytest.raises(ValueError, match="not a cache file name"):
        disk.remove_name("../outside.bin")
    with pytest.raises(ValueError, match="not a cache file name"):
        disk.file("__temp__")


def test_remove_unchanged_deletes_only_the_file_that_was_judged(disk: DiskCache) -> None:
    """A file republished (another inode) or used (another mtime) since it was listed stays;
    the very file listed goes; with unused=False a use does not save it."""
    h = store(disk)
    seen = FileId.of(os.lstat(disk.path(h)))
    # Republished in between: another file under the same name.
    disk.remove(h)
    store(disk)
    assert not disk.remove_unchanged(disk.name(h), seen)
    assert disk.contains(h)
    seen = FileId.of(os.lstat(disk.path(h)))
    age(disk.path(h), 1000)  # a use renews the mtime; here it moves it, which is the same
    assert not disk.remove_unchanged(disk.name(h), seen)
    assert disk.contains(h)
    assert disk.remove_unchanged(disk.name(h), seen, unused=False)
    assert not disk.contains(h)
    assert not disk.remove_unchanged(disk.name(h), seen)  # gone already
    assert os.listdir(disk.temp) == []  # nothing left aside
    with pytest.raises(ValueError, match="not a cache file name"):
        disk.remove_unchanged("x.bin", seen)


def test_remove_unchanged_recreates_a_temp_folder_removed_under_it(disk: DiskCache) -> None:
    """An operator deleting `__temp__/` does not make a removal fail."""
    h = store(disk)
    seen = FileId.of(os.lstat(disk.path(h)))
    disk.temp.rmdir()
    assert disk.remove_unchanged(disk.name(h), seen)
    assert disk.temp.is_dir()


def test_hash_file_hashes_what_is_on_disk(disk: DiskCache) -> None:
    """hash_file reads the file back (pread, bounded buffer); a missing file is None."""
    h = store(disk)
    assert disk.hash_file(disk.name(h)) == h.hex
    disk.path(h).write_bytes(b"changed")
    assert disk.hash_file(disk.name(h)) == hashlib.sha256(b"changed").hexdigest()
    assert disk.hash_file(disk.name(OTHER)) is None


def test_clean_temp_removes_what_dead_writers_left(disk: DiskCache) -> None:
    """At start-up: unlocked `.part` files, files a removal moved aside, and leases of a gone
    process on this host go; nothing else is touched."""
    (disk.temp / "dead.part").write_bytes(b"half a download")
    (disk.temp / f"{SHA.hex}.bin.abc.removing").write_bytes(b"doomed")
    lease = disk.temp / f"{OTHER.hex}.lease"
    # A holder on this host whose process is gone (no PID is that large).
    lease.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**30, "url": ""}))
    (disk.temp / "other.file").write_bytes(b"not ours to judge at start-up without max_age")
    assert disk.clean_temp(lease_ttl=30.0) == 3
    assert os.listdir(disk.temp) == ["other.file"]


def test_clean_temp_keeps_a_lease_of_a_live_holder(disk: DiskCache) -> None:
    """A fresh lease of another live holder (another host) is not removed at start-up."""
    lease = disk.temp / f"{SHA.hex}.lease"
    lease.write_text(json.dumps({"host": "another-replica", "pid": 1, "url": "http://x/"}))
    assert disk.clean_temp(lease_ttl=30.0) == 0
    assert lease.exists()
    age(lease, 120)  # no heartbeat for longer than the ttl: its holder is presumed dead
    assert disk.clean_temp(lease_ttl=30.0) == 1
    assert not lease.exists()


def test_remove_stale_temp_sweeps_old_files_but_never_our_spools(disk: DiskCache) -> None:
    """Anything in `__temp__/` unchanged for max_age goes (the wasmer CLI's `.tmpXXXXXX` too),
    except this process's spools, the size-limit marker, folders and fresh files."""
    spool = disk.spool(100)
    try:
        assert spool.path is not None
        age(spool.path, 7200)
        old = disk.temp / ".tmpAbC123"
        old.write_bytes(b"crashed wasmer download")
        age(old, 7200)
        fresh = disk.temp / "fresh.part"
        fresh.write_bytes(b"")
        folder = disk.temp / "folder"
        folder.mkdir()
        age(folder, 7200)
        disk.mark_job_run("size-limit")
        age(disk.temp / "size-limit.last", 7200)
        assert disk.remove_stale_temp(max_age=3600) == 1
        assert not old.exists()
        assert spool.path.exists()
        assert fresh.exists()
        assert folder.is_dir()
        assert disk.job_last_run("size-limit") is not None
    finally:
        disk.discard(spool)
    age(fresh, 7200)
    assert disk.clean_temp(max_age=3600) == 1  # `fresh.part`, now old and unlocked


def test_job_leases_are_exclusive_and_marked(disk: DiskCache) -> None:
    """A periodic job's lease is held by one holder at a time; its last run is recorded; job
    names are plain words (they become file names)."""
    assert disk.job_last_run("size-limit") is None
    first = disk.job_lease("size-limit", ttl=30.0)
    assert first is not None
    try:
        assert disk.job_lease("size-limit", ttl=30.0) is None
        disk.mark_job_run("size-limit")
        assert disk.job_last_run("size-limit") is not None
    finally:
        first.release()
    again = disk.job_lease("size-limit", ttl=30.0)
    assert again is not None
    again.release()
    with pytest.raises(ValueError, match="not a job name"):
        disk.job_lease("../escape", ttl=30.0)


def test_a_free_lease_is_taken_and_released(disk: DiskCache) -> None:
    """await_or_lease on a miss with no holder returns a held lease naming the URL; releasing it
    removes the file; once the package is stored there is nothing to lease."""
    lease = disk.await_or_lease(SHA, ttl=30.0, timeout=5.0, url="http://127.0.0.1/a")
    assert isinstance(lease, Lease)
    assert lease.held
    assert holder_url(lease.path) == "http://127.0.0.1/a"
    lease.release()
    lease.release()  # idempotent
    assert not lease.path.exists()
    store(disk)
    assert disk.await_or_lease(SHA, ttl=30.0, timeout=5.0) is None


def test_a_waiter_returns_once_the_holder_stores_the_file(disk: DiskCache) -> None:
    """While another holder has the lease, a waiter waits; when the file appears it returns None
    (no download of its own). The wait is counted for the metrics."""
    holder = try_acquire(disk.temp / f"{SHA.hex}.lease", 30.0, "http://127.0.0.1/a")
    assert holder is not None
    outcome: list[object] = []
    waiter = threading.Thread(
        target=lambda: outcome.append(
            disk.await_or_lease(SHA, ttl=30.0, timeout=30.0, poll=0.01, url="http://127.0.0.1/a")
        )
    )
    waiter.start()
    try:
        assert wait_until(lambda: disk.lease_waiters == 1, timeout=30)
        store(disk)
    finally:
        holder.release()
        waiter.join(30)
    assert outcome == [None]
    assert disk.lease_waits == 1
    assert disk.lease_waiters == 0


def test_a_lease_wait_ends_busy_cancelled_or_unleased(disk: DiskCache) -> None:
    """A live holder that never finishes: the wait times out (CacheBusy), ends when nobody wants
    the download (Cancelled), or, for a holder of another URL, yields Unleased."""
    holder = try_acquire(disk.temp / f"{SHA.hex}.lease", 30.0, "http://127.0.0.1/a")
    assert holder is not None
    try:
        with pytest.raises(CacheBusy):
            disk.await_or_lease(SHA, ttl=30.0, timeout=0.05, poll=0.01, url="http://127.0.0.1/a")
        with pytest.raises(Cancelled):
            disk.await_or_lease(SHA, ttl=30.0, timeout=30.0, poll=0.01, give_up=lambda: True)
        unleased = disk.await_or_lease(
            SHA, ttl=30.0, timeout=30.0, poll=0.01, url="http://127.0.0.1/b", foreign_wait=0.0
        )
        assert isinstance(unleased, Unleased)
    finally:
        holder.release()
    assert disk.lease_waiters == 0


def test_a_stale_lease_is_taken_over(disk: DiskCache) -> None:
    """A lease without a heartbeat for longer than its ttl belongs to a dead holder: the next
    caller takes it over."""
    path = disk.temp / f"{SHA.hex}.lease"
    path.write_text(json.dumps({"host": "gone", "pid": 1, "url": ""}))
    age(path, 120)
    lease = disk.await_or_lease(SHA, ttl=30.0, timeout=5.0)
    assert isinstance(lease, Lease)
    try:
        assert lease.held
        assert holder_url(path) == ""
    finally:
        lease.release()


def test_a_spool_is_recreated_when_the_temp_folder_vanished(disk: DiskCache) -> None:
    """An operator removing `__temp__/` does not break the next download."""
    disk.temp.rmdir()
    store(disk)
    assert disk.contains(SHA)


def test_a_spool_refuses_bytes_past_its_limit(disk: DiskCache) -> None:
    """The decoded size limit is the spool's: a write past max_bytes raises PackageTooLarge,
    and discarding leaves no temp file."""
    spool = disk.spool(max_bytes=10)
    try:
        spool.write(b"0123456789")
        with pytest.raises(PackageTooLarge, match="limit of 10 bytes"):
            spool.write(b"x")
    finally:
        disk.discard(spool)
    assert os.listdir(disk.temp) == []
