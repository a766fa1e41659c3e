"""Helpers for tests that run several `pkgloader serve` processes over one cache folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pkgloader_client import PackageLoaderServiceStub
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    port: int
    proc: subprocess.Popen[bytes]
    channel: grpc.Channel
    stub: PackageLoaderServiceStub
    metrics_port: int

    def metric(self, family: str) -> float:
        """The summed samples of the metric family `family` on the replica's /metrics."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return sum(
            sample.value
            for found in text_string_to_metric_families(text)
            if found.name == family
            for sample in found.samples
        )

    def wait_serving(self, timeout: float = 20) -> None:
        health = health_pb2_grpc.HealthStub(self.channel)

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"replica on {self.port} exited with {self.proc.returncode}")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                return False
            return bool(status == health_pb2.HealthCheckResponse.SERVING)

        if not wait_until(serving, timeout):
            raise AssertionError(f"replica on {self.port} never became SERVING")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@contextmanager
def replicas(cache: Path, count: int, **env: str) -> Iterator[list[Replica]]:
    """`count` server processes on 127.0.0.1 (different ports) sharing the folder `cache`,
    each with its /metrics on a port of its own (`Replica.metric`)."""
    started: list[Replica] = []
    try:
        for _ in range(count):
            port = free_port()
            metrics_port = free_port()
            environment = dict(
                os.environ,
                PKGLOADER_LISTEN=f"127.0.0.1:{port}",
                PKGLOADER_CACHE_DIR=str(cache),
                PKGLOADER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
                PKGLOADER_LOG_LEVEL="WARNING",
                # The upstreams of these tests live on loopback, which the SSRF guard refuses
                # unless allowed.
                **{"PKGLOADER_UPSTREAM_ALLOW": "127.0.0.1", **env},
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", "pkgloader", "serve"],
                env=environment,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            started.append(
                Replica(port, proc, channel, PackageLoaderServiceStub(channel), metrics_port)
            )
        for replica in started:
            replica.wait_serving()
        yield started
    finally:
        for replica in started:
            replica.channel.close()
            replica.proc.terminate()
        for replica in started:
            try:
                replica.proc.wait(15)
            except subprocess.TimeoutExpired:
                replica.kill()


@dataclass
class Upstream:
    """A loopback HTTP server serving named bodies, counting requests, with a hook per request."""

    bodies: dict[str, bytes]
    requests: list[str] = field(default_factory=list)
    before_body: Callable[[int], None] = lambda n: None  # called with the request number
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@contextmanager
def upstream(bodies: dict[str, bytes]) -> Iterator[Upstream]:
    state = Upstream(bodies)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            with state.lock:
                state.requests.append(name)
                number = len(state.requests)
            body = state.bodies.get(name)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                state.before_body(number)
                self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
