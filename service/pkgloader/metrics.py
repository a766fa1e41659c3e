"""Prometheus metrics, served on their own HTTP port (PKGLOADER_METRICS_LISTEN).

Each App gets its own registry (several servers can live in one test process). Labels are low
cardinality by construction: method, status code, source, outcome; never a URL, hash or token.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pkgloader.cache.disk import DiskCache
from pkgloader.cache.memory import MemoryCache
from pkgloader.loader import LoaderEvents, StoredPackage
from pkgloader.rpc.calls import CallRecord

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

    def describe(self) -> Iterator[Metric]:
        # Without describe(), registering the collector would call collect(): a full directory
        # scan at start-up, which must stay O(1) whatever the cache holds.
        yield GaugeMetricFamily("pkgloader_cache_entries", "Package files in the disk cache")
        yield GaugeMetricFamily("pkgloader_cache_bytes", "Bytes of package files in the disk cache")
        yield GaugeMetricFamily("pkgloader_cache_volume_bytes", _VOLUME_HELP)
        yield GaugeMetricFamily("pkgloader_cache_volume_free_bytes", _FREE_HELP)
        yield GaugeMetricFamily("pkgloader_lease_waiters", _WAITERS_HELP)
        yield CounterMetricFamily("pkgloader_lease_waits", _WAITS_HELP)

    def snapshot(self) -> tuple[int, int]:
        """(entries, bytes), rescanned when older than the ttl."""
        with self._lock:
            if time.monotonic() - self._at > self._ttl:
                entries = list(self._disk.entries())
                self._value = (len(entries), sum(e.size for e in entries))
                self._at = time.monotonic()
            return self._value

    def collect(self) -> Iterator[Metric]:
        count, size = self.snapshot()
        yield GaugeMetricFamily(
            "pkgloader_cache_entries", "Package files in the disk cache", value=count
        )
        yield GaugeMetricFamily(
            "pkgloader_cache_bytes", "Bytes of package files in the disk cache", value=size
        )
        # statvfs is one cheap syscall, so the volume is read fresh on every scrape: a volume
        # filling up (other replicas, other writers) must show at once.
        vfs = os.statvfs(self._disk.root)
        yield GaugeMetricFamily(
            "pkgloader_cache_volume_bytes", _VOLUME_HELP, value=vfs.f_blocks * vfs.f_frsize
        )
        yield GaugeMetricFamily(
            "pkgloader_cache_volume_free_bytes", _FREE_HELP, value=vfs.f_bavail * vfs.f_frsize
        )
        yield GaugeMetricFamily("pkgloader_lease_waiters", _WAITERS_HELP, self._disk.lease_waiters)
        yield CounterMetricFamily("pkgloader_lease_waits", _WAITS_HELP, self._disk.lease_waits)


_VOLUME_HELP = "Size of the volume that holds the disk cache"
_FREE_HELP = "Bytes available to pkgloader on the volume that holds the disk cache"
_WAITERS_HELP = "Downloads waiting now for another process's download lease of the same package"
_WAITS_HELP = "Waits for another process's download lease since start"


class Metrics(LoaderEvents):
    def __init__(
        self,
        memory: MemoryCache[StoredPackage],
        disk: DiskCache | None,
        *,
        max_cache_bytes: int = 0,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.started = time.time()
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
        # The question an operator asks of a slow Load is "which tier": the RPC histogram has no
        # source label (most methods have none), so Loads get their own, by source.
        self.load_seconds = Histogram(
            "pkgloader_load_duration_seconds",
            "Load latency by source tier (none: the Load failed before finding the package)",
            ["source"],
            buckets=_RPC_BUCKETS,
            registry=r,
        )
        self.load_failures = Counter(
            "pkgloader_load_failures",
            "Failed Loads by error reason (the ErrorInfo reason clients see)",
            ["reason"],
            registry=r,
        )
        Gauge("pkgloader_memory_cache_budget_bytes", "The memory cache's budget", registry=r).set(
            memory.budget
        )
        Gauge("pkgloader_cache_max_bytes", "The disk cache's size limit (0: none)", registry=r).set(
            max_cache_bytes if disk is not None else 0
        )
        # Each App has its own registry, so the process collector is registered here rather
        # than relying on the global default registry. Threads are not among its metrics.
        ProcessCollector(registry=r)
        Gauge(
            "pkgloader_process_threads", "Threads of the server process", registry=r
        ).set_function(threading.active_count)
        Gauge(
            "pkgloader_memory_cache_bytes", "Bytes held by the memory cache", registry=r
        ).set_function(lambda: memory.bytes)
        Gauge(
            "pkgloader_memory_cache_entries", "Packages held by the memory cache", registry=r
        ).set_function(lambda: len(memory))
        # Set by the loader's events (`flights`): the loader is built after, and given, us.
        self.inflight = Gauge(
            "pkgloader_inflight_downloads", "Downloads in progress in this process", registry=r
        )
        self.disk = _DiskCollector(disk) if disk is not None else None
        if self.disk is not None:
            r.register(self.disk)
        self._server: Any = None
        #: The HTTP endpoint's port once `serve` has started it.
        self.port: int | None = None
        self._rpc_children: dict[tuple[str, str], Any] = {}
        self._load_children: dict[tuple[str, str], Any] = {}
        self._load_seconds_children: dict[str, Any] = {}
        #: Successful Loads by source since start, for the status page's hit ratio.
        self.load_sources: dict[str, int] = {}

    # LoaderEvents
    def downloaded(self, size: int, seconds: float, ok: bool) -> None:
        self.downloads.labels("ok" if ok else "error").inc()
        self.download_bytes.inc(size)
        self.download_seconds.observe(seconds)

    def hash_mismatch(self) -> None:
        self.mismatches.inc()

    def flights(self, count: int) -> None:
        self.inflight.set(count)

    # interceptor observer
    def rpc(self, call: CallRecord) -> None:
        # Labelled children are looked up once per label set: .labels() costs a lock and a
        # dict build on every call, and this runs on every RPC.
        method, code, seconds = call.method, call.code, call.seconds
        histogram = self._rpc_children.get((method, code))
        if histogram is None:
            histogram = self.rpc_seconds.labels(method.rsplit("/", 1)[-1], code)
            self._rpc_children[(method, code)] = histogram
        histogram.observe(seconds)
        if method == _LOAD:
            source = call.source or "none"
            counter = self._load_children.get((source, code))
            if counter is None:
                counter = self._load_children[(source, code)] = self.loads.labels(source, code)
            counter.inc()
            latency = self._load_seconds_children.get(source)
            if latency is None:
                latency = self._load_seconds_children[source] = self.load_seconds.labels(source)
            latency.observe(seconds)
            if code == "OK":
                # A plain dict increment under the GIL: exact enough for a ratio on a page.
                self.load_sources[source] = self.load_sources.get(source, 0) + 1
            elif call.reason:
                self.load_failures.labels(call.reason).inc()
            if call.sent_bytes:
                self.served.inc(call.sent_bytes)

    def serve(self, address: str, status: Callable[[], Any] | None = None) -> int:
        """Start the HTTP endpoint: /metrics, and /status (JSON of `status()`, a dataclass)
        when given; returns its port."""
        host, _, port = address.rpartition(":")
        metrics_app = make_wsgi_app(self.registry)

        def route(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            if status is not None and environ.get("PATH_INFO") == "/status":
                body = json.dumps(dataclasses.asdict(status()), indent=2).encode() + b"\n"
                start_response(
                    "200 OK",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
                )
                return [body]
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]

        server = make_server(
            host.strip("[]"), int(port), route, _ThreadingServer, handler_class=_QuietHandler
        )
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        self._server = server
        self.port = int(server.server_address[1])
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, so a slow client never blocks the next probe."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No stderr line per scrape: Prometheus scrapes every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
