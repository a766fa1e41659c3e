"""Where a warm Load's time goes: `pkgloader serve` profiled under load.

    python -m bench.profile_warm [--sampler cprofile|py-spy] [--seconds 5] [--top 35]
                                 [--sort tottime|cumulative]

Drives warm Loads (a memory hit, metadata only) with the plain Python client (one grpc.aio
process, 64 in flight on one channel) against `pkgloader serve` with its defaults (INFO access
log, metrics observer), and prints where the server's time went.

- `cprofile` (the default): the server runs with every thread under its own `cProfile.Profile`
  (cProfile alone sees only the thread that enabled it), and the merged profile is printed.
  cProfile slows the server down several times over and charges small functions most: read
  the shares, not the rate.
- `py-spy`: the server runs as it is, and py-spy samples it from outside (400 Hz, without
  stopping it); printed are the gRPC loop thread's functions by the share of its samples they
  were on top of the stack (self) or anywhere in it (inclusive). grpcio's Cython shows as the
  Python frame it runs under (`Handle._run` for its callbacks, our `_written` for a write).
  Sampling without stopping the process yields some partial stacks, so inclusive shares of the
  outer frames are a little low. Needs ptrace rights over the server: CAP_SYS_PTRACE (root on
  this project's machines), or the same user with kernel.yama.ptrace_scope 0.

Not one of `python -m bench`'s benchmarks: a tool for finding what to cut.
"""

from __future__ import annotations

import argparse
import base64
import collections
import cProfile
import os
import pstats
import re
import shutil
import signal
import subprocess
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


def _server_env(port: int, work: Path) -> dict[str, str]:
    env = base_env()
    env.update(
        {
            "PKGLOADER_LISTEN": f"127.0.0.1:{port}",
            "PKGLOADER_CACHE_DIR": str(work / "profile-cache"),
            "PKGLOADER_MEMORY_CACHE_BYTES": str(256 << 20),
            "PKGLOADER_FILE_ROOTS": str(FIXTURES),
        }
    )
    return env


def _client_spec(port: int, request: bytes, seconds: float) -> dict[str, object]:
    return {
        "mode": "rate",
        "target": f"127.0.0.1:{port}",
        "method": LOAD,
        "request": base64.b64encode(request).decode(),
        "concurrency": 64,
        "channels": 1,
        "warmup": 0.5,
        "duration": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_warm", description=__doc__)
    parser.add_argument("--serve-profiled", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    parser.add_argument("--sampler", default="cprofile", choices=["cprofile", "py-spy"])
    parser.add_argument(
        "--work", type=Path, default=OUT, help="py-spy: where its samples and cache go"
    )
    args = parser.parse_args()
    if args.serve_profiled:
        sys.exit(_serve_profiled(args.serve_profiled))
    if args.sampler == "py-spy":
        _sampled(args.seconds, args.top, args.work)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    stats_file = OUT / "warm.pstats"
    port = free_port()
    env = _server_env(port, OUT)
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
        answer = run_client(_client_spec(port, request, args.seconds), cpus=None)
    finally:
        proc.stop(timeout=60)
    print(
        f"{answer['count'] / args.seconds:,.0f} Loads/s under the profiler, {os.cpu_count()} cores"
    )
    stats = pstats.Stats(str(stats_file))
    stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)


#: py-spy's sampling rate (per second): one sample per 2.5 ms of the loop's time
_RATE = 400
#: a frame as py-spy's raw format writes it: "function (file:line)"
_LINE = re.compile(r":\d+\)$")


def _sampled(seconds: float, top: int, work: Path) -> None:
    """`pkgloader serve` as it is, sampled by py-spy while the client drives warm Loads."""
    spy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
    if spy is None:
        sys.exit("py-spy is not installed (it is in the dev dependencies: make test installs it)")
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "warm-py-spy.txt"
    port = free_port()
    request = load_request(WABT.as_uri(), WABT_SHA256, content=False)
    proc = Proc(
        [str(Path(PYTHON).parent / "pkgloader"), "serve"],
        _server_env(port, work),
        work / "profile-server.log",
        cpus=None,
    )
    sampler: subprocess.Popen[bytes] | None = None
    try:
        wait_serving(port, proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            list(channel.unary_stream(LOAD)(request, timeout=60))
        sampler = subprocess.Popen(
            [
                *(spy, "record", "--rate", str(_RATE), "--pid", str(proc.pid)),
                *("--format", "raw", "--output", str(raw), "--threads", "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        answer = run_client(_client_spec(port, request, seconds), cpus=None)
        sampler.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
        _, errors = sampler.communicate(timeout=60)
        if sampler.returncode != 0 or not raw.exists():
            sys.exit(f"py-spy failed: {errors.decode(errors='replace').strip()}")
    finally:
        if sampler is not None and sampler.poll() is None:
            sampler.kill()
            sampler.wait()
        proc.stop(timeout=60)
    print(f"{answer['count'] / seconds:,.0f} Loads/s while sampled, {os.cpu_count()} cores")
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "grpc-loop" not in frames[0]:  # "thread (tid): name"
            continue
        n = int(count)
        samples += n
        names = [_LINE.sub(")", frame) for frame in frames[1:]] or ["(no Python frame)"]
        own[names[-1]] += n
        for name in set(names):
            anywhere[name] += n
    if not samples:
        sys.exit("py-spy took no sample of the grpc-loop thread")
    # Shares only: the sampler runs a little longer than the client's timed window (its
    # start-up and warm-up), so a time per call from these counts would be off.
    print(f"grpc-loop thread: {samples} samples at {_RATE} Hz")
    for title, counter in (("self", own), ("inclusive", anywhere)):
        print(f"--- {title}")
        for name, n in counter.most_common(top):
            print(f"{n * 100 / samples:5.1f}%  {name}")


if __name__ == "__main__":
    main()
