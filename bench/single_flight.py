"""4. 100 concurrent Loads of one uncached 256 MiB package: how many upstream requests, and the
total time against a single Load's (each on a fresh server with an empty cache)."""

from __future__ import annotations

import base64
import time

from bench._common import (
    LOAD,
    Config,
    MiB,
    load_request,
    pkgloader_server,
    run_client,
    stream_once,
    temp_dir,
)
from bench._packages import big_webc
from bench._report import Figure, Report
from bench.cold_load import upstream, upstream_requests

TITLE = "100 concurrent Loads of one uncached 256 MiB package"
CALLS = 100


def run(cfg: Config, report: Report) -> None:
    size = cfg.size(256 * MiB, 16 * MiB)
    package = big_webc(cfg.work / "data", size, seed=4)
    with temp_dir(cfg, "flight-") as tmp, upstream(cfg, package.path.parent) as base:
        path = f"/identity/{package.path.name}"
        url = base + path
        request = load_request(url, package.sha256, content=False)

        with pkgloader_server(
            cfg, "flight-single", cache_dir=tmp / "c1", memory=256 * MiB, cpus=None
        ) as (_, port):
            before = upstream_requests(base, path)
            single = stream_once(f"127.0.0.1:{port}", LOAD, request, timeout=600)[0]["seconds"]
            single_requests = upstream_requests(base, path) - before

        with pkgloader_server(
            cfg, "flight-burst", cache_dir=tmp / "c2", memory=256 * MiB, cpus=None
        ) as (_, port):
            before = upstream_requests(base, path)
            t0 = time.perf_counter()
            burst = run_client(
                {
                    "mode": "burst",
                    "target": f"127.0.0.1:{port}",
                    "method": LOAD,
                    "request": base64.b64encode(request).decode(),
                    "concurrency": CALLS,
                    "timeout": 600,
                }
            )
            wall = time.perf_counter() - t0
            requests = upstream_requests(base, path) - before

    report.add(
        Figure(
            "single_flight",
            f"{CALLS} concurrent Loads, upstream requests",
            requests,
            "requests",
            "a single Load",
            single_requests,
            "exactly 1",
            requests == 1,
            f"{burst['error_count']} of {CALLS} calls failed {burst['errors']}"
            if burst["error_count"]
            else f"all {CALLS} calls succeeded",
        )
    )
    report.add(
        Figure(
            "single_flight",
            f"{CALLS} concurrent Loads, total time",
            burst["seconds"],
            "s",
            "a single Load",
            single,
            "≤ 1.2× a single Load",
            burst["seconds"] <= 1.2 * single,
            f"client process wall time including start-up {wall:.2f} s",
            why="one download is shared (see the request count); the rest is the 100 calls "
            "themselves: 36 wait for one of the 64 worker threads, and the client process "
            "starts and finishes 100 streams on one core.",
        )
    )
    report.note(
        "single_flight",
        f"Package: synthetic webc v1, {package.size:,} bytes, from the loopback upstream "
        f"(identity). Each side on a fresh server with an empty cache; the {CALLS} calls are "
        f"started together on one channel by a grpc.aio client and timed until the last ends.",
    )
