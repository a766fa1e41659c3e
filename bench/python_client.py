"""12. The binding view: a plain Python grpc client in another process, nothing pinned.

What issue 12 binds: client and server share the machine's two cores (no taskset), the default
allocator everywhere, no h2load. The baseline of each figure is the better of grpcio's bare sync
and aio servers (`bench._baselines`) of the same call shape, measured in the same run, rounds
interleaved, best round kept on both sides.

- Warm Load (a memory hit, metadata only): one `grpc.aio` client process, 64 calls in flight on
  one channel, raw bytes. Baseline: a unary call answered by one streamed message of the Load's
  reply size.
- A 256 MiB Load from memory, and the first Load from disk after an Evict from memory (the
  package is promoted to memory while it streams): a sync channel reading raw bytes, one call at
  a time. Baseline: the same bytes as pre-serialized 1 MiB `LoadResponse.chunk` messages.
"""

from __future__ import annotations

import base64
import shutil
import time

import grpc
from pkgloader_client import pb

from bench._common import (
    LOAD,
    WABT,
    WABT_SHA256,
    Config,
    MiB,
    bare_server,
    load_request,
    median,
    percentile,
    pkgloader_server,
    run_client,
    temp_dir,
)
from bench._packages import big_webc
from bench._report import Figure, Report

TITLE = "Plain Python grpc client, client and server sharing both cores (the binding view)"
EVICT = "/pkgloader.v1.PackageLoaderService/Evict"
BARE = "/bench.Bare/Call"
IN_FLIGHT = 64


def _rate(cfg: Config, target: str, method: str, request: bytes) -> dict[str, float]:
    """One grpc.aio process, `IN_FLIGHT` calls in flight on one channel, unpinned."""
    warmup, duration = cfg.seconds(1.0, 0.3), cfg.seconds(5.0, 1.0)
    answer = run_client(
        {
            "mode": "rate",
            "target": target,
            "method": method,
            "request": base64.b64encode(request).decode(),
            "concurrency": IN_FLIGHT,
            "channels": 1,
            "warmup": warmup,
            "duration": duration,
        },
        cpus=None,
    )
    latencies = answer["latencies"]
    return {
        "rate": answer["count"] / duration,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "errors": answer["errors"],
    }


def _streams(
    target: str, method: str, request: bytes, repeats: int, before: bytes | None = None
) -> list[dict[str, float]]:
    spec = {
        "mode": "sync_stream",
        "target": target,
        "method": method,
        "request": base64.b64encode(request).decode(),
        "repeats": repeats,
    }
    if before is not None:
        spec["before"] = {"method": EVICT, "request": base64.b64encode(before).decode()}
    return list(run_client(spec, cpus=None)["runs"])


def _mib_s(runs: list[dict[str, float]]) -> float:
    return median([r["bytes"] / MiB / r["seconds"] for r in runs])


def run(cfg: Config, report: Report) -> None:
    rounds = 1 if cfg.quick else 3
    repeats = 2 if cfg.quick else 4
    size = cfg.size(256 * MiB, 16 * MiB)
    warm_request = load_request(WABT.as_uri(), WABT_SHA256, content=False)
    best: dict[str, dict[str, float]] = {}
    streams: dict[str, list[float]] = {}

    def keep(name: str, result: dict[str, float]) -> None:
        if name not in best or result["rate"] > best[name]["rate"]:
            best[name] = result

    package = big_webc(cfg.work / "data", size)
    big_request = load_request(f"file://{package.path}", package.sha256, content=True)
    evict = pb.EvictRequest(
        webc_sha256=[package.sha256], scope=pb.EVICT_SCOPE_MEMORY
    ).SerializeToString()
    reply_size = 0
    with temp_dir(cfg, "pyclient-") as tmp:
        cache = tmp / "cache"
        cache.mkdir()
        shutil.copyfile(WABT, cache / f"{WABT_SHA256}.bin")
        shutil.copyfile(package.path, cache / f"{package.sha256}.bin")
        for _ in range(rounds):
            with pkgloader_server(
                cfg, "pyclient", cache_dir=cache, memory=2 * size + 64 * MiB, cpus=None
            ) as (_, port):
                target = f"127.0.0.1:{port}"
                with grpc.insecure_channel(target) as channel:
                    replies = list(channel.unary_stream(LOAD)(warm_request, timeout=60))
                reply_size = len(replies[0])
                keep("pkgloader", _rate(cfg, target, LOAD, warm_request))
                # First Loads after an Evict: each one promotes the package while it streams.
                promoted = _streams(target, LOAD, big_request, repeats, before=evict)
                streams.setdefault("promote", []).append(_mib_s(promoted))
                # Now in memory (the last promotion): Loads from memory.
                streams.setdefault("memory", []).append(
                    _mib_s(_streams(target, LOAD, big_request, repeats))
                )
            for kind in ("sync", "aio"):
                with bare_server(kind, "echo", reply_bytes=reply_size, cpus=None) as (_, port):
                    keep(kind, _rate(cfg, f"127.0.0.1:{port}", BARE, b""))
                with bare_server(kind, "stream", total=size, chunk=MiB, cpus=None) as (_, port):
                    streams.setdefault(f"bare {kind}", []).append(
                        _mib_s(_streams(f"127.0.0.1:{port}", BARE, b"", repeats))
                    )
            time.sleep(0.1)  # a breath between rounds, not a synchronisation
    ours = best["pkgloader"]
    bare_name = max(("sync", "aio"), key=lambda k: best[k]["rate"])
    bare = best[bare_name]
    report.add(
        Figure(
            "python_client",
            "Warm Load rate, plain Python client",
            ours["rate"],
            "req/s",
            f"bare grpcio {bare_name} server, same call shape",
            bare["rate"],
            "≥ 0.8× the better bare server",
            ours["rate"] >= 0.8 * bare["rate"],
            f"p50 {ours['p50_ms']:.2f} ms, p99 {ours['p99_ms']:.2f} ms; errors "
            f"{ours['errors']:.0f}; reply {reply_size} bytes",
        )
    )
    report.add(
        Figure(
            "python_client",
            "Warm Load p99, plain Python client",
            ours["p99_ms"],
            "ms",
            f"bare grpcio {bare_name} p99",
            bare["p99_ms"],
            "≤ 1.5× the bare server's",
            ours["p99_ms"] <= 1.5 * bare["p99_ms"],
        )
    )
    for kind in ("sync", "aio"):
        r = best[kind]
        report.add(
            Figure(
                "python_client",
                f"bare grpcio {kind} server, same call shape",
                r["rate"],
                "req/s",
                note=f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms",
            )
        )
    bare_stream = max(("bare sync", "bare aio"), key=lambda k: max(streams[k]))
    bare_value = max(streams[bare_stream])
    for key, name in (
        ("memory", f"Load {size // MiB} MiB from memory, plain Python client"),
        ("promote", f"First Load of {size // MiB} MiB after an Evict (promoted), plain client"),
    ):
        value = max(streams[key])
        report.add(
            Figure(
                "python_client",
                name,
                value,
                "MiB/s",
                f"{bare_stream} server, pre-serialized 1 MiB chunks",
                bare_value,
                "≥ 0.8× the better bare stream",
                value >= 0.8 * bare_value,
                f"median of {repeats} per round, best of {rounds} rounds",
            )
        )
    for kind in ("bare sync", "bare aio"):
        report.add(Figure("python_client", f"{kind} 1 MiB stream", max(streams[kind]), "MiB/s"))
    report.note(
        "python_client",
        f"Nothing pinned: every server and client shares the machine's cores. Default allocator. "
        f"Rate: one grpc.aio client process, {IN_FLIGHT} calls in flight on one channel, "
        f"{cfg.seconds(5, 1):g} s window after {cfg.seconds(1, 0.3):g} s warm-up. Streams: a "
        f"sync channel reading raw bytes, one call at a time. {rounds} interleaved round(s), the "
        f"best of each side kept. pkgloader runs as `pkgloader serve` with its defaults (INFO "
        f"access log, metrics observer).",
    )
