"""Where a warm Load's time goes: `pkgloader serve` under cProfile, on every thread, under load.

    python -m bench.profile_warm [--seconds 5] [--top 35] [--sort tottime|cumulative]

Starts `pkgloader serve` (its defaults: INFO access log, metrics observer) in a child process
whose every thread runs under its own `cProfile.Profile` (grpcio's workers are Python threads,
and cProfile alone sees only the thread that enabled it), drives warm Loads (a memory hit,
metadata only) with the plain Python client (one grpc.aio process, 64 in flight on one
channel), stops the server and prints the merged profile. cProfile slows the server down
several times over and charges small functions most: read the shares, not the rate.

Not one of `python -m bench`'s benchmarks: a tool for finding what to cut.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import os
import pstats
import sys
import threading
from pathlib import Path

import grpc

from bench._common import (
    FIXTURES,
    LOAD,
    OUT,
    PYTHON,
    WABT,
    WABT_SHA256,
    Proc,
    base_env,
    free_port,
    load_request,
    run_client,
    wait_serving,
)


def _serve_profiled(out: Path) -> int:
    """The child: `pkgloader serve`, each thread profiled, the merged stats written at exit."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start(frame: object, event: str, arg: object) -> None:
        # Called once in each new thread, as its profile function: it hands the thread to a
        # profiler of its own (enable() replaces this function in that thread).
        profile = cProfile.Profile()
        with lock:
            profiles.append(profile)
        profile.enable()

    threading.setprofile(start)  # type: ignore[arg-type]
    main_profile = cProfile.Profile()
    profiles.append(main_profile)
    from pkgloader import cli

    main_profile.enable()
    try:
        code = cli.main(["serve"])
    finally:
        main_profile.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        with lock:
            taken = list(profiles)
        stats = pstats.Stats(taken[0])
        for profile in taken[1:]:
            try:
                stats.add(profile)
            except TypeError:  # a thread that never ran a profiled call
                continue
        stats.dump_stats(out)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_warm", description=__doc__)
    parser.add_argument("--serve-profiled", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    args = parser.parse_args()
    if args.serve_profiled:
        sys.exit(_serve_profiled(args.serve_profiled))
    OUT.mkdir(parents=True, exist_ok=True)
    stats_file = OUT / "warm.pstats"
    port = free_port()
    env = base_env()
    env.update(
        {
            "PKGLOADER_LISTEN": f"127.0.0.1:{port}",
            "PKGLOADER_CACHE_DIR": str(OUT / "profile-cache"),
            "PKGLOADER_MEMORY_CACHE_BYTES": str(256 << 20),
            "PKGLOADER_FILE_ROOTS": str(FIXTURES),
        }
    )
    request = load_request(WABT.as_uri(), WABT_SHA256, content=False)
    proc = Proc(
        [PYTHON, "-m", "bench.profile_warm", "--serve-profiled", str(stats_file)],
        env,
        OUT / "profile-server.log",
        cpus=None,
    )
    try:
        wait_serving(port, proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            list(channel.unary_stream(LOAD)(request, timeout=60))
        answer = run_client(
            {
                "mode": "rate",
                "target": f"127.0.0.1:{port}",
                "method": LOAD,
                "request": base64.b64encode(request).decode(),
                "concurrency": 64,
                "channels": 1,
                "warmup": 0.5,
                "duration": args.seconds,
            },
            cpus=None,
        )
    finally:
        proc.stop(timeout=60)
    print(
        f"{answer['count'] / args.seconds:,.0f} Loads/s under the profiler, {os.cpu_count()} cores"
    )
    stats = pstats.Stats(str(stats_file))
    stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)


if __name__ == "__main__":
    main()
