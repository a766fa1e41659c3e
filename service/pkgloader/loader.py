"""`PackageLoader`: memory → disk → download, with single flight, the hash policy, and parsing.

This is the only place the tiers meet. The rules it keeps:

- Lookup order is memory, then disk (promoted to memory when it fits), then a download.
  Concurrent first Loads of a package on disk share one promotion (single flight per hash): each
  of them copying the file into memory multiplied peak RSS by the number of callers.
- Disk files and download spools are read with pread into bounded buffers, never mapped: a
  mapped file truncated under a Load killed the process with SIGBUS. Now such a Load fails alone
  (`CacheFileChanged`).
- Concurrent loads of the same (hash, URL) in this process share one download (single flight),
  and processes sharing the disk cache take a lease per package, so one replica downloads while
  the others wait for its file.
  The download runs on the loader's own thread pool, not on a caller's thread: a caller that
  leaves does not cancel it at once, and a caller that comes back (a retry with a short
  deadline) finds it still going. But a download nobody waits for is given only
  `abandon_grace` seconds more: if no caller has joined it again by then, it stops and frees
  its slot. (A projection of the remaining time was considered and not used: the size is often
  unknown, and a rate is easily faked by an upstream that bursts then stalls.)
  A download whose upstream sends less than the minimum transfer rate ends UNAVAILABLE.
- The download streams into a temp file while it is hashed; it is published under its name only
  if it hashes to that name *and* parses as a package. So the disk cache never holds a file whose
  name is not the sha256 of its bytes, whatever hash policy a caller chose.
- The hash policy is applied per caller to the shared result: FAIL raises `HashMismatch`, WARN
  returns the content with a warning, NONE returns it silently; mismatching content is served
  from its unlinked temp file and never cached.
- Except for a READER caller when the bytes were fetched with the server's own standing (an
  upstream token went with a request of the chain, or a file root was read): then mismatching
  content is never served, whatever the policy, and the computed hash is withheld. Otherwise
  any reader could use the server's tokens as their own (fetch any URL of a token authority
  under WARN or NONE), or learn the sha256 of any file a hard link in a file root names.
- A package is parsed before any Load reports success.
- What the layers above derive from a package (`StoredPackage.remember`: serialized metadata,
  verified atom digests) is charged to the memory tier with the package it holds. For a package
  only the disk cache holds, it goes to a small memo tier of its own (`memo_budget` bytes, LRU,
  keyed by the file's name, which is the sha256 of its bytes): a disk GetAtom then hashes its
  atom once per call, not twice, and a disk Load builds its metadata once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import queue
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.trace import StatusCode

from pkgloader import formats, traces
from pkgloader.cache.disk import DiskCache
from pkgloader.cache.lease import held_count
from pkgloader.cache.memory import MemoryCache
from pkgloader.cache.spool import Spool
from pkgloader.errors import (
    CacheFileChanged,
    Cancelled,
    DeadlineExceeded,
    HashMismatch,
    InvalidPackage,
    PackageTooLarge,
    ResourceExhausted,
)
from pkgloader.fetch import Fetchers, FetchReport, parse_url
from pkgloader.fetch.urls import authority
from pkgloader.hashes import WebcHash
from pkgloader.policy import CallerRole, HashPolicy, Source

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
#: Packages this large are promoted from disk to memory once the first Load that finds them is
#: done (it streams from the file); smaller ones are promoted first, a copy of a few ms.
BACKGROUND_PROMOTION = 16 << 20


# What a memoized value costs beyond its own bytes (the object, its slot in the memo).
_MEMO_OVERHEAD = 128
#: The memo tier of disk-only packages: a few hundred packages' metadata and atom digests. It is
#: apart from the memory tier so that PKGLOADER_MEMORY_CACHE_BYTES=0 still spares the rehash.
MEMO_BUDGET = 8 << 20
_V = TypeVar("_V")


@dataclass(eq=False)
class StoredPackage:
    """A parsed package and the source of its bytes (process memory or an open file)."""

    hash: WebcHash
    size: int
    source: formats.ByteSource
    container: formats.Container
    cache_name: str | None  # the file name in the disk cache, when the package is there
    #: Small values the core derives from the (immutable) package once (contents' checked
    #: hashes, tree sizes). Larger values kept by the layers above are theirs to keep; they
    #: report their size through `charge`.
    memo: dict[str, Any] = field(default_factory=dict)
    #: time.monotonic() of the last disk last-use stamp renewal (the loader's touch clock)
    touched: float = -1e9
    #: Told of bytes `charge` adds (set by the loader once the memory tier holds the package).
    on_grow: Callable[[int], None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _charged: int = 0

    @property
    def in_memory(self) -> bool:
        return isinstance(self.source, formats.MemorySource | formats.PiecesSource)

    @property
    def charged_bytes(self) -> int:
        """What this package holds in process memory: its bytes (when they are there), what
        its parse keeps, and what layers above keep for it (`charge`)."""
        held = self.size if self.in_memory else 0
        return held + self.container.retained_bytes + self._charged

    def remember(self, key: str, value: _V, cost: int | None = None) -> _V:
        """Keep `value` (built once per package) under `key` and charge it `cost` bytes (a
        `bytes` value: its length); the first wins."""
        with self._lock:
            # setdefault: a disk package's memo may be shared by other StoredPackage objects of
            # the same file (`_DiskMemo`), each with its own lock; the first value still wins.
            kept = self.memo.setdefault(key, value)
            if kept is not value:
                return kept  # type: ignore[no-any-return]
            if cost is None:
                assert isinstance(value, bytes | bytearray), "give the cost of a non-bytes value"
                cost = len(value)
            cost += _MEMO_OVERHEAD
            self._charged += cost
        self._grown(cost)
        return value

    def charge(self, extra: int) -> None:
        """`extra` more bytes are kept for as long as this package object lives (a layer above
        keeps a value derived from it): the memory tier, when it holds the package, charges them."""
        with self._lock:
            self._charged += extra
        self._grown(extra)

    def _grown(self, extra: int) -> None:
        with self._lock:
            grow = self.on_grow
        if grow is not None:
            grow(extra)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes | memoryview]:
        """The package bytes in order, `size` at a time (views when in memory, else one read
        into a buffer of `size` each). Raises `CacheFileChanged` if the file shrinks."""
        source = self.source
        with self._reading():
            for start in range(0, self.size, size):
                yield source.read_at(start, min(size, self.size - start))

    def views(self, size: int = CHUNK) -> Iterator[bytes | memoryview]:
        """As `chunks`, but a file is read into one buffer, again for each chunk: a view is
        valid only until the next is asked for (for a consumer that copies each at once, as
        the wire's framing does), and released then, so one kept longer fails when used
        instead of showing the next chunk's bytes. Reads into fresh 1 MiB buffers page-faulted
        most of their pages on the business pool (docs/performance.md, fifth session)."""
        if self.in_memory:
            yield from self.chunks(size)
            return
        source = self.source
        buffer = memoryview(bytearray(min(size, self.size)))
        with self._reading():
            for start in range(0, self.size, size):
                with buffer[: min(size, self.size - start)] as piece:
                    source.read_into(start, piece)
                    with piece.toreadonly() as view:
                        yield view

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except formats.ContentChanged as exc:
            log.warning(
                "cache file changed while it was served",
                extra={"sha256": self.hash.hex, "file": self.cache_name, "error": str(exc)},
            )
            raise CacheFileChanged(
                f"the cached file of {self.hash.hex} changed while it was being read (truncated "
                "or replaced by another process); try again",
                sha256=self.hash.hex,
                file=self.cache_name or "",
            ) from None


def _another(package: StoredPackage) -> StoredPackage:
    """Another object for the same file-backed package (its parse, source and memo shared), so
    that each caller holds one of its own and the end of one caller's use can be seen."""
    return dataclasses.replace(package)


@dataclass(eq=False)
class _DiskMemo:
    """The memo of a package the memory tier does not hold, kept across calls (each call opens
    its own `StoredPackage` of the file): an entry of the loader's memo tier."""

    memo: dict[str, Any] = field(default_factory=dict)
    charged_bytes: int = _MEMO_OVERHEAD  # grown through `MemoryCache.grow`


class LoaderEvents:
    """What the loader reports as it works; the default ignores it all."""

    def downloaded(self, size: int, seconds: float, ok: bool) -> None:
        """A download ended (ok: it produced a package, whatever its hash)."""

    def hash_mismatch(self) -> None:
        """A caller received (or was refused) content whose hash differed from the expected."""

    def waiting(self) -> None:
        """A Load began to wait for a download in flight (one it started or joined)."""

    def flights(self, count: int) -> None:
        """Downloads in flight in this process changed to `count` (called under the loader's
        lock, so the counts arrive in order: keep it quick)."""


@dataclass(frozen=True)
class LoadRequest:
    url: str
    sha256: str
    package_id: str = ""
    policy: HashPolicy | None = None  # None: the loader's default
    size_hint: int | None = None
    #: Who asks (the RPC layer knows; the loader decides what a reader may learn).
    role: CallerRole = CallerRole.ADMIN


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
    credentialed: bool = False  # see FetchReport: fetched with the server's token or file root


@dataclass(eq=False)
class _Promotion:
    """One disk-to-memory promotion of a package, shared by the callers that meet it."""

    future: concurrent.futures.Future[StoredPackage | None] = field(
        default_factory=concurrent.futures.Future
    )
    #: Running behind a caller already served from the file: others get that caller's
    #: package (`served`, the file parsed once) instead of waiting for the copy; None once
    #: the owner knows there is nothing to share (a small package, promoted first).
    behind: bool = False
    served: concurrent.futures.Future[StoredPackage | None] = field(
        default_factory=concurrent.futures.Future
    )


class _Flight:
    """One shared download in this process and the callers waiting for it."""

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.future: concurrent.futures.Future[_Download] = concurrent.futures.Future()
        self.report = FetchReport()
        self.waiters = 0  # changed under PackageLoader._lock
        self.idle_since = time.monotonic()  # when `waiters` last dropped to 0 (or creation)
        #: Tracing (None when off): the starting caller's context, which the download thread
        #: continues, and the download's span, which every waiting caller links to.
        self.parent = traces.current()
        self.span: Any = None


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
        abandon_grace: float = 10.0,
        foreign_lease_wait: float = 5.0,
        memo_budget: int = MEMO_BUDGET,
        events: LoaderEvents | None = None,
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
        #: A download nobody waits for stops after `abandon_grace` s; another replica's lease
        #: for the same hash from another URL is waited for at most `foreign_lease_wait` s.
        self.abandon_grace = abandon_grace
        self.foreign_lease_wait = foreign_lease_wait
        self._pool = concurrent.futures.ThreadPoolExecutor(max_downloads, "download")
        self._max_flights = max_queued_downloads
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._promotions: dict[str, _Promotion] = {}
        self._lock = threading.Lock()
        self._promoted = threading.Condition(self._lock)  # a promotion ended
        # Promotions behind a served package: one thread, since each is a memory copy of a large
        # package and a second would only compete for the cores the streams use. It is fed
        # from a weakref finalizer, which may run inside any allocation of any thread (a garbage
        # collection): SimpleQueue.put is the one hand-over safe there (no lock of ours, nor
        # the executor's, which that thread might hold).
        self._deferred: queue.SimpleQueue[tuple[WebcHash, _Promotion, int] | None] = (
            queue.SimpleQueue()
        )
        self._promoter: threading.Thread | None = None
        # Notified whenever a download ends, for callers that wait for room in the queue.
        self._room = threading.Condition(self._lock)
        # Without a disk cache, downloads still stream to a file (never whole into memory),
        # an unlinked one in a private folder.
        self._scratch = scratch_dir or Path(tempfile.gettempdir())
        self._disk_memos: MemoryCache[_DiskMemo] = MemoryCache(memo_budget)
        #: Notified of downloads, flights and hash mismatches (the metrics, passed in by `app`).
        self.events: LoaderEvents = events or LoaderEvents()

    @property
    def inflight(self) -> int:
        return len(self._flights)

    @property
    def waiting(self) -> int:
        """Callers in this process waiting for a download."""
        with self._lock:
            return sum(flight.waiters for flight in self._flights.values())

    @property
    def leases_held(self) -> int:
        """Cross-replica download leases this process holds now."""
        return held_count()

    # -- Load ---------------------------------------------------------------------------------

    def load_from_memory(self, request: LoadRequest, *, touch: bool = False) -> LoadResult | None:
        """The package `request` names when the memory tier holds it, else None; raises what
        `load` raises for a request it refuses.

        With `touch` false it does no I/O and never waits, so it may run where blocking is not
        allowed (the gRPC event loop): when the disk file's last-use stamp is due for renewal it
        answers None, and `load` (which may block) renews it. Nor does it check a request for a
        package memory does not hold (a file:// URL's check may touch the file system): `load`
        checks it."""
        expected = WebcHash.parse(request.sha256)
        if not touch and expected.hex not in self.memory:
            return None
        url = parse_url(request.url)  # memoized: a warm Load should cost microseconds
        if url.scheme == "file":
            # Refuse a forbidden path even when it is cached (memoized by the URL's text).
            self.fetchers.file.check(request.url)
        if request.size_hint is not None and request.size_hint > self.max_package_bytes:
            raise _too_large(self.max_package_bytes, request.size_hint)
        if traces.on():
            with traces.span(traces.MEMORY, {traces.SHA256: expected.hex}) as memory_span:
                cached = self.memory.get(expected.hex)
                if memory_span is not None:
                    memory_span.set_attribute(traces.HIT, cached is not None)
        else:
            cached = self.memory.get(expected.hex)  # the warm path: not even a no-op span
        if cached is None:
            return None
        if self.disk is not None:
            # Renew the file's last-use stamp; a clock kept with the package spares even the
            # stat() on most hits.
            now = time.monotonic()
            if now - cached.touched > self.disk.touch_interval / 2:
                if not touch:
                    return None
                cached.touched = now
                self.disk.touch(expected)
        return _traced(LoadResult(cached, Source.MEMORY))

    def load(
        self,
        request: LoadRequest,
        *,
        alive: Callable[[], bool] | None = None,
        timeout: float | None = None,
        wait_for_room: bool = False,
    ) -> LoadResult:
        """Return the package `request` names; raise a `PkgloaderError` otherwise.

        When the download queue is full a Load fails with `ResourceExhausted`, unless
        `wait_for_room` is set: then it waits (as long as `alive` and `timeout` allow) for a
        download to end. LoadTree sets it, so a large tree waits rather than failing.
        """
        hit = self.load_from_memory(request, touch=True)
        if hit is not None:
            return hit
        expected = WebcHash.parse(request.sha256)
        url = parse_url(request.url)
        policy = request.policy or self.default_policy
        from_disk = self._from_disk(expected)
        if from_disk is not None:
            return _traced(LoadResult(from_disk, Source.DISK))

        deadline = None if timeout is None else time.monotonic() + timeout
        flight = self._flight(
            (expected.hex, str(url)),
            lambda f: self._fetch_once(expected, str(url), f),
            alive if wait_for_room else None,
            deadline,
        )
        self.events.waiting()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        download = self._await(flight, alive, remaining if wait_for_room else timeout)
        warnings: list[str] = []
        if download.actual != expected.hex:
            self.events.hash_mismatch()
            if request.role is CallerRole.READER and download.credentialed:
                log.warning(
                    "image hash mismatch on a credentialed source; refused to a reader",
                    extra={
                        "expected": expected.hex,
                        "actual": download.actual,
                        "source": request.url,
                    },
                )
                raise HashMismatch(expected=expected.hex, actual=None, source=request.url)
            mismatch = HashMismatch(
                expected=expected.hex, actual=download.actual, source=request.url
            )
            if policy is HashPolicy.FAIL:
                raise mismatch
            if policy is HashPolicy.WARN:
                log.warning("image hash mismatch", extra={"error": mismatch.message})
                warnings.append(mismatch.message)
        if download.parse_error is not None:
            raise _invalid(download.parse_error, request.url)
        assert download.package is not None
        return _traced(LoadResult(download.package, download.source, warnings))

    def _from_disk(self, h: WebcHash) -> StoredPackage | None:
        """The package from the disk cache, promoted to memory when it fits; one promotion per
        hash at a time. A small package is promoted before it is returned, and callers that
        arrive meanwhile share that promotion. A large one (`BACKGROUND_PROMOTION` bytes or
        more) is returned reading from its file at once, and promoted once that first Load is
        done with it: copying it whole before the first chunk left made the first Load after an
        Evict a third as fast as a memory stream, and copying it while that Load streamed still
        cost it half its speed (fresh memory is page-faulted in). Meanwhile other callers share
        its parse (one parse, as the hardening issue's bound on concurrent first Loads
        requires) instead of waiting."""
        if self.disk is None:
            return None
        with self._lock:
            promotion = self._promotions.get(h.hex)
            owner = promotion is None
            if promotion is None:
                promotion = self._promotions[h.hex] = _Promotion()
        if not owner:
            with traces.span(traces.DISK, {traces.SHA256: h.hex}):
                # Set by the owner as soon as it knows (a few ms): the file-backed package
                # shared while a large package waits for its copy, else None.
                shared = promotion.served.result()
                if shared is not None:
                    return _another(shared)
                return promotion.future.result()
        behind = False
        try:
            # A promotion that finished between our memory miss and here did the work already.
            package = self.memory.get(h.hex)
            if package is None:
                package, behind = self._promote(h, promotion)
        except BaseException as exc:
            promotion.future.set_exception(exc)
            if not promotion.served.done():
                promotion.served.set_exception(exc)
            self._promotion_over(h)
            raise
        if not behind:
            promotion.future.set_result(package)
            if not promotion.served.done():
                promotion.served.set_result(None)
            self._promotion_over(h)
            return package
        assert package is not None
        # The copy starts when this Load (the first) is done with its own package object:
        # copying hundreds of MiB into fresh memory (page faults, ~0.5 ms per MiB here) while
        # the first Load streamed took CPU that stream needed, on two cores shared with its
        # client. Callers meanwhile get objects of their own over the same parse (`_another`),
        # so however many keep arriving, the copy is not put off past the first.
        mine = _another(package)
        self._start_promoter()
        weakref.finalize(mine, self._deferred.put, (h, promotion, self.memory.removals))
        return mine

    def _start_promoter(self) -> None:
        with self._lock:
            if self._promoter is None:
                self._promoter = threading.Thread(
                    target=self._promote_deferred, name="promote", daemon=True
                )
                self._promoter.start()

    def _promote_deferred(self) -> None:
        while (item := self._deferred.get()) is not None:
            self._promote_behind(*item)

    def _promotion_over(self, h: WebcHash) -> None:
        with self._lock:
            del self._promotions[h.hex]
            self._promoted.notify_all()

    def _promote_behind(self, h: WebcHash, promotion: _Promotion, stamp: int) -> None:
        """Promote `h` unless the memory tier was told to drop something since `stamp` (an
        Evict that came since the Load, or during this copy, wins: the copy stops, and the
        next Load promotes it again)."""
        try:
            package = self.memory.get(h.hex)
            if package is None and self.memory.removals == stamp:
                assert self.disk is not None
                source = self.disk.open(h)
                if source is not None:
                    package = self._admit_pieces(h, source, self.disk.name(h), stamp)
            promotion.future.set_result(package)
        except (formats.FormatError, OSError, MemoryError) as exc:  # costs only the copy
            log.warning(
                "promotion to memory failed; the package is served from disk",
                extra={"sha256": h.hex, "error": str(exc)},
            )
            promotion.future.set_result(None)
        finally:
            self._promotion_over(h)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until no promotion runs behind a served package (tests, benchmarks and an
        orderly shutdown); False if `timeout` passed first."""
        with self._lock:
            return self._promoted.wait_for(lambda: not self._promotions, timeout)

    def _from_file(self, h: WebcHash, source: formats.FileSource) -> StoredPackage | None:
        """The disk cache's file of `h`, parsed where it is (None when it does not parse)."""
        assert self.disk is not None
        try:
            container = _parse(h.hex, source, source.size)
        except formats.FormatError as exc:
            return self._unparsable(h, exc)
        return self._on_disk(h, source.size, source, container, self.disk.name(h))

    def _promote(self, h: WebcHash, promotion: _Promotion) -> tuple[StoredPackage | None, bool]:
        """The package from disk, and whether it is still to be promoted (behind the caller)."""
        assert self.disk is not None
        with traces.span(traces.DISK, {traces.SHA256: h.hex}) as disk_span:
            source = self.disk.open(h)
            if disk_span is not None:
                disk_span.set_attribute(traces.HIT, source is not None)
        if source is None:
            return None, False
        behind = source.size >= BACKGROUND_PROMOTION and self.memory.admits(source.size)
        if behind:
            with self._lock:  # from now on, callers that meet this promotion read the file too
                promotion.behind = True
        if behind:
            package = self._from_file(h, source)
            promotion.served.set_result(package)
            return package, package is not None
        try:
            return self._keep(h, source, source.size, self.disk.name(h)), False
        except formats.FormatError as exc:
            return self._unparsable(h, exc), False

    @staticmethod
    def _unparsable(h: WebcHash, exc: formats.FormatError) -> None:
        # Not something we wrote (we publish only what parses), or truncated under us:
        # treat it as a miss, and the download that follows replaces it.
        log.warning(
            "cached file does not parse; downloading again",
            extra={"sha256": h.hex, "error": str(exc)},
        )

    def _admit(
        self,
        h: WebcHash,
        source: formats.ByteSource,
        size: int,
        name: str | None,
        stamp: int | None = None,
    ) -> StoredPackage | None:
        """Read a verified package whole into memory, parse it there and admit it to the memory
        tier; None when it does not fit."""
        if not self.memory.admits(size):
            return None
        # One read into process memory; the file is closed when `source` goes.
        return self._admitted(h, formats.MemorySource(source.read_at(0, size)), name, stamp)

    def _admit_pieces(
        self, h: WebcHash, source: formats.FileSource, name: str | None, stamp: int
    ) -> StoredPackage | None:
        """`_admit` a CHUNK at a time (a stream of CHUNKs then reads views only), giving up as
        soon as the memory tier is told to drop something since `stamp`."""
        size = source.size
        if not self.memory.admits(size):
            return None
        pieces: list[bytes | memoryview] = []
        for start in range(0, size, CHUNK):
            if self.memory.removals != stamp:
                return None
            pieces.append(source.read_at(start, min(CHUNK, size - start)))
        return self._admitted(h, formats.PiecesSource(pieces, CHUNK), name, stamp)

    def _admitted(
        self, h: WebcHash, data: formats.ByteSource, name: str | None, stamp: int | None
    ) -> StoredPackage:
        """A verified package's bytes in process memory, parsed there and offered to the memory
        tier (refused when something was removed since `stamp`; with no `stamp`, offered as is)."""
        package = StoredPackage(h, data.size, data, _parse(h.hex, data, data.size), name)
        if self.memory.put(h.hex, package, unless_removed_since=stamp):
            package.on_grow = lambda extra: self.memory.grow(h.hex, extra)
        return package

    def _keep(
        self, h: WebcHash, source: formats.ByteSource, size: int, name: str | None
    ) -> StoredPackage:
        """Parse a verified package and admit it to memory when it fits."""
        package = self._admit(h, source, size, name)
        if package is not None:
            return package
        return self._on_disk(h, size, source, _parse(h.hex, source, size), name)

    def _on_disk(
        self,
        h: WebcHash,
        size: int,
        source: formats.ByteSource,
        container: formats.Container,
        name: str | None,
    ) -> StoredPackage:
        """A verified package read from its file, not held in memory. A file in the disk cache
        (`name`) hashes to its name, so what was derived from it before holds again: its memo
        is the memo tier's for `h`. (Content served under a hash it does not have never gets
        here, so it can never leave a wrong digest under that hash.)"""
        package = StoredPackage(h, size, source, container, name)
        if name is None or not self._disk_memos.enabled:
            return package
        shelf = self._disk_memos.get(h.hex)
        if shelf is None:
            fresh = _DiskMemo()
            shelf = fresh if self._disk_memos.put(h.hex, fresh) else self._disk_memos.get(h.hex)
        if shelf is not None:
            package.memo = shelf.memo
            package.on_grow = lambda extra: self._disk_memos.grow(h.hex, extra)
        return package

    # -- single flight ------------------------------------------------------------------------

    def _flight(
        self,
        key: tuple[str, str],
        work: Callable[[_Flight], _Download],
        wait: Callable[[], bool] | None = None,
        deadline: float | None = None,
    ) -> _Flight:
        """The flight for `key` ((sha256, url), or ("", url) for `load_url`), joined, or started
        to run `work` on the pool: the caller counts as its waiter until `_await`. With `wait`
        (the caller's `alive`), a full queue is waited on until `deadline` instead of refused."""
        with self._lock:
            while True:
                flight = self._flights.get(key)
                if flight is not None:
                    flight.waiters += 1
                    return flight
                if len(self._flights) < self._max_flights or wait is None:
                    break
                if not wait():
                    raise Cancelled("the caller went away")
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded(
                        "the download queue had no room before the call's deadline"
                    )
                # Slices of 0.25 s, as in `_await`: the caller's liveness is polled, not signalled.
                self._room.wait(0.25)
            if len(self._flights) >= self._max_flights:
                raise ResourceExhausted(
                    f"too many downloads in progress ({len(self._flights)}); try again later",
                    limit=str(self._max_flights),
                )
            flight = _Flight(key)
            flight.waiters = 1
            self._flights[key] = flight
            self.events.flights(len(self._flights))
        self._pool.submit(self._run_flight, flight, work)
        return flight

    def _run_flight(self, flight: _Flight, work: Callable[[_Flight], _Download]) -> None:
        """Run a flight's download on the pool, hand its outcome to every waiter, and unlist
        the flight (unless `_abandoned` did) so that the next Load starts a new one."""
        try:
            with _download_span(flight, flight.key[1], flight.key[0] or None):
                result = work(flight)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            flight.future.set_exception(exc)
        else:
            flight.future.set_result(result)
        finally:
            with self._lock:
                if self._flights.get(flight.key) is flight:
                    del self._flights[flight.key]
                    self._room.notify_all()
                    self.events.flights(len(self._flights))

    def _abandoned(self, flight: _Flight) -> bool:
        """True once nobody has waited for `flight` for `abandon_grace` s. Then the flight is
        also unlisted, under the same lock a caller joins it under: no caller can join a
        flight that is stopping (a new Load starts a new one)."""
        with self._lock:
            if flight.waiters or time.monotonic() - flight.idle_since < self.abandon_grace:
                return False
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
                self._room.notify_all()
                self.events.flights(len(self._flights))
            return True

    def _check_wanted(self, flight: _Flight | None) -> None:
        if flight is not None and self._abandoned(flight):
            log.info(
                "download abandoned",
                extra={"sha256": flight.key[0], "url": flight.key[1], "grace": self.abandon_grace},
            )
            raise Cancelled(f"download stopped: nobody waited for it for {self.abandon_grace:g}s")

    def _fetch_once(self, h: WebcHash, url: str, flight: _Flight | None = None) -> _Download:
        """Download `h` unless another process of the shared cache does (or did) it already."""
        # A flight queued for a download slot may have lost its callers while it waited.
        self._check_wanted(flight)
        if self.disk is None:
            result = self._download(h, url, flight)
        else:
            lease = self.disk.await_or_lease(
                h,
                ttl=self.lease_ttl,
                timeout=self.lease_wait,
                url=url,
                foreign_wait=self.foreign_lease_wait,
                give_up=None if flight is None else lambda: self._abandoned(flight),
            )
            if lease is None:
                stored = self._from_disk(h)
                if stored is not None:
                    return _Download(h.hex, stored, None, Source.DISK)
                # Stored, then removed at once (Retain): fetch it.
                result = self._download(h, url, flight)
            else:
                with lease:
                    result = self._download(h, url, flight)
        if flight is not None:
            result.credentialed = flight.report.credentialed
        return result

    def _await(
        self,
        flight: _Flight,
        alive: Callable[[], bool] | None,
        timeout: float | None,
    ) -> _Download:
        """Wait for a shared download; give up (it goes on a while) when the caller leaves or
        times out. Leaves the flight's waiters on the way out, however it goes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    return flight.future.result(timeout=0.25)
                except concurrent.futures.TimeoutError:
                    if alive is not None and not alive():
                        raise Cancelled("the caller went away") from None
                    if deadline is not None and time.monotonic() > deadline:
                        raise DeadlineExceeded(
                            f"the download did not finish within the call's {timeout:.1f}s "
                            f"deadline; it continues for {self.abandon_grace:g}s, and a Load "
                            "within that time joins it"
                        ) from None
        finally:
            traces.link(flight.span)
            with self._lock:
                flight.waiters -= 1
                if flight.waiters == 0:
                    flight.idle_since = time.monotonic()

    # -- downloading --------------------------------------------------------------------------

    def _download(self, h: WebcHash, url: str, flight: _Flight | None = None) -> _Download:
        parsed = parse_url(url)
        spool = self._new_spool()
        started, ok = time.monotonic(), False
        try:
            with self.fetchers.open(parsed, None if flight is None else flight.report) as chunks:
                for chunk in chunks:
                    self._check_wanted(flight)
                    spool.write(chunk)
            with traces.span(traces.PUBLISH) as hash_span:
                actual = spool.finish()
                if hash_span is not None:
                    hash_span.set_attributes({traces.SHA256: actual, traces.BYTES: spool.size})
            source = spool.source()
            try:
                container = _parse(actual, source, spool.size)
            except formats.FormatError as exc:
                return _Download(actual, None, exc)
            name = None
            if actual == h.hex and self.disk is not None and spool.path is not None:
                with traces.span(traces.PUBLISH, {traces.SHA256: actual}):
                    name = self.disk.publish(spool, h)
            ok = True
            if actual == h.hex:
                # A verified package: promote it exactly as a disk hit would be.
                if self.memory.admits(spool.size):
                    return _Download(actual, self._keep(h, source, spool.size, name), None)
                return _Download(
                    actual, self._on_disk(h, spool.size, source, container, name), None
                )
            # Mismatching content: served to callers whose policy allows it, never cached.
            return _Download(actual, StoredPackage(h, spool.size, source, container, None), None)
        finally:
            self._close_spool(spool)
            self.events.downloaded(spool.size, time.monotonic() - started, ok)
            if flight is not None and flight.span is not None:
                flight.span.set_attribute(traces.BYTES, spool.size)

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

    # -- cached lookup (the contents RPCs) -----------------------------------------------------

    def cached(self, sha256: str) -> tuple[StoredPackage, Source] | None:
        """The package named `sha256` from memory, else from disk (admitted to memory when it
        fits, as Load does); None when neither has it. Never downloads: a caller without a URL
        has nothing to download from."""
        h = WebcHash.parse(sha256)
        stored = self.memory.get(h.hex)
        if stored is not None:
            return stored, Source.MEMORY
        stored = self._from_disk(h)
        return None if stored is None else (stored, Source.DISK)

    # -- shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._deferred.put(None)  # a promotion under way finishes; none starts after it

    # -- by URL alone (what the resolver needs) ------------------------------------------------

    def load_url(
        self,
        url: str,
        *,
        alive: Callable[[], bool] | None = None,
        timeout: float | None = None,
    ) -> LoadResult:
        """Download a package whose sha256 is not known beforehand (a URL specifier).

        The bytes are hashed as they stream to disk; the computed sha256 is the package's name:
        it is published under it (after parsing, as every download is) and returned with it.
        There is no expected hash, so no hash policy applies. Concurrent calls for one URL share
        the download; a later call downloads again, since what a URL serves may change.
        """
        parsed = parse_url(url)
        if parsed.scheme == "file":
            self.fetchers.file.check(url)  # by the text parse_url accepted
        # "" never collides with a sha256 key of `load`.
        flight = self._flight(("", str(parsed)), lambda f: self._download_unnamed(str(parsed), f))
        download = self._await(flight, alive, timeout)
        if download.parse_error is not None:
            raise _invalid(download.parse_error, url)
        assert download.package is not None
        return LoadResult(download.package, download.source)

    def _download_unnamed(self, url: str, flight: _Flight) -> _Download:
        self._check_wanted(flight)
        spool = self._new_spool()
        started, ok = time.monotonic(), False
        try:
            with self.fetchers.open(parse_url(url), flight.report) as chunks:
                for chunk in chunks:
                    spool.write(chunk)
                    self._check_wanted(flight)
            with traces.span(traces.PUBLISH) as hash_span:
                h = WebcHash(spool.finish())
                if hash_span is not None:
                    hash_span.set_attributes({traces.SHA256: h.hex, traces.BYTES: spool.size})
            if flight.span is not None:
                flight.span.set_attribute(traces.SHA256, h.hex)
            known = self.memory.get(h.hex) or self._from_disk(h)
            if known is not None:  # the same bytes are cached already: keep that copy
                ok = True
                return _Download(h.hex, known, None)
            source = spool.source()
            try:
                container = _parse(h.hex, source, spool.size)
            except formats.FormatError as exc:
                return _Download(h.hex, None, exc)
            name = None
            if self.disk is not None and spool.path is not None:
                with traces.span(traces.PUBLISH, {traces.SHA256: h.hex}):
                    name = self.disk.publish(spool, h)
            ok = True
            if self.memory.admits(spool.size):
                return _Download(h.hex, self._keep(h, source, spool.size, name), None)
            return _Download(h.hex, self._on_disk(h, spool.size, source, container, name), None)
        finally:
            self._close_spool(spool)
            self.events.downloaded(spool.size, time.monotonic() - started, ok)
            if flight is not None and flight.span is not None:
                flight.span.set_attribute(traces.BYTES, spool.size)


def _traced(result: LoadResult) -> LoadResult:
    """`result`, its package and tier noted on the current span (the RPC's or a tree
    package's)."""
    if traces.on():
        package = result.package
        traces.annotate(
            {
                traces.SHA256: package.hash.hex,
                traces.TIER: result.source.value,
                traces.BYTES: package.size,
            }
        )
    return result


def _parse(sha256: str, source: formats.ByteSource, size: int) -> formats.Container:
    with traces.span(traces.PARSE, {traces.SHA256: sha256, traces.BYTES: size}):
        return formats.open_package(source)


@contextlib.contextmanager
def _download_span(flight: _Flight, url: str, sha256: str | None) -> Iterator[None]:
    """The download's span, on the download thread: a child of the caller that started the
    flight, whose context the thread continues (so the steps of the download are children of
    that caller's span too), and linked from every caller that waits (`_await`)."""
    if flight.parent is None:
        yield
        return
    parsed = parse_url(url)
    attributes: dict[str, Any] = {"thread.name": threading.current_thread().name}
    if sha256:
        attributes[traces.SHA256] = sha256
    if parsed.scheme in ("http", "https"):
        attributes[traces.UPSTREAM] = authority(parsed)  # host[:port]: no path, query or token
    span = traces.start(traces.DOWNLOAD, flight.parent, attributes)
    flight.span = span
    try:
        with traces.attached(flight.parent):
            yield
    except Exception as exc:
        if span is not None:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, type(exc).__name__)
        raise
    finally:
        if span is not None:
            span.end()


def _too_large(limit: int, size: int) -> PackageTooLarge:
    return PackageTooLarge(
        f"package of {size} bytes is larger than the limit of {limit} bytes", limit=str(limit)
    )


def _invalid(error: formats.FormatError, url: str) -> InvalidPackage:
    return InvalidPackage(f"not a valid package ({url}): {error}", url=url)
