"""`GET /status` on the metrics port: what one replica is and holds, as JSON, for people.

bazel-remote's `/status` is the model: a page an operator reads with `curl` (or
`pkgloader-client status`) when a replica misbehaves, without a Prometheus at hand. It holds
nothing secret: no token, no URL, no client identity; only sizes, counts, settings that are not
credentials, and the version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pkgloader import __version__
from pkgloader.cache.memory import MemoryCache
from pkgloader.loader import PackageLoader, StoredPackage
from pkgloader.metrics import Metrics


@dataclass(frozen=True)
class SourceStatus:
    """One resolver source (registry, directory, url) and when it last answered."""

    kind: str
    #: Where it is, without credentials: the registry's URL without its query, a folder.
    location: str
    #: Unix time of its last successful answer; None: none yet.
    last_success: float | None = None


@dataclass(frozen=True)
class StatusReport:
    version: str
    uptime_seconds: float
    cache_dir: str  # empty: memory only
    max_cache_bytes: int  # 0: no limit
    cache_entries: int
    cache_bytes: int
    memory_cache_bytes: int
    memory_cache_entries: int
    memory_cache_budget_bytes: int
    #: Successful Loads served from memory or disk over all successful Loads since start;
    #: None before the first.
    hit_ratio: float | None
    loads_by_source: dict[str, int]
    inflight_downloads: int
    leases_held: int
    sources: list[SourceStatus] = field(default_factory=list)


def report(
    *,
    loader: PackageLoader,
    memory: MemoryCache[StoredPackage],
    metrics: Metrics,
    max_cache_bytes: int,
    sources: list[SourceStatus] | None = None,
) -> StatusReport:
    entries, size = metrics.disk.snapshot() if metrics.disk is not None else (0, 0)
    loads = dict(metrics.load_sources)
    total = sum(loads.values())
    hits = loads.get("memory", 0) + loads.get("disk", 0)
    disk = loader.disk
    return StatusReport(
        version=__version__,
        uptime_seconds=round(time.time() - metrics.started, 3),
        cache_dir=str(disk.root) if disk is not None else "",
        max_cache_bytes=max_cache_bytes if disk is not None else 0,
        cache_entries=entries,
        cache_bytes=size,
        memory_cache_bytes=memory.bytes,
        memory_cache_entries=len(memory),
        memory_cache_budget_bytes=memory.budget,
        hit_ratio=round(hits / total, 4) if total else None,
        loads_by_source=loads,
        inflight_downloads=loader.inflight,
        leases_held=loader.leases_held,
        sources=sources or [],
    )
