"""Prometheus metrics, served on their own HTTP port (PKGLOADER_METRICS_LISTEN).

Each App gets its own registry (several servers can live in one test process). Labels are low
cardinality by construction: method, status code, source, outcome; never a URL, hash or token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pkgloader.cache.disk import DiskCache
from pkgloader.cache.memory import MemoryCache
from pkgloader.loader import LoaderEvents, PackageLoader, StoredPackage

_SIZE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
_RPC_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
_LOAD = "/pkgloader.v1.PackageLoaderService/Load"


class _DiskCollector(Collector):
    """Cache size and entry count, from a directory scan at most every `ttl` seconds (a scrape
    must not list 100,000 files each time)."""

    def __init__(self, disk: DiskCache, ttl: float = 30.0) -> None:
        self._disk = disk
        self._ttl = ttl
        self._at = 0.0
        self._value = (0, 0)
        self._lock = threading.Lock()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without describe(), registering the collector would call collect(): a full directory
        # scan at start-up, which must stay O(1) whatever the cache holds.
        yield GaugeMetricFamily("pkgloader_cache_entries", "Package files in the disk cache")
        yield GaugeMetricFamily("pkgloader_cache_bytes", "Bytes of package files in the disk cache")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._at > self._ttl:
                entries = list(self._disk.entries())
                self._value = (len(entries), sum(e.size for e in entries))
                self._at = time.monotonic()
            count, size = self._value
        yield GaugeMetricFamily(
            "pkgloader_cache_entries", "Package files in the disk cache", value=count
        )
        yield GaugeMetricFamily(
            "pkgloader_cache_bytes", "Bytes of package files in the disk cache", value=size
        )


class Metrics(LoaderEvents):
    def __init__(
        self, loader: PackageLoader, memory: MemoryCache[StoredPackage], disk: DiskCache | None
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.loads = Counter(
            "pkgloader_loads",
            "Loads by source and outcome (status code)",
            ["source", "outcome"],
            registry=r,
        )
        self.served = Counter(
            "pkgloader_served_bytes", "Package bytes streamed to clients", registry=r
        )
        self.downloads = Counter(
            "pkgloader_downloads", "Downloads by outcome", ["outcome"], registry=r
        )
        self.download_bytes = Counter(
            "pkgloader_download_bytes", "Bytes downloaded (decoded)", registry=r
        )
        self.download_seconds = Histogram(
            "pkgloader_download_duration_seconds",
            "Download duration",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.mismatches = Counter(
            "pkgloader_hash_mismatches",
            "Loads whose content did not match the expected sha256",
            registry=r,
        )
        self.temp_removed = Counter(
            "pkgloader_temp_files_removed",
            "Files removed from the cache's __temp__/ as left by dead writers (any program's)",
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "pkgloader_rpc_duration_seconds",
            "RPC latency by method and status code",
            ["method", "code"],
            buckets=_RPC_BUCKETS,
            registry=r,
        )
        Gauge(
            "pkgloader_memory_cache_bytes", "Bytes held by the memory cache", registry=r
        ).set_function(lambda: memory.bytes)
        Gauge(
            "pkgloader_memory_cache_entries", "Packages held by the memory cache", registry=r
        ).set_function(lambda: len(memory))
        Gauge(
            "pkgloader_inflight_downloads", "Downloads in progress in this process", registry=r
        ).set_function(lambda: loader.inflight)
        if disk is not None:
            r.register(_DiskCollector(disk))
        self._server: Any = None
        self._rpc_children: dict[tuple[str, str], Any] = {}
        self._load_children: dict[tuple[str, str], Any] = {}

    # LoaderEvents
    def downloaded(self, size: int, seconds: float, ok: bool) -> None:
        self.downloads.labels("ok" if ok else "error").inc()
        self.download_bytes.inc(size)
        self.download_seconds.observe(seconds)

    def hash_mismatch(self) -> None:
        self.mismatches.inc()

    # interceptor observer
    def rpc(self, method: str, code: str, seconds: float, fields: dict[str, Any]) -> None:
        # Labelled children are looked up once per label set: .labels() costs a lock and a
        # dict build on every call, and this runs on every RPC.
        histogram = self._rpc_children.get((method, code))
        if histogram is None:
            histogram = self.rpc_seconds.labels(method.rsplit("/", 1)[-1], code)
            self._rpc_children[(method, code)] = histogram
        histogram.observe(seconds)
        if method == _LOAD:
            source = fields.get("source", "none")
            counter = self._load_children.get((source, code))
            if counter is None:
                counter = self._load_children[(source, code)] = self.loads.labels(source, code)
            counter.inc()
            if sent := fields.get("sent_bytes", 0):
                self.served.inc(sent)

    def serve(self, address: str) -> int:
        """Start the /metrics HTTP endpoint; returns its port."""
        host, _, port = address.rpartition(":")
        self._server, _ = start_http_server(
            int(port), addr=host.strip("[]"), registry=self.registry
        )
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
