"""Wiring: settings → caches → fetchers → loader → gRPC server (+ health, reflection), and the
server's life: `build`, `create_server`, `serve`. Nothing else constructs the graph."""

from __future__ import annotations

import logging
import random
import signal
import tempfile
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import httpx
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from pkgloader_client import SERVICE_NAME

from pkgloader import __version__, status_page
from pkgloader.cache.disk import DiskCache
from pkgloader.cache.memory import MemoryCache
from pkgloader.fetch import Fetchers, FileFetcher, HttpFetcher, MinRate
from pkgloader.fetch.guard import UpstreamPolicy
from pkgloader.fetch.transport import GuardedTransport
from pkgloader.loader import PackageLoader, StoredPackage
from pkgloader.maintenance import CacheMaintenance
from pkgloader.metrics import Metrics
from pkgloader.resolve import (
    CacheSource,
    DirectorySource,
    MultiSource,
    NamedSource,
    RegistrySource,
    Resolver,
    SourceState,
    UrlSource,
)
from pkgloader.rpc import server as rpc_server
from pkgloader.rpc import wire
from pkgloader.rpc.auth import TokenAuth
from pkgloader.rpc.interceptors import MAX_RESPONSE_BYTES, CallInterceptor, CallLimits
from pkgloader.rpc.reflection import CommentedReflection, commented_files
from pkgloader.rpc.server import Server
from pkgloader.rpc.servicer import PackageLoaderServicer
from pkgloader.settings import Settings
from pkgloader.status_page import StatusReport
from pkgloader.tracing import Tracing, from_env
from pkgloader.tree import TreeLoader

log = logging.getLogger(__name__)

USER_AGENT = f"pkgloader/{__version__}"

# Server options: a busy port must be an error, not a silently shared one; requests are small
# (the largest is a Retain with many hashes), responses carry chunks of up to 1 MiB.
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
    # grpc core's "overload protection" (on by default) refuses a new stream (RST_STREAM
    # REFUSED_STREAM) while the connection has more streams *allocated* than
    # grpc.max_concurrent_streams, and a stream stays allocated until Python drops its call
    # objects, well after the client saw it finish. With 64 calls in flight 0.1-0.7 % of warm
    # Loads were refused. Off, the limit counts open HTTP/2 streams: what clients are told and
    # honour (they queue beyond it). Streams a client resets still wait in core's pending-call
    # queue, which has its own limits (grpc.server.max_pending_requests), before Python sees them.
    ("grpc.http.overload_protection", 0),
]


@dataclass
class App:
    settings: Settings
    loader: PackageLoader
    maintenance: CacheMaintenance
    http: httpx.Client
    metrics: Metrics
    #: grpcio's asyncio health servicer (`health.aio`), as the servers are asyncio ones
    health: Any = field(default_factory=lambda: health.aio.HealthServicer())  # type: ignore[attr-defined]
    _scratch: tempfile.TemporaryDirectory[str] | None = None
    resolver: Resolver | None = None
    #: LoadTree's core: composes the loader and the resolver; its thread pool is closed with us.
    trees: TreeLoader | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    #: the servers' thread pools (`create_server`), shut down with the app
    _pools: list[futures.ThreadPoolExecutor] = field(default_factory=list)
    #: OpenTelemetry, when the OTEL_* variables turn it on (`tracing.from_env`); else None
    tracing: Tracing | None = None

    def start_background(self) -> None:
        """Background upkeep: the disk cache size limit, checked every size_check_interval, and
        stale temp files, swept every quarter of temp_max_age."""
        settings = self.settings
        disk = self.loader.disk
        if disk is None:
            return

        def sweep() -> None:
            every = settings.temp_max_age / 4
            while not self._stop.wait(every * random.uniform(0.8, 1.2)):  # noqa: S311 - jitter
                try:
                    removed = disk.remove_stale_temp(settings.temp_max_age)
                except Exception:
                    log.exception("stale temp file sweep failed")
                    continue
                if removed:
                    self.metrics.temp_removed.inc(removed)
                    log.info("removed stale temp files", extra={"count": removed})

        threading.Thread(target=sweep, name="temp-sweep", daemon=True).start()
        if not settings.max_cache_bytes:
            return

        def run() -> None:
            # Jitter, so replicas started together do not all look at the same moment.
            every = settings.size_check_interval
            while not self._stop.wait(every * random.uniform(0.8, 1.2)):  # noqa: S311 - jitter
                try:
                    self.maintenance.enforce_size_limit(
                        settings.max_cache_bytes,
                        interval=settings.size_check_interval,
                        lease_ttl=settings.lease_ttl,
                    )
                except Exception:
                    log.exception("cache size limit check failed")

        threading.Thread(target=run, name="size-limit", daemon=True).start()

    def status(self) -> StatusReport:
        """What `GET /status` on the metrics port shows."""
        source = None if self.resolver is None else self.resolver.source
        states: list[SourceState] = source.states() if isinstance(source, MultiSource) else []
        return status_page.report(
            loader=self.loader,
            memory=self.loader.memory,
            metrics=self.metrics,
            max_cache_bytes=self.settings.max_cache_bytes,
            sources=[status_page.SourceStatus(s.kind, s.location, s.last_success) for s in states],
        )

    def close(self) -> None:
        self._stop.set()
        for pool in self._pools:
            pool.shutdown(wait=False)
        self.metrics.close()
        if self.trees is not None:
            self.trees.close()
        self.loader.close()
        self.http.close()
        if self.tracing is not None:
            self.tracing.shutdown()  # flushes the spans still queued
        if self._scratch is not None:
            self._scratch.cleanup()


def build(settings: Settings) -> App:
    """Construct the object graph from validated settings."""
    policy = UpstreamPolicy(settings.upstream_allow)
    limits = httpx.Limits(
        max_connections=settings.max_downloads * 2,
        max_keepalive_connections=settings.max_downloads,
    )
    http = httpx.Client(
        timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
        transport=GuardedTransport(policy, limits),
        follow_redirects=False,  # HttpFetcher follows them itself, checking every hop
        trust_env=False,  # no proxy or netrc from the environment: tokens come from one file
    )
    fetchers = Fetchers(
        HttpFetcher(
            http,
            user_agent=USER_AGENT,
            tokens=settings.tokens,
            deadline=settings.download_timeout,
            guard=policy.check_url,
            plaintext_token_authorities=settings.plaintext_token_authorities,
            min_rate=(
                MinRate(settings.min_transfer_bytes, settings.min_transfer_interval)
                if settings.min_transfer_bytes
                else None
            ),
        ),
        FileFetcher(settings.file_roots),
    )
    disk = None
    removed = 0
    if settings.cache_dir is not None:
        disk = DiskCache(settings.cache_dir, touch_interval=settings.touch_interval)
        # Before the server exists, so before SERVING.
        removed = disk.clean_temp(settings.lease_ttl, settings.temp_max_age)
        if removed:
            log.info("removed temp files left by a crash", extra={"count": removed})
    scratch = None if disk else tempfile.TemporaryDirectory(prefix="pkgloader-")
    memory: MemoryCache[StoredPackage] = MemoryCache(settings.memory_cache_bytes)
    metrics = Metrics(memory, disk, max_cache_bytes=settings.max_cache_bytes)
    loader = PackageLoader(
        fetchers=fetchers,
        disk=disk,
        memory=memory,
        default_policy=settings.hash_validation,
        max_package_bytes=settings.max_package_bytes,
        max_downloads=settings.max_downloads,
        max_queued_downloads=settings.max_queued_downloads,
        scratch_dir=Path(scratch.name) if scratch else None,
        lease_ttl=settings.lease_ttl,
        lease_wait=settings.download_timeout,
        abandon_grace=settings.abandon_grace,
        foreign_lease_wait=settings.foreign_lease_wait,
        events=metrics,
    )
    metrics.temp_removed.inc(removed)
    app = App(settings, loader, CacheMaintenance(disk, memory), http, metrics, _scratch=scratch)
    app.resolver = build_resolver(settings, loader, http, fetchers.http, policy)
    app.trees = TreeLoader(loader, app.resolver)
    # --- tracing hook (issue 13.1): only when the OTEL_* variables ask for it ---
    app.tracing = from_env()
    if app.tracing is not None:
        app.tracing.instrument(http)
        app.tracing.start()
    return app


def build_resolver(
    settings: Settings,
    loader: PackageLoader,
    http: httpx.Client,
    fetcher: HttpFetcher,
    policy: UpstreamPolicy,
) -> Resolver:
    """Resolve's sources in wasmer's fixed order: (for sha256: specifiers, the cache first), the
    registry, the package folders, a URL download. The registry shares the download client, its
    outbound policy and the fetcher's token rule."""
    sources: list[NamedSource] = [CacheSource(loader)]
    if settings.registry_url:
        sources.append(
            RegistrySource(
                settings.registry_url,
                http,
                user_agent=USER_AGENT,
                auth_headers=fetcher.headers,
                guard=policy.check_url,
                ttl=settings.registry_ttl,
            )
        )
    if settings.package_dirs:
        sources.append(DirectorySource(settings.package_dirs, loader.fetchers.file))
    sources.append(UrlSource(loader, timeout=settings.download_timeout))
    return Resolver(MultiSource(sources))


def make_servicer(
    app: App, kind: type[PackageLoaderServicer] = PackageLoaderServicer
) -> PackageLoaderServicer:
    """The servicer over the app's parts (a subclass may be named: tests' faulty servicers)."""
    return kind(
        app.loader,
        app.maintenance,
        app.settings.call_timeout,
        resolver=app.resolver,
        trees=app.trees,
    )


def create_server(
    app: App,
    address: str | None = None,
    *,
    servicer: PackageLoaderServicer | None = None,
    interceptors: Sequence[aio.ServerInterceptor[Any, Any]] = (),
    credentials: grpc.ServerCredentials | None = None,
    services: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
) -> tuple[Server, int]:
    """A server ready to start (not started) on `address` (default: the settings' listen);
    returns it and its port.

    Its parts, each defaulting to what the settings make: the servicer (`make_servicer`),
    interceptors in front of ours (what a gateway would do; asyncio ones), the TLS credentials,
    and services served beside ours, health and reflection. Whatever is passed in, the rest is
    production's: the call interceptor (auth, limits, error mapping, access log, metrics), the
    business thread pool, the channel options."""
    settings = app.settings
    auth = TokenAuth(settings.auth_tokens, settings.auth_exempt) if settings.auth_tokens else None
    # Blocking calls (everything but a memory hit, health and reflection) run on `workers`
    # threads; health and reflection answer on the event loop however busy those are.
    business = futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="rpc")
    app._pools.append(business)
    limits = CallLimits(
        # Below the pool, so that one connection never holds every worker.
        content_streams_per_connection=max(
            1, min(settings.max_content_streams_per_connection, settings.workers - 1)
        ),
        send_timeout=settings.send_timeout,
        # Reflection streams, each waiting for its client's next request.
        infra_streams=max(1, settings.health_workers - 1),
        # A third of them per connection: one client's streams leave room for another's grpcurl.
        infra_streams_per_connection=max(1, (settings.health_workers - 1) // 3),
        infra_idle_timeout=settings.reflection_idle_timeout,
        # Beyond this a call is refused at once (RESOURCE_EXHAUSTED), not queued.
        max_calls=settings.workers * 16,
    )
    tracing = app.tracing.server_interceptor() if app.tracing else None
    servicer = servicer or make_servicer(app)
    address = address or settings.listen
    credentials = credentials or _tls_credentials(settings)

    def make() -> tuple[aio.Server, int]:
        server = aio.server(
            interceptors=[
                *interceptors,
                CallInterceptor(
                    observers=[app.metrics.rpc],
                    auth=auth,
                    limits=limits,
                    # tracing hook (issue 13.1): absent, not idle, when tracing is off
                    tracing=tracing,
                    pool=business,
                ),
            ],
            options=[
                *SERVER_OPTIONS,
                ("grpc.max_receive_message_length", settings.max_request_bytes),
                ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
            ],
        )
        wire.register(servicer, server)
        if services:
            server.add_generic_rpc_handlers(tuple(services))
        health_pb2_grpc.add_HealthServicer_to_server(app.health, wire.GenericOnly(server))
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            CommentedReflection(
                [
                    SERVICE_NAME,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ],
                commented_files(),
            ),
            wire.GenericOnly(server),
        )
        return server, _listen(server, address, credentials)

    return Server.build(make)


def _listen(server: aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {address}: the address is in use or not available")
    return port


def _tls_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def create_health_server(app: App, address: str) -> tuple[Server, int]:
    """A plaintext server with only the health service (the same status as the main port).

    Kubernetes' native gRPC probes cannot speak TLS; with TLS on the main port they probe this
    one instead. It serves nothing but grpc.health.v1.Health, so it exposes no package data.
    """

    def make() -> tuple[aio.Server, int]:
        server = aio.server(options=SERVER_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(app.health, wire.GenericOnly(server))
        return server, _listen(server, address, None)

    return Server.build(make)


def set_serving(app: App, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )

    async def set_all() -> None:
        for name in ("", SERVICE_NAME):
            await app.health.set(name, status)

    # The health servicer's watchers wait on the servers' loop: it is told there.
    rpc_server.run(set_all())


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT: health NOT_SERVING, then stop with the grace period."""
    app = build(settings)
    server, port = create_server(app)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    health_server = None
    if settings.health_listen:
        health_server, _ = create_health_server(app, settings.health_listen)
        health_server.start()
    if settings.metrics_listen:
        app.metrics.serve(settings.metrics_listen, status=app.status)
    app.start_background()
    set_serving(app, True)
    log.info(
        "serving",
        extra={
            "listen": settings.listen,
            "port": port,
            "cache_dir": str(settings.cache_dir or ""),
            "memory_cache_bytes": settings.memory_cache_bytes,
            "version": __version__,
        },
    )
    stop.wait()
    set_serving(app, False)
    server.stop(settings.grace_period).wait()
    if health_server is not None:
        health_server.stop(None).wait()
    try:
        rpc_server.shutdown()
    finally:
        app.close()
    log.info("stopped")
