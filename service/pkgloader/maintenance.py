"""Cache maintenance: Scan, Retain, Evict and ValidateCache over both tiers.

The disk cache is the truth; the memory tier follows it (whatever leaves the disk leaves memory).
Every operation touches only names a cache entry can have (`<64 hex>.bin`): temp files and
anything else an operator put in the folder are never listed, hashed or deleted.

Reports list at most `REPORT_LIMIT` items of each kind and count them all: a cache of any size
gives a report of bounded size (a response must fit a client's 4 MiB receive limit).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pkgloader import formats
from pkgloader.cache.disk import DiskCache, Entry, FileId
from pkgloader.cache.memory import MemoryCache
from pkgloader.errors import NoDiskCache, ResourceExhausted
from pkgloader.hashes import WebcHash
from pkgloader.loader import StoredPackage

log = logging.getLogger(__name__)

#: Items of each kind a report lists; the counts beside them are always complete.
REPORT_LIMIT = 1000


@dataclass(frozen=True)
class RetainCriteria:
    """Each given criterion removes entries; nothing given removes nothing."""

    keep: frozenset[str] = frozenset()  # when non-empty: everything else goes
    remove: frozenset[str] = frozenset()
    unused_for: float | None = None  # seconds
    max_total_bytes: int | None = None
    dry_run: bool = False


@dataclass
class RetainOutcome:
    removed: list[Entry] = field(default_factory=list)  # the first REPORT_LIMIT
    kept_files: int = 0
    kept_bytes: int = 0
    removed_bytes: int = 0
    removed_files: int = 0

    @property
    def truncated(self) -> bool:
        return len(self.removed) < self.removed_files


@dataclass(frozen=True)
class Mismatch:
    name: str
    expected: str
    actual: str
    pruned: bool


@dataclass(frozen=True)
class Broken:
    name: str
    sha256: str
    problems: tuple[str, ...]
    pruned: bool


@dataclass
class ValidationReport:
    mismatches: list[Mismatch] = field(default_factory=list)  # the first REPORT_LIMIT
    invalid: list[Broken] = field(default_factory=list)  # the first REPORT_LIMIT
    checked_files: int = 0
    checked_bytes: int = 0
    mismatch_count: int = 0
    invalid_count: int = 0


class CacheMaintenance:
    def __init__(
        self, disk: DiskCache | None, memory: MemoryCache[StoredPackage], *, hash_threads: int = 0
    ) -> None:
        self.disk = disk
        self.memory = memory
        # hashlib releases the GIL, so files hash in parallel, one per core.
        self._threads = hash_threads or os.cpu_count() or 2
        # One validation at a time: each reads the whole cache on every core.
        self._validating = threading.Lock()

    def _require_disk(self, what: str) -> DiskCache:
        if self.disk is None:
            raise NoDiskCache(f"can not {what} - no disk cache configured (PKGLOADER_CACHE_DIR)")
        return self.disk

    def in_memory(self, h: str) -> bool:
        return h in self.memory

    def scan(self) -> Iterator[Entry]:
        return self._require_disk("scan the cache").entries()

    def evict(self, hashes: list[WebcHash], *, delete: bool) -> tuple[list[str], list[str]]:
        """Drop from memory (and, with `delete`, from disk). Returns (evicted, deleted)."""
        disk = self._require_disk("delete cache files") if delete else None
        evicted, deleted = [], []
        for h in dict.fromkeys(hashes):
            if self.memory.remove(h.hex) is not None:
                evicted.append(h.hex)
            if disk is not None and disk.remove(h):
                deleted.append(h.hex)
        return evicted, deleted

    def retain(
        self,
        criteria: RetainCriteria,
        *,
        listed: int = REPORT_LIMIT,
        decided: Callable[[], None] | None = None,
    ) -> RetainOutcome:
        """Remove what `criteria` select. The decision is made on one listing; an entry
        republished or used after it (another file, or a renewed mtime) is not removed.
        `decided` is called between the decision and the removals (tests use it to race)."""
        disk = self._require_disk("retain cache entries")
        now = time.time()
        entries = sorted(disk.entries(), key=lambda e: e.last_used, reverse=True)
        keep_list: list[Entry] = []
        doomed: list[Entry] = []
        for entry in entries:
            h = entry.hash.hex
            if (
                (criteria.keep and h not in criteria.keep)
                or h in criteria.remove
                or (criteria.unused_for is not None and now - entry.last_used > criteria.unused_for)
            ):
                doomed.append(entry)
            else:
                keep_list.append(entry)
        if criteria.max_total_bytes is not None:
            # Most recently used first: keep them while they fit, drop the tail.
            total, fitting = 0, []
            for entry in keep_list:
                if total + entry.size <= criteria.max_total_bytes:
                    total += entry.size
                    fitting.append(entry)
                else:
                    doomed.append(entry)
            keep_list = fitting
        if decided is not None:
            decided()
        outcome = RetainOutcome()
        for entry in doomed:
            if not criteria.dry_run:
                assert entry.file_id is not None
                if not disk.remove_unchanged(entry.name, entry.file_id):
                    continue  # removed by someone else, or not the file we judged: not ours
                self.memory.remove(entry.hash.hex)
            outcome.removed_files += 1
            if len(outcome.removed) < listed:
                outcome.removed.append(entry)
            outcome.removed_bytes += entry.size
        outcome.kept_files = len(keep_list)
        outcome.kept_bytes = sum(e.size for e in keep_list)
        return outcome

    def validate(
        self,
        *,
        prune: bool,
        deep: bool = False,
        listed: int = REPORT_LIMIT,
        hashed: Callable[[str], None] | None = None,
    ) -> ValidationReport:
        """Hash every cache file against its name (and with `deep` parse it); with `prune`,
        delete the bad ones, each only if its name still refers to the file that was judged.
        `hashed(name)` is called after each file is hashed, before anything is deleted (tests
        use it to race). Raises ResourceExhausted while another validation runs."""
        disk = self._require_disk("validate cache")
        if not self._validating.acquire(blocking=False):
            raise ResourceExhausted(
                "a cache validation is already running on this replica; try again once it is done"
            )
        try:
            return self._validate(disk, prune, deep, listed, hashed)
        finally:
            self._validating.release()

    def _validate(
        self,
        disk: DiskCache,
        prune: bool,
        deep: bool,
        listed: int,
        hashed: Callable[[str], None] | None,
    ) -> ValidationReport:
        report = ValidationReport()
        candidates = disk.validation_candidates()
        with concurrent.futures.ThreadPoolExecutor(self._threads, "validate") as pool:
            results = pool.map(lambda item: (item, disk.hash_file(item[0])), candidates)
            for (name, seen), actual in results:
                if actual is None:
                    continue  # removed while we looked
                if hashed is not None:
                    hashed(name)
                report.checked_files += 1
                report.checked_bytes += seen.size
                expected = name[:64].lower()
                if actual != expected:
                    log.warning(
                        "hash mismatch in cached image file",
                        extra={"file": name, "expected": expected, "actual": actual},
                    )
                    pruned = prune and self._drop(disk, name, seen, expected)
                    report.mismatch_count += 1
                    if len(report.mismatches) < listed:
                        report.mismatches.append(Mismatch(name, expected, actual, pruned))
                elif deep:
                    problems = _deep_check(disk, name)
                    if problems:
                        pruned = prune and self._drop(disk, name, seen, expected)
                        report.invalid_count += 1
                        if len(report.invalid) < listed:
                            report.invalid.append(Broken(name, expected, tuple(problems), pruned))
        return report

    def enforce_size_limit(
        self, max_bytes: int, *, interval: float, lease_ttl: float
    ) -> RetainOutcome | None:
        """Trim the disk cache to 90% of `max_bytes` (LRU) if it is over `max_bytes`.

        Replicas coordinate so that one of them does it per `interval`: the work happens under a
        lease, and a marker file's mtime records when it was last done; a replica that cannot
        take the lease, or finds the marker fresh, skips its turn. Returns what was removed, or
        None when it was not this replica's turn.
        """
        disk = self._require_disk("enforce a size limit")
        lease = disk.job_lease("size-limit", lease_ttl)
        if lease is None:
            return None
        with lease:
            last = disk.job_last_run("size-limit")
            if last is not None and time.time() - last < interval * 0.5:
                return None
            disk.mark_job_run("size-limit")
            total = sum(entry.size for entry in disk.entries())
            if total <= max_bytes:
                return RetainOutcome(kept_bytes=total)
            # Down to 90%, so the next package does not trigger another pass at once.
            outcome = self.retain(RetainCriteria(max_total_bytes=max_bytes * 9 // 10))
            log.info(
                "cache size limit enforced",
                extra={
                    "removed_files": outcome.removed_files,
                    "removed_bytes": outcome.removed_bytes,
                    "kept_bytes": outcome.kept_bytes,
                    "limit": max_bytes,
                },
            )
            return outcome

    def _drop(self, disk: DiskCache, name: str, seen: FileId, h: str) -> bool:
        # The memory copy may have been read from the bad file: it goes in any case.
        self.memory.remove(h)
        try:
            # Content is what is judged here: a use since (a renewed mtime) does not save it.
            removed = disk.remove_unchanged(name, seen, unused=False)
        except OSError as exc:
            log.error("could not delete cached image file", extra={"file": name, "error": str(exc)})
            return False
        if not removed:
            log.info(
                "cached image file changed since it was checked; left in place",
                extra={"file": name},
            )
        return removed


def _deep_check(disk: DiskCache, name: str) -> list[str]:
    # Opened from a path, the package is read with pread (never mapped): a file truncated
    # meanwhile is a ContentChanged problem, not a SIGBUS.
    try:
        container = formats.open_package(disk.file(name))
    except formats.FormatError as exc:
        return [str(exc)]
    except FileNotFoundError:
        return []
    try:
        return container.validate()
    except formats.FormatError as exc:  # ContentChanged: it shrank while it was checked
        return [str(exc)]
    finally:
        container.close()
