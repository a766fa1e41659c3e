"""12. What tracing costs the warm path: warm Load with tracing off, with it on (every call
sampled, exported over OTLP/gRPC), and today's server without any tracing code, in one run.

"Today" is the newest ancestor of HEAD without `service/pkgloader/traces.py` (every other change
merged so far, no tracing code), exported with `git archive` and run by the same Python
(PYTHONPATH first); "off" is this tree with no OTEL_* variable, so no tracing
interceptor is installed and the core's spans are no-ops; "on" sets OTEL_EXPORTER_OTLP_ENDPOINT
to an OTLP/gRPC receiver in this process, OTEL_TRACES_SAMPLER=traceidratio with ratio 1.0.
"""

from __future__ import annotations

import subprocess
import tarfile
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench._common import (
    LOAD,
    REPO,
    WABT,
    WABT_SHA256,
    Config,
    load_request,
    measure_rate,
    pkgloader_server,
    temp_dir,
)
from bench._report import Figure, Report
from bench.warm_load import prime

TITLE = "Tracing's cost on the warm Load (off, on at ratio 1.0, today without tracing)"
ROUNDS = 2  # interleaved; the best round of each side counts
OFF_ENV = {"OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    """Counts the spans it receives (so "on" is shown to export, not to drop)."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        n = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self._lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def _receiver() -> Iterator[tuple[int, _Sink]]:
    sink = _Sink()
    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, sink
    finally:
        server.stop(None).wait()


def _today(into: Path) -> tuple[str, Path] | None:
    """The service and client as they were before tracing, or None outside a git checkout."""
    try:
        # The newest ancestor of HEAD (by commit date) without tracing: with every other change
        # merged so far, so the comparison isolates tracing.
        ancestors = subprocess.run(
            ["git", "rev-list", "--date-order", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        before = next(
            (
                commit
                for commit in ancestors
                if subprocess.run(
                    ["git", "cat-file", "-e", f"{commit}:service/pkgloader/traces.py"],
                    cwd=REPO,
                    capture_output=True,
                    check=False,
                ).returncode
                != 0
            ),
            None,
        )
        if before is None:
            return None
        archive = subprocess.run(
            ["git", "archive", before, "service", "client"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return before[:10], into


def run(cfg: Config, report: Report) -> None:
    request = load_request(WABT.as_uri(), WABT_SHA256, content=False)
    rounds = 1 if cfg.quick else ROUNDS
    best: dict[str, dict[str, float]] = {}
    exported: dict[str, int] = {}

    with temp_dir(cfg, "tracing-") as tmp, _receiver() as (otlp_port, sink):
        today = _today(tmp / "today")
        sides: dict[str, dict[str, str]] = {
            "off": dict(OFF_ENV),
            "on": {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "1.0",
                # Room for every span of the window, so the figure is the cost of exporting
                # them all, not of dropping most (the default queue holds 2,048).
                "OTEL_BSP_MAX_QUEUE_SIZE": "262144",
                "OTEL_BSP_SCHEDULE_DELAY": "1000",
                "OTEL_SERVICE_NAME": "pkgloader-bench",
            },
        }
        if today is not None:
            old = today[1]
            sides["today"] = {
                **OFF_ENV,
                "PYTHONPATH": f"{old / 'service'}:{old / 'client'}:{REPO}",
            }
        for _ in range(rounds):
            for name, env in sides.items():
                with pkgloader_server(
                    cfg,
                    f"tracing-{name}",
                    cache_dir=tmp / f"cache-{name}",
                    memory=256 << 20,
                    extra=env,
                ) as (_, port):
                    prime(port, request)
                    before = sink.spans
                    result = measure_rate(cfg, f"127.0.0.1:{port}", LOAD, request)
                    if name not in best or result["rate"] > best[name]["rate"]:
                        best[name] = result
                if name == "on":  # counted after the server stopped (its last batch flushed)
                    exported["on"] = max(exported.get("on", 0), sink.spans - before)

    base_name = "today" if "today" in best else "off"
    base = best[base_name]
    base_label = (
        f"today's server without tracing code ({today[0]})"
        if today is not None
        else "tracing off (no git checkout: today's build not available)"
    )
    off, on = best["off"], best["on"]
    report.add(
        Figure(
            "tracing_cost",
            "Warm Load rate, tracing off",
            off["rate"],
            "req/s",
            base_label,
            base["rate"],
            "≥ 0.97× today (nothing measurable)",
            off["rate"] >= 0.97 * base["rate"],
            f"p50 {off['p50_ms']:.2f} ms, p99 {off['p99_ms']:.2f} ms; errors {off['errors']:.0f}",
            why=(
                "off, the server has no tracing interceptor and the core's span helpers return "
                "a shared no-op. The baseline is the newest commit without tracing code, which "
                "predates issue 12's asyncio server: since then this figure compares the two "
                "server models on one pinned core (the asyncio server's loop, grpcio's poller "
                "and the log writer share it), not tracing's cost; tracing on against off, "
                "same tree, is the ratio that measures tracing"
            ),
        )
    )
    report.add(
        Figure(
            "tracing_cost",
            "Warm Load rate, tracing on (ratio 1.0, OTLP/gRPC)",
            on["rate"],
            "req/s",
            base_label,
            base["rate"],
            note=(
                f"p50 {on['p50_ms']:.2f} ms, p99 {on['p99_ms']:.2f} ms; errors {on['errors']:.0f}; "
                f"{exported.get('on', 0):,} spans received by the OTLP receiver in one round (the most)"
            ),
        )
    )
    if "today" in best:
        report.add(
            Figure(
                "tracing_cost",
                "Warm Load rate, today (no tracing code)",
                best["today"]["rate"],
                "req/s",
                note=f"p50 {best['today']['p50_ms']:.2f} ms, p99 {best['today']['p99_ms']:.2f} ms",
            )
        )
    report.note(
        "tracing_cost",
        "Same call as benchmark 1 (WABT, memory hit, metadata only, 64 in flight), each side a "
        "fresh `pkgloader serve` pinned to the server CPU, interleaved rounds, best round counts. "
        "`today` runs the newest ancestor commit without tracing code, with the same Python and "
        "dependencies; `on` samples every call (server span + memory span per Load) and "
        "exports them to an OTLP/gRPC receiver in the benchmark process.",
    )
