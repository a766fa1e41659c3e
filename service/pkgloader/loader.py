"""`PackageLoader`: memory → disk → download, with single flight, the hash policy, and parsing.

This is the only place the tiers meet. The rules it keeps:

- Lookup order is memory, then disk (promoted to memory when it fits), then a download.
- Concurrent loads of the same (hash, URL) in this process share one download (single flight),
  and processes sharing the disk cache take a lease per package, so one replica downloads while
  the others wait for its file.
  The download runs on the loader's own thread pool, not on a caller's thread: a caller that
  leaves does not cancel it, and it completes into the cache for whoever asks next.
- The download streams into a temp file while it is hashed; it is published under its name only
  if it hashes to that name *and* parses as a package. So the disk cache never holds a file whose
  name is not the sha256 of its bytes, whatever hash policy a caller chose.
- The hash policy is applied per caller to the shared result: FAIL raises `HashMismatch`, WARN
  returns the content with a warning, NONE returns it silently; mismatching content is served
  from its unlinked temp file and never cached.
- A package is parsed before any Load reports success.
"""

from __future__ import annotations

import concurrent.futures
import logging
import mmap
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pkgloader import formats
from pkgloader.cache.disk import DiskCache
from pkgloader.cache.memory import MemoryCache
from pkgloader.cache.spool import Spool
from pkgloader.errors import (
    Cancelled,
    DeadlineExceeded,
    HashMismatch,
    InvalidPackage,
    PackageTooLarge,
    ResourceExhausted,
)
from pkgloader.fetch import Fetchers, parse_url
from pkgloader.hashes import WebcHash
from pkgloader.policy import HashPolicy, Source

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


@dataclass(eq=False)
class StoredPackage:
    """A parsed package and the buffer holding its bytes (process memory or a mapped file)."""

    hash: WebcHash
    size: int
    buffer: bytes | mmap.mmap
    container: formats.Container
    cache_name: str | None  # the file name in the disk cache, when the package is there
    #: Values derived from the (immutable) package by the layers above, built once per package.
    memo: dict[str, Any] = field(default_factory=dict)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The package bytes in order, `size` at a time; one copy per chunk, no more."""
        buffer = self.buffer
        for start in range(0, self.size, size):
            yield buffer[start : start + size]


class LoaderEvents:
    """What the loader reports as it works; the default ignores it all."""

    def downloaded(self, size: int, seconds: float, ok: bool) -> None:
        """A download ended (ok: it produced a package, whatever its hash)."""

    def hash_mismatch(self) -> None:
        """A caller received (or was refused) content whose hash differed from the expected."""

    def waiting(self) -> None:
        """A Load began to wait for a download in flight (one it started or joined)."""


@dataclass(frozen=True)
class LoadRequest:
    url: str
    sha256: str
    package_id: str = ""
    policy: HashPolicy | None = None  # None: the loader's default
    size_hint: int | None = None


@dataclass
class LoadResult:
    package: StoredPackage
    source: Source
    warnings: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Download:
    """What one shared download produced, before any caller's policy is applied."""

    actual: str
    package: StoredPackage | None
    parse_error: formats.FormatError | None
    source: Source = Source.DOWNLOAD


class PackageLoader:
    def __init__(
        self,
        *,
        fetchers: Fetchers,
        disk: DiskCache | None,
        memory: MemoryCache[StoredPackage],
        default_policy: HashPolicy = HashPolicy.FAIL,
        max_package_bytes: int = 4 << 30,
        max_downloads: int = 16,
        max_queued_downloads: int = 128,
        scratch_dir: Path | None = None,
        lease_ttl: float = 30.0,
        lease_wait: float = 900.0,
    ) -> None:
        self.fetchers = fetchers
        self.disk = disk
        self.memory = memory
        self.default_policy = default_policy
        self.max_package_bytes = max_package_bytes
        #: A replica's download lease is presumed dead after `lease_ttl` s without a heartbeat;
        #: waiting for another replica's download gives up after `lease_wait` s.
        self.lease_ttl = lease_ttl
        self.lease_wait = lease_wait
        self._pool = concurrent.futures.ThreadPoolExecutor(max_downloads, "download")
        self._max_flights = max_queued_downloads
        self._flights: dict[tuple[str, str], concurrent.futures.Future[_Download]] = {}
        self._lock = threading.Lock()
        # Without a disk cache, downloads still stream to a file (never whole into memory),
        # an unlinked one in a private folder.
        self._scratch = scratch_dir or Path(tempfile.gettempdir())
        #: Notified of downloads and hash mismatches (metrics hook in here).
        self.events: LoaderEvents = LoaderEvents()

    @property
    def inflight(self) -> int:
        return len(self._flights)

    # -- Load ---------------------------------------------------------------------------------

    def load(
        self,
        request: LoadRequest,
        *,
        alive: Callable[[], bool] | None = None,
        timeout: float | None = None,
    ) -> LoadResult:
        """Return the package `request` names; raise a `PkgloaderError` otherwise."""
        expected = WebcHash.parse(request.sha256)
        url = parse_url(request.url)  # memoized: a warm Load should cost microseconds
        if url.scheme == "file":
            self.fetchers.file.check(url)  # refuse a forbidden path even when it is cached
        policy = request.policy or self.default_policy
        if request.size_hint is not None and request.size_hint > self.max_package_bytes:
            raise _too_large(self.max_package_bytes, request.size_hint)

        cached = self.memory.get(expected.hex)
        if cached is not None:
            if self.disk is not None:
                # Renew the file's last-use stamp; a clock kept with the package spares even the
                # stat() on most hits.
                now = time.monotonic()
                if now - cached.memo.get("touched", -1e9) > self.disk.touch_interval / 2:
                    cached.memo["touched"] = now
                    self.disk.touch(expected)
            return LoadResult(cached, Source.MEMORY)
        from_disk = self._from_disk(expected)
        if from_disk is not None:
            return LoadResult(from_disk, Source.DISK)

        flight = self._flight(expected, str(url))
        self.events.waiting()
        download = self._await(flight, alive, timeout)
        warnings: list[str] = []
        if download.actual != expected.hex:
            mismatch = HashMismatch(
                expected=expected.hex, actual=download.actual, source=request.url
            )
            self.events.hash_mismatch()
            if policy is HashPolicy.FAIL:
                raise mismatch
            if policy is HashPolicy.WARN:
                log.warning("image hash mismatch", extra={"error": mismatch.message})
                warnings.append(mismatch.message)
        if download.parse_error is not None:
            raise _invalid(download.parse_error, request.url)
        assert download.package is not None
        return LoadResult(download.package, download.source, warnings)

    def _from_disk(self, h: WebcHash) -> StoredPackage | None:
        if self.disk is None:
            return None
        opened = self.disk.open(h)
        if opened is None:
            return None
        mapped, size = opened
        try:
            return self._keep(h, mapped, size, self.disk.name(h))
        except formats.FormatError as exc:
            # Not something we wrote (we publish only what parses): treat it as a miss, and the
            # download that follows replaces it.
            log.warning(
                "cached file does not parse; downloading again",
                extra={"sha256": h.hex, "error": str(exc)},
            )
            return None

    def _keep(
        self, h: WebcHash, mapped: mmap.mmap | bytes, size: int, name: str | None
    ) -> StoredPackage:
        """Parse a verified package and admit it to memory when it fits."""
        if self.memory.admits(size):
            data = bytes(mapped)  # one copy into process memory; the mapping is dropped
            package = StoredPackage(h, size, data, formats.open_package(data), name)
            self.memory.put(h.hex, package)
            return package
        return StoredPackage(h, size, mapped, formats.open_package(mapped), name)

    # -- single flight ------------------------------------------------------------------------

    def _flight(self, h: WebcHash, url: str) -> concurrent.futures.Future[_Download]:
        key = (h.hex, url)
        with self._lock:
            future = self._flights.get(key)
            if future is not None:
                return future
            if len(self._flights) >= self._max_flights:
                raise ResourceExhausted(
                    f"too many downloads in progress ({len(self._flights)}); try again later",
                    limit=str(self._max_flights),
                )
            future = concurrent.futures.Future()
            self._flights[key] = future
        self._pool.submit(self._run_flight, key, future, h, url)
        return future

    def _run_flight(
        self,
        key: tuple[str, str],
        future: concurrent.futures.Future[_Download],
        h: WebcHash,
        url: str,
    ) -> None:
        try:
            result = self._fetch_once(h, url)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            with self._lock:
                self._flights.pop(key, None)

    def _fetch_once(self, h: WebcHash, url: str) -> _Download:
        """Download `h` unless another process of the shared cache does (or did) it already."""
        if self.disk is None:
            return self._download(h, url)
        lease = self.disk.await_or_lease(h, ttl=self.lease_ttl, timeout=self.lease_wait)
        if lease is None:
            stored = self._from_disk(h)
            if stored is not None:
                return _Download(h.hex, stored, None, Source.DISK)
            return self._download(h, url)  # stored, then removed at once (Retain): fetch it
        with lease:
            return self._download(h, url)

    @staticmethod
    def _await(
        future: concurrent.futures.Future[_Download],
        alive: Callable[[], bool] | None,
        timeout: float | None,
    ) -> _Download:
        """Wait for a shared download; give up (it goes on) when the caller leaves or times out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return future.result(timeout=0.25)
            except concurrent.futures.TimeoutError:
                if alive is not None and not alive():
                    raise Cancelled("the caller went away") from None
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded(
                        f"the download did not finish within the call's {timeout:.1f}s deadline; "
                        "it continues, and a later Load will find it"
                    ) from None

    # -- downloading --------------------------------------------------------------------------

    def _download(self, h: WebcHash, url: str) -> _Download:
        parsed = parse_url(url)
        spool = self._new_spool()
        started, ok = time.monotonic(), False
        try:
            with self.fetchers.open(parsed) as chunks:
                for chunk in chunks:
                    spool.write(chunk)
            actual = spool.finish()
            mapped = spool.map()
            try:
                container = formats.open_package(mapped)
            except formats.FormatError as exc:
                return _Download(actual, None, exc)
            name = None
            if actual == h.hex and self.disk is not None and spool.path is not None:
                name = self.disk.publish(spool, h)
            ok = True
            if actual == h.hex:
                # A verified package: promote it exactly as a disk hit would be.
                if self.memory.admits(spool.size):
                    return _Download(actual, self._keep(h, mapped, spool.size, name), None)
                return _Download(
                    actual, StoredPackage(h, spool.size, mapped, container, name), None
                )
            # Mismatching content: served to callers whose policy allows it, never cached.
            return _Download(actual, StoredPackage(h, spool.size, mapped, container, None), None)
        finally:
            self._close_spool(spool)
            self.events.downloaded(spool.size, time.monotonic() - started, ok)

    def _new_spool(self) -> Spool:
        if self.disk is not None:
            return self.disk.spool(self.max_package_bytes)
        fd, path = tempfile.mkstemp(prefix="pkgloader-", suffix=".part", dir=self._scratch)
        os.unlink(path)  # memory-only mode: nothing to publish, nothing to leave behind
        return Spool(fd, None, self.max_package_bytes)

    def _close_spool(self, spool: Spool) -> None:
        if self.disk is not None:
            self.disk.discard(spool)
        else:
            spool.close()

    # -- shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _too_large(limit: int, size: int) -> PackageTooLarge:
    return PackageTooLarge(
        f"package of {size} bytes is larger than the limit of {limit} bytes", limit=str(limit)
    )


def _invalid(error: formats.FormatError, url: str) -> InvalidPackage:
    return InvalidPackage(f"not a valid package ({url}): {error}", url=url)
