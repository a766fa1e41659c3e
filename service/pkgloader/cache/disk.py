"""`DiskCache`: the shared cache folder, `<lowercase hex>.bin` files with temp files in `__temp__/`.

The layout is the wasmer CLI's, so a folder it wrote can be served. The rules that make the
folder safe to share between processes and replicas:

- A file appears under its final name only complete, fsynced, and hashing to its name: it is
  written under `__temp__/`, checked, then published with one atomic rename, and the directory is
  fsynced. A file that does not hash to its name is never published.
- Every writer holds a POSIX lock on its temp file; on start-up, temp files whose lock can be
  taken belong to a dead process and are removed. Live writers of other replicas keep theirs.
- Readers open a file and read it with `pread` into bounded buffers, never through a mapping: a
  mapped file truncated under its reader (NFS, another replica, an operator) raises SIGBUS and
  kills the process, while a read only comes back short. A concurrent delete (Retain, Evict,
  prune) unlinks the name only, so a read in progress completes.
- Retain and prune decide on a snapshot (a listing, a hash) and delete later: they delete a name
  only while it still refers to the very file they judged (`remove_unchanged`), so a good file
  republished (or used) in between stays.
- Anything in `__temp__/` that no live writer holds and that has not changed for a while (an
  hour by default) is removed, whoever left it: the wasmer CLI's crashed `.tmpXXXXXX` files too.
- A download of one package by several replicas at once is avoided by a lease file per package
  in `__temp__/` (see `lease.py`): one replica downloads, the others wait for its file.
- Last use is the file's mtime, renewed on a hit only when older than `touch_interval`: not a
  write per hit, and independent of atime (volumes are often mounted noatime or relatime).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pkgloader.cache.lease import Lease, Unleased, holder_url, stale_lease, try_acquire
from pkgloader.cache.spool import Spool
from pkgloader.errors import CacheBusy, CacheFull, Cancelled, PublishRefused
from pkgloader.formats import FileSource
from pkgloader.hashes import WebcHash

log = logging.getLogger(__name__)

SUFFIX = ".bin"
_HASH_CHUNK = 1 << 20  # bytes read and hashed at a time
TEMP_DIR = "__temp__"
_ENTRY = re.compile(r"^[0-9a-f]{64}\.bin$")
# ValidateCache, like the reference, also checks names in upper or mixed case.
_ANY_CASE_ENTRY = re.compile(r"^[0-9a-fA-F]{64}\.bin$")


_ASIDE = ".removing"  # the suffix of a file `remove_unchanged` moved aside into `__temp__/`
# Bookkeeping of ours in `__temp__/` that is old by design (the size limit's last-run marker).
_TEMP_KEEP = frozenset({"size-limit.last"})


@dataclass(frozen=True, slots=True)
class FileId:
    """Which file a name referred to when it was looked at. A file republished under the name is
    another inode; one touched since (a use renews the mtime) has another mtime."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def same_file(self, other: FileId, *, used: bool = True) -> bool:
        """Whether `other` is this file; with `used`, also unused since (the same mtime)."""
        if used:
            return self == other
        return (self.device, self.inode, self.size) == (other.device, other.inode, other.size)


@dataclass(frozen=True, slots=True)
class Entry:
    """A package file in the cache."""

    hash: WebcHash
    size: int
    last_used: float  # seconds since the epoch
    name: str
    file_id: FileId | None = None  # as listed; None when not known


class DiskCache:
    def __init__(self, root: Path, *, touch_interval: float = 300.0) -> None:
        self.root = root
        self.temp = root / TEMP_DIR
        #: Waits for another holder's download lease: in progress now, and since start.
        self.lease_waiters = 0
        self.lease_waits = 0
        self._lease_lock = threading.Lock()
        self.touch_interval = touch_interval
        self.root.mkdir(parents=True, exist_ok=True)
        self.temp.mkdir(exist_ok=True)
        # This process's spools: a POSIX lock does not conflict with its own process, so the
        # temp sweep must know them by name (and never open them: closing any descriptor of a
        # file drops the process's lock on it).
        self._spools: weakref.WeakSet[Spool] = weakref.WeakSet()

    @staticmethod
    def name(h: WebcHash) -> str:
        return h.hex + SUFFIX

    def path(self, h: WebcHash) -> Path:
        return self.root / self.name(h)

    def file(self, name: str) -> Path:
        """The path of the cache file `name`; only names a cache entry can have are accepted
        (`<64 hex, any case>.bin`, as ValidateCache checks them), so no path leaves the folder."""
        if not _ANY_CASE_ENTRY.match(name):
            raise ValueError(f"not a cache file name: {name!r}")
        return self.root / name

    # -- coordination between replicas --------------------------------------------------------

    def job_lease(self, job: str, ttl: float) -> Lease | None:
        """The lease for a periodic job shared by every replica (`__temp__/<job>.lease`), or
        None while another live process holds it."""
        return try_acquire(self.temp / f"{_job(job)}.lease", ttl)

    def job_last_run(self, job: str) -> float | None:
        """When `job` was last marked done by any replica (seconds since the epoch), or None."""
        try:
            return (self.temp / f"{_job(job)}.last").stat().st_mtime
        except FileNotFoundError:
            return None

    def mark_job_run(self, job: str) -> None:
        """Record that `job` runs now (a marker file's mtime); call it under `job_lease`."""
        (self.temp / f"{_job(job)}.last").touch()

    # -- reading ------------------------------------------------------------------------------

    def open(self, h: WebcHash) -> FileSource | None:
        """The file for `h`, open for reading (the source owns the descriptor), or None when it
        is not cached."""
        path = self.path(h)
        try:
            # O_NOFOLLOW: a symlink at an entry name is not an entry (ELOOP); O_NONBLOCK: nor is
            # a FIFO, and opening one must not hang the call.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                return None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                os.close(fd)
                return None
            source = FileSource(fd, size=st.st_size, name=path.name)
        except BaseException:
            os.close(fd)
            raise
        self._touch(path, st.st_mtime)
        return source

    def contains(self, h: WebcHash) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.path(h)).st_mode)  # symlinks are not entries
        except FileNotFoundError:
            return False

    def touch(self, h: WebcHash) -> None:
        """Record a use of `h` (a memory hit), at most once per touch_interval."""
        path = self.path(h)
        with contextlib.suppress(OSError):
            self._touch(path, path.lstat().st_mtime)

    def _touch(self, path: Path, mtime: float) -> None:
        now = time.time()
        if now - mtime > self.touch_interval:
            # A read-only volume, or deleted meanwhile: last use is advisory. Never through a
            # symlink planted at the name: that would stamp a file outside the cache.
            with contextlib.suppress(OSError):
                os.utime(path, (now, now), follow_symlinks=False)

    # -- writing ------------------------------------------------------------------------------

    def spool(self, max_bytes: int) -> Spool:
        """A new locked temp file under `__temp__/` to stream a download into."""
        path = self.temp / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # __temp__ removed from under us (by an operator): recreate
            self.temp.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheFull("no space left on the cache volume") from None
            raise
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        spool = Spool(fd, path, max_bytes)
        self._spools.add(spool)
        return spool

    def publish(self, spool: Spool, h: WebcHash, *, size: int | None = None) -> str | None:
        """Move a finished spool to its final name. Returns the name, or None when a folder
        someone made at that name blocks it (the package is then served, not kept).

        The promise of this module, kept here and not left to the caller (as bazel-remote's
        `Put` checks the digest itself): a spool is published only when it is finished
        (fsynced), its sha256 is `h`, the file holds exactly the bytes counted into it, and,
        when the caller knows it, that is `size` bytes. Anything else raises `PublishRefused`
        and leaves the spool where it is, for the caller's `discard`.
        """
        assert spool.path is not None
        on_disk = os.fstat(spool.fd).st_size
        if spool.sha256 is None:
            raise PublishRefused("refusing to publish a temp file that is not finished")
        if spool.sha256 != h.hex:
            raise PublishRefused(
                f"refusing to publish {spool.sha256} under the name of {h.hex}",
                expected_sha256=h.hex,
                actual_sha256=spool.sha256,
            )
        if on_disk != spool.size or (size is not None and size != spool.size):
            raise PublishRefused(
                f"refusing to publish {h.hex}: {on_disk} bytes on disk, {spool.size} written"
                + ("" if size is None else f", {size} expected"),
                sha256=h.hex,
            )
        final = self.path(h)
        try:
            os.replace(spool.path, final)
        except IsADirectoryError:
            log.warning("a folder blocks a cache entry name", extra={"file": final.name})
            return None
        spool.path = None
        _fsync_dir(self.root)
        return final.name

    def discard(self, spool: Spool) -> None:
        """Close a spool and remove its temp file, if any (idempotent)."""
        spool.close()
        if spool.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool.path)
            spool.path = None

    def await_or_lease(
        self,
        h: WebcHash,
        *,
        ttl: float,
        timeout: float,
        poll: float = 0.05,
        url: str = "",
        foreign_wait: float | None = None,
        give_up: Callable[[], bool] | None = None,
    ) -> Lease | Unleased | None:
        """The download lease for `h`, or None as soon as `h` is stored (by whoever holds it).

        Waits while another live process holds the lease; takes it over once it is stale. A
        lease held for another URL than `url` is waited for at most `foreign_wait` s (None: as
        long as any), then `Unleased` says: download it yourself. `give_up()` true ends the
        wait (nobody wants the download any more) with `Cancelled`.
        """
        path = self.temp / f"{h.hex}.lease"
        deadline = time.monotonic() + timeout
        foreign_since: float | None = None
        waiting = False
        try:
            while True:
                if self.contains(h):
                    return None
                lease = try_acquire(path, ttl, url)
                if lease is not None:
                    if self.contains(h):  # stored between our look and our lease
                        lease.release()
                        return None
                    return lease
                if not waiting:  # counted once per wait, for the lease-wait metrics
                    waiting = True
                    with self._lease_lock:
                        self.lease_waits += 1
                        self.lease_waiters += 1
                now = time.monotonic()
                if give_up is not None and give_up():
                    raise Cancelled(
                        f"nobody waits for {h.hex} any more; stopped waiting for its lease"
                    )
                if foreign_wait is not None and holder_url(path) != url:
                    foreign_since = now if foreign_since is None else foreign_since
                    if now - foreign_since >= foreign_wait:
                        return Unleased()
                else:
                    foreign_since = None
                if now > deadline:
                    raise CacheBusy(
                        f"timed out after {timeout:.0f}s waiting for another replica to "
                        f"download {h.hex}",
                        sha256=h.hex,
                    )
                time.sleep(poll)
        finally:
            if waiting:
                with self._lease_lock:
                    self.lease_waiters -= 1

    def clean_temp(self, lease_ttl: float = 30.0, max_age: float | None = None) -> int:
        """At start-up: remove temp files and leases left by dead processes, and, with
        `max_age`, whatever else `remove_stale_temp` removes. Returns how many were removed.

        A temp file is dead when its lock can be taken. A lease is dead when it is stale, or
        when it names this host and a process that is gone (or this very process, which has
        only just started): a container restarted in place reuses its host name and PID.
        """
        removed = self._clean_own_temp(lease_ttl)
        if max_age is not None:
            removed += self.remove_stale_temp(max_age)
        return removed

    def remove_stale_temp(self, max_age: float) -> int:
        """Remove every file in `__temp__/` that has not changed for `max_age` seconds and that
        no live writer holds, whoever wrote it (the wasmer CLI's crashed `.tmpXXXXXX` files, our
        own). Safe while this process runs: its own spools are never touched. Folders are left
        alone. Returns how many were removed."""
        try:
            names = os.listdir(self.temp)
        except FileNotFoundError:
            return 0
        ours = {spool.path.name for spool in list(self._spools) if spool.path is not None}
        now = time.time()
        removed = 0
        for name in names:
            if name in ours or name in _TEMP_KEEP:
                continue
            path = self.temp / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            # A live writer renews the mtime as it writes (a lease holder every ttl/3).
            if stat.S_ISDIR(st.st_mode) or now - st.st_mtime <= max_age:
                continue
            if stat.S_ISREG(st.st_mode) and _locked_by_another(path):
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed += 1
        return removed

    def _clean_own_temp(self, lease_ttl: float) -> int:
        try:
            names = os.listdir(self.temp)
        except FileNotFoundError:
            return 0
        removed = sum(
            stale_lease(self.temp / name, lease_ttl) for name in names if name.endswith(".lease")
        )
        # Files moved aside by a removal (`remove_unchanged`) that a crash cut short: doomed
        # files, or (rarely) one that was about to be put back; either way only a cache miss.
        for name in (n for n in names if n.endswith(_ASIDE)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temp / name)
                removed += 1
        for name in (n for n in names if n.endswith(".part")):
            path = self.temp / name
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer (maybe another replica) holds it
            else:
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
            finally:
                os.close(fd)
        return removed

    # -- listing and removing -----------------------------------------------------------------

    def entries(self) -> Iterator[Entry]:
        """Every package file: names that are exactly `<64 lowercase hex>.bin`, regular files."""
        with os.scandir(self.root) as it:
            for item in it:
                if not _ENTRY.match(item.name):
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield Entry(
                        WebcHash(item.name[:64]), st.st_size, st.st_mtime, item.name, FileId.of(st)
                    )

    def remove(self, h: WebcHash) -> bool:
        """Delete the file for `h`. True if this call deleted it."""
        try:
            os.unlink(self.path(h))
        except (FileNotFoundError, IsADirectoryError):  # a folder at the name is not an entry
            return False
        return True

    def remove_name(self, name: str) -> bool:
        """Delete a cache file by name; only names a cache entry can have are accepted."""
        if not _ANY_CASE_ENTRY.match(name):
            raise ValueError(f"not a cache file name: {name!r}")
        try:
            os.unlink(self.root / name)
        except FileNotFoundError:
            return False
        return True

    def validation_candidates(self) -> list[tuple[str, FileId]]:
        """(name, identity) of every file ValidateCache checks: `<64 hex, any case>.bin`."""
        found = []
        with os.scandir(self.root) as it:
            for item in it:
                if _ANY_CASE_ENTRY.match(item.name) and item.is_file(follow_symlinks=False):
                    try:
                        found.append((item.name, FileId.of(item.stat(follow_symlinks=False))))
                    except FileNotFoundError:
                        continue
        return found

    def remove_unchanged(self, name: str, seen: FileId, *, unused: bool = True) -> bool:
        """Delete the cache file `name` only if it is still the file `seen` describes (the one
        that was listed or hashed) and, with `unused`, has not been used since (its mtime is
        the last use). True if this call deleted it.

        The name is moved aside into `__temp__/` first, with one atomic rename, and checked
        there: a file published under the name between the check and the unlink can then never
        be the one unlinked. A file that turns out to be another one is put back.
        """
        if not _ANY_CASE_ENTRY.match(name):
            raise ValueError(f"not a cache file name: {name!r}")
        path = self.root / name
        try:
            if not seen.same_file(FileId.of(os.lstat(path)), used=unused):
                return False
        except FileNotFoundError:
            return False
        aside = self.temp / f"{name}.{uuid.uuid4().hex}{_ASIDE}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            if self.temp.is_dir():
                return False  # the name went meanwhile
            self.temp.mkdir(exist_ok=True)  # removed from under us (by an operator): recreate
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                return False
        try:
            moved = FileId.of(os.lstat(aside))
        except FileNotFoundError:
            return False
        if seen.same_file(moved, used=unused):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside)
            return True
        # Published in the instant between our check and the rename: verified, so it goes back,
        # unless an even newer one took the name meanwhile.
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links on this filesystem, or not a regular file
            with contextlib.suppress(OSError):
                os.rename(aside, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
        return False

    def hash_file(self, name: str) -> str | None:
        """sha256 hex of a cache file, or None if it vanished or shrank while it was hashed."""
        try:
            fd = os.open(self.root / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            digest = hashlib.sha256()
            # Read into one reused buffer (bounded memory, no mapping to fault on); hashlib
            # releases the GIL for each piece, so several files hash in parallel on threads.
            buffer = bytearray(_HASH_CHUNK)
            view = memoryview(buffer)
            done = 0
            while done < size:
                n = os.preadv(fd, [view[: min(_HASH_CHUNK, size - done)]], done)
                if n == 0:
                    log.warning(
                        "cache file shrank while it was hashed",
                        extra={"file": name, "size": size, "hashed": done},
                    )
                    return None
                digest.update(view[:n])
                done += n
            return digest.hexdigest()
        finally:
            os.close(fd)


def _job(job: str) -> str:
    """A job name is part of a file name in `__temp__/`: keep it to a plain word."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", job):
        raise ValueError(f"not a job name: {job!r}")
    return job


def _locked_by_another(path: Path) -> bool:
    """Whether another process holds a POSIX lock on `path` (as our spools' writers do). A read
    lock is enough to test, so files of another user we may only read are tested too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot even look: leave it
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
