"""Shared parts of the benchmarks: configuration, processes, memory readings, wire helpers.

Every server under test (pkgloader, the bare gRPC baselines, BuildGrid, the HTTP upstream) runs
as its own process, so its CPU time and its resident memory are its own and can be read from
/proc. Everything listens on 127.0.0.1 and talks only to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A protobuf varint is ULEB128: one encoder for the benchmarks, the tests and the service.
from pkgloader.formats.writer import uleb128 as varint

REPO = Path(__file__).resolve().parents[1]
FIXTURES = (REPO.parent / "shared" / "fixtures" / "packages").resolve()
OUT = REPO / "bench" / "out"
PYTHON = sys.executable
MiB = 1024 * 1024
GiB = 1024 * MiB

WABT = FIXTURES / "wabt-1.0.37.wasmer"
WABT_SHA256 = "0f41d38dcfb5abc1fadb5e9acbc5c645e53fe4d0dd86270b72a09bfeee04d055"

#: The allocator settings tried against the defaults. glibc serves a 1 MiB allocation with
#: mmap/munmap by default (its threshold adapts, but only after a freed mmap chunk), so each
#: streamed chunk costs fresh zeroed pages; raising the thresholds keeps chunks in the heap.
TUNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(64 * MiB),
    "MALLOC_TRIM_THRESHOLD_": str(256 * MiB),
}
DEFAULT_MALLOC: dict[str, str] = {}

#: Each side on its own core, as a service and its caller would be: servers on CPU 0, load
#: generators on CPU 1 (on a one-core machine nothing is pinned).
SERVER_CPUS = "0"
CLIENT_CPUS = "1"


@dataclass
class Config:
    quick: bool = False
    buildgrid: bool = True
    work: Path = field(default_factory=lambda: OUT)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(malloc: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours, without allocator or pkgloader settings, plus `malloc`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MALLOC_", "PKGLOADER_", "GLIBC_TUNABLES"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(malloc or {})
    return env


class Proc:
    """A child process we started; stopped (SIGTERM, then SIGKILL) by `stop`."""

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        log: Path | None = None,
        cpus: str | None = SERVER_CPUS,
    ) -> None:
        if cpus is not None and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
            args = ["taskset", "-c", cpus, *args]  # every thread it starts inherits the mask
        self.args = args
        self.log = log
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self._out = out
        self.serving_after = 0.0
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(
            args, env=dict(env), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the process, in bytes."""
        return read_status(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._out is not subprocess.DEVNULL:
            self._out.close()  # type: ignore[union-attr]

    def tail(self, n: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def read_status(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def wait_port(port: int, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited early:\n{proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args[:3]} did not listen on {port}:\n{proc.tail()}")


def wait_serving(port: int, proc: Proc, timeout: float = 60.0) -> float:
    """Poll the gRPC health service until SERVING; returns seconds since the process started.

    The port is polled with plain connects first: a gRPC channel that fails to connect backs off
    for a second, which would be counted as start-up time."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"server exited early:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not listen:\n{proc.tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.002)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"server exited early:\n{proc.tail()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
            except grpc.RpcError:
                time.sleep(0.002)
                continue
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return time.perf_counter() - proc.started
            time.sleep(0.002)
    finally:
        channel.close()
    raise RuntimeError(f"server did not become SERVING:\n{proc.tail()}")


@contextlib.contextmanager
def pkgloader_server(
    cfg: Config,
    name: str,
    *,
    cache_dir: Path | None,
    memory: int,
    malloc: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    cpus: str | None = SERVER_CPUS,
) -> Iterator[tuple[Proc, int]]:
    """`pkgloader serve` as a child process, SERVING on a free port (pinned to `cpus`)."""
    port = free_port()
    env = base_env(malloc)
    env.update(
        {
            "PKGLOADER_LISTEN": f"127.0.0.1:{port}",
            "PKGLOADER_CACHE_DIR": str(cache_dir) if cache_dir else "",
            "PKGLOADER_MEMORY_CACHE_BYTES": str(memory),
            "PKGLOADER_FILE_ROOTS": f"{FIXTURES}:{cfg.work}",
            "PKGLOADER_UPSTREAM_ALLOW": "127.0.0.1",  # the loopback upstream of the benchmarks
        }
    )
    env.update(extra or {})
    proc = Proc(
        [str(Path(PYTHON).parent / "pkgloader"), "serve"], env, cfg.work / f"{name}.log", cpus
    )
    try:
        proc.serving_after = wait_serving(port, proc)
        yield proc, port
    finally:
        proc.stop()


@contextlib.contextmanager
def temp_dir(cfg: Config, prefix: str) -> Iterator[Path]:
    cfg.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=cfg.work) as d:
        yield Path(d)


def pinned(args: list[str], cpus: str | None = CLIENT_CPUS) -> list[str]:
    if cpus is not None and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpus, *args]
    return args


def run_client(
    spec: dict[str, Any], env: Mapping[str, str] | None = None, cpus: str | None = CLIENT_CPUS
) -> Any:
    """Run `python -m bench._client` with `spec` (on `cpus`, default the client core; None: not
    pinned); returns its JSON answer."""
    out = subprocess.run(
        pinned([PYTHON, "-m", "bench._client", json.dumps(spec)], cpus),
        env=dict(env or base_env()),
        capture_output=True,
        check=False,
        timeout=spec.get("timeout", 900),
    )
    if out.returncode != 0:
        raise RuntimeError(f"client failed ({spec.get('mode')}):\n{out.stderr.decode()[-3000:]}")
    return json.loads(out.stdout)


def start_clients(
    spec: dict[str, Any], count: int, env: Mapping[str, str] | None = None
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            pinned([PYTHON, "-m", "bench._client", json.dumps({**spec, "index": i})]),
            env=dict(env or base_env()),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(count)
    ]


def collect(procs: list[subprocess.Popen[bytes]], timeout: float = 900) -> list[Any]:
    answers = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"client failed:\n{err.decode()[-3000:]}")
        answers.append(json.loads(out))
    return answers


# -- protobuf by hand (so one raw-bytes client serves every server under test) -----------------


def field_bytes(number: int, data: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def load_request(url: str, sha256: str, *, content: bool) -> bytes:
    from pkgloader_client import pb

    return pb.LoadRequest(
        summary=pb.PackageSummary(
            package_id="bench/pkg@1.0.0",
            dist=pb.DistributionInfo(webc_url=url, webc_sha256=sha256),
        ),
        include_content=content,
    ).SerializeToString()


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(q * len(s)))]


# -- measuring ------------------------------------------------------------------------------------

LOAD = "/pkgloader.v1.PackageLoaderService/Load"


def measure_rate(
    cfg: Config,
    target: str,
    method: str,
    request: bytes,
    *,
    kind: str = "unary_stream",
    in_flight: int = 64,
) -> dict[str, float]:
    """Calls per second with `in_flight` calls outstanding: h2load (C, nghttp2) when installed,
    else Python client processes. h2load costs far less per call than any Python client, so the
    server, not the client, is what saturates; it sends the gRPC frames as plain HTTP/2 POSTs."""
    if shutil.which("h2load"):
        return measure_rate_h2load(cfg, target, method, request, in_flight=in_flight)
    return measure_rate_python(cfg, target, method, request, kind=kind, in_flight=in_flight)


def measure_rate_h2load(
    cfg: Config, target: str, method: str, request: bytes, *, in_flight: int = 64
) -> dict[str, float]:
    import re

    warmup, duration = cfg.seconds(1.0, 0.3), cfg.seconds(5.0, 1.0)
    with tempfile.TemporaryDirectory(prefix="h2load-", dir=cfg.work) as d:
        body, log = Path(d) / "body", Path(d) / "log"
        body.write_bytes(b"\x00" + len(request).to_bytes(4, "big") + request)
        connections = 2
        out = subprocess.run(
            pinned(
                [
                    "h2load",
                    "-c",
                    str(connections),
                    "-m",
                    str(in_flight // connections),
                    "-D",
                    str(max(1, round(duration))),
                    f"--warm-up-time={max(1, round(warmup))}",
                    "-d",
                    str(body),
                    "-H",
                    "content-type: application/grpc",
                    "-H",
                    "te: trailers",
                    f"--log-file={log}",
                    f"http://{target}{method}",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
            timeout=duration + warmup + 60,
        )
        text = out.stdout
        found = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
        stats = re.search(
            r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
            r"(\d+) failed, (\d+) errored",
            text,
        )
        if out.returncode != 0 or not found or not stats:
            raise RuntimeError(f"h2load failed:\n{text[-2000:]}\n{out.stderr[-2000:]}")
        latencies = []
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "200":
                latencies.append(int(parts[2]) / 1e6)
    return {
        "rate": float(found.group(3)),
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "errors": float(int(stats.group(5)) + int(stats.group(6))),
    }


def measure_rate_python(
    cfg: Config,
    target: str,
    method: str,
    request: bytes,
    *,
    kind: str = "unary_stream",
    in_flight: int = 64,
    processes: int = 2,
    env: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Calls per second with `in_flight` calls outstanding, spread over client processes."""
    import base64

    warmup, duration = cfg.seconds(1.0, 0.3), cfg.seconds(5.0, 1.0)
    spec = {
        "mode": "rate",
        "target": target,
        "method": method,
        "kind": kind,
        "request": base64.b64encode(request).decode(),
        "concurrency": in_flight // processes,
        "warmup": warmup,
        "duration": duration,
        "start_at": time.time() + 1.5,  # after every client process has connected
    }
    answers = collect(start_clients(spec, processes, env))
    latencies = [x for a in answers for x in a["latencies"]]
    count = sum(a["count"] for a in answers)
    return {
        "rate": count / duration,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "errors": sum(a["errors"] for a in answers),
    }


def stream_once(
    target: str,
    method: str,
    request: bytes,
    *,
    repeats: int = 1,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> list[dict[str, float]]:
    """`repeats` calls one after the other on one channel: seconds, bytes, first/second message."""
    import base64

    spec = {
        "mode": "stream",
        "target": target,
        "method": method,
        "request": base64.b64encode(request).decode(),
        "repeats": repeats,
        "timeout": timeout,
    }
    return list(run_client(spec, env)["runs"])


@contextlib.contextmanager
def bare_server(
    kind: str,
    mode: str,
    *,
    malloc: Mapping[str, str] | None = None,
    log: Path | None = None,
    cpus: str | None = SERVER_CPUS,
    **options: int | str,
) -> Iterator[tuple[Proc, int]]:
    """A `bench._baselines` server as a child process (pinned to `cpus`; None: not pinned)."""
    port = free_port()
    args = [PYTHON, "-m", "bench._baselines", "--kind", kind, "--port", str(port), "--mode", mode]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = Proc(args, base_env(malloc), log, cpus)
    try:
        wait_port(port, proc)
        yield proc, port
    finally:
        proc.stop()
