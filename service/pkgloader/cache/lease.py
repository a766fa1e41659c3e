"""Leases: which replica downloads a package, among processes sharing one cache folder.

A lease is a file `__temp__/<name>.lease` created with O_EXCL; its holder renews its mtime every
`ttl / 3` seconds from a heartbeat thread. Another process that finds it waits; once the mtime is
older than `ttl` the holder is presumed dead (SIGKILL, a lost node) and the lease is taken over.
Plain files and mtimes, not POSIX locks, because they behave the same on every filesystem a PVC
may be (NFS without lockd included).

The lease file names the URL its holder downloads from. The in-process single flight is keyed by
(hash, URL), the lease by the hash alone: a holder fetching the hash from a URL that is slow,
stalled or simply wrong must not hold up a correct download of the same hash from another URL.
So a waiter with a different URL waits a bounded time (`foreign_wait`) and then downloads
without the lease (`Unleased`).

Correctness never rests on a lease: publishing is atomic and content-addressed, so in the rare
race where two processes both take over a stale lease, both download and both publish the same
bytes. The lease only makes that the exception instead of the rule.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from pkgloader.errors import CacheFull

_held = 0
_held_lock = threading.Lock()


def held_count() -> int:
    """Leases this process holds now (for the status page)."""
    return _held


class Lease:
    """A held lease. `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, path: Path, fd: int, ttl: float) -> None:
        global _held
        with _held_lock:
            _held += 1
        self.path = path
        self._fd = fd
        self._ino = os.fstat(fd).st_ino
        self._stop = threading.Event()
        self._beat = threading.Thread(
            target=self._heartbeat, args=(ttl / 3,), name="lease-heartbeat", daemon=True
        )
        self._beat.start()

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            with contextlib.suppress(OSError):
                os.utime(self._fd)

    @property
    def held(self) -> bool:
        """Whether the lease file at `path` is still ours (not taken over as stale)."""
        try:
            return os.stat(self.path).st_ino == self._ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        global _held
        if self._stop.is_set():
            return
        with _held_lock:
            _held -= 1
        self._stop.set()
        self._beat.join()
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._fd)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Unleased:
    """Go ahead without the lease: another holder's download is not one we may wait for."""

    def release(self) -> None:
        pass

    def __enter__(self) -> Unleased:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def holder_url(path: Path) -> str | None:
    """The URL the holder of the lease at `path` downloads from; None if unknown or gone."""
    try:
        holder = json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        return None
    url = holder.get("url") if isinstance(holder, dict) else None
    return url if isinstance(url, str) else None


def try_acquire(path: Path, ttl: float, url: str = "") -> Lease | None:
    """Take the lease at `path` if it is free or stale; None if a live holder has it."""
    for _ in range(3):  # a takeover frees the name; try again right away
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            if not _take_over_if_stale(path, ttl):
                return None
            continue
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # no inode left for the lease file
                raise CacheFull("no space left on the cache volume") from None
            raise
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
            "url": url,
        }
        with contextlib.suppress(OSError):
            os.write(fd, json.dumps(holder).encode())
        return Lease(path, fd, ttl)
    return None


def stale_lease(path: Path, ttl: float) -> bool:
    """Remove the lease at `path` if its holder is certainly dead; True if removed."""
    try:
        st = os.stat(path)
        holder = _holder(path)
        if holder is None:
            # No holder record: its creator was killed between creating the file and writing
            # the record, or is between the two right now (microseconds). Give it a moment.
            time.sleep(0.1)
            holder = _holder(path)
    except OSError:
        return False
    dead = holder is None or time.time() - st.st_mtime > ttl
    holder = holder or {}
    if not dead and holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        dead = pid == os.getpid() or (isinstance(pid, int) and not _alive(pid))
    if dead:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return dead


def _holder(path: Path) -> dict[str, object] | None:
    """The holder record of a lease, or None when it has none (empty or torn)."""
    try:
        holder = json.loads(path.read_bytes())
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_over_if_stale(path: Path, ttl: float) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True  # released meanwhile
    if time.time() - st.st_mtime <= ttl:
        return False
    # Rename first: only one of several takers wins the rename of this inode.
    graveyard = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, graveyard)
    except FileNotFoundError:
        return True
    with contextlib.suppress(FileNotFoundError):
        os.unlink(graveyard)
    return True
