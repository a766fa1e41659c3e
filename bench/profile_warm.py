"""Where a warm Load's time goes: `pkgloader serve` profiled under load.

    python -m bench.profile_warm [--sampler cprofile|py-spy|threads] [--seconds 5] [--top 35]
                                 [--sort tottime|cumulative] [--rounds 3]

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
- `threads`: nothing attached; `pkgloader serve` and the bare grpcio aio server of the same call
  shape (`bench._baselines`) take turns, `--rounds` times, and for each the CPU every thread of
  the server and the client process spent per call is read from /proc over the client's run.
  On two cores both are busy, so the rate follows the sum: this says which thread pays for the
  difference, without slowing anything down.
- `calls`: counts instead of timing, for a machine whose rates drift more than a change is worth.
  `pkgloader serve`'s server (production wiring, access log to /dev/null) and a bare aio handler
  run in this process, on the gRPC loop, each driven by the client process; `sys.setprofile` on
  the loop thread counts Python and C function calls, printed per call with the `--top`
  functions whose counts differ most. The counts are the same from run to run.

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
import statistics
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from bench._baselines import METHOD as BARE_METHOD
from bench._common import (
    FIXTURES,
    LOAD,
    OUT,
    PYTHON,
    WABT,
    WABT_SHA256,
    Proc,
    bare_server,
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
    parser.add_argument(
        "--sampler", default="cprofile", choices=["cprofile", "py-spy", "threads", "calls"]
    )
    parser.add_argument("--rounds", type=int, default=3, help="threads: rounds per server")
    parser.add_argument(
        "--work", type=Path, default=OUT, help="py-spy: where its samples and cache go"
    )
    args = parser.parse_args()
    if args.serve_profiled:
        sys.exit(_serve_profiled(args.serve_profiled))
    if args.sampler == "py-spy":
        _sampled(args.seconds, args.top, args.work)
        return
    if args.sampler == "threads":
        _threads(args.seconds, args.rounds, args.work)
        return
    if args.sampler == "calls":
        _calls(args.seconds, args.top, args.work)
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


#: clock ticks per second of /proc's utime and stime (USER_HZ)
_TICK = os.sysconf("SC_CLK_TCK")


def _thread_ticks(pid: int) -> dict[int, int]:
    """CPU ticks (user + system) of each thread of `pid`, by thread id."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        ticks[int(tid)] = int(fields[11]) + int(fields[12])
    return ticks


def _per_call(pid: int, port: int, method: str, request: bytes, seconds: float) -> list[float]:
    """Requests per second, then µs of CPU per call: the server's busiest thread (its event
    loop), its second busiest (grpcio's poller; the access log's writer comes after it), the
    rest of it, and the client process (its calls only, not its start-up)."""
    before = _thread_ticks(pid)
    answer = run_client({**_client_spec(port, request, seconds), "method": method}, cpus=None)
    after = _thread_ticks(pid)
    calls = answer["completed"]  # warm-up and timed window: the span the ticks were read over
    used = [*sorted((after[t] - before.get(t, 0) for t in after), reverse=True), 0, 0]
    micros = [ticks / _TICK * 1e6 / calls for ticks in (used[0], used[1], sum(used[2:]))]
    return [answer["count"] / seconds, *micros, answer["cpu_seconds"] * 1e6 / calls]


def _threads(seconds: float, rounds: int, work: Path) -> None:
    """`pkgloader serve` and the bare aio server in turns; each one's CPU per call by thread."""
    work.mkdir(parents=True, exist_ok=True)
    request = load_request(WABT.as_uri(), WABT_SHA256, content=False)
    runs: dict[str, list[list[float]]] = {"pkgloader serve": [], "bare grpcio aio": []}
    for _ in range(rounds):
        port = free_port()
        proc = Proc(
            [str(Path(PYTHON).parent / "pkgloader"), "serve"],
            _server_env(port, work),
            work / "profile-server.log",
            cpus=None,
        )
        try:
            wait_serving(port, proc)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = next(iter(channel.unary_stream(LOAD)(request, timeout=60)))
            runs["pkgloader serve"].append(_per_call(proc.pid, port, LOAD, request, seconds))
        finally:
            proc.stop(timeout=60)
        with bare_server("aio", "echo", reply_bytes=len(reply), cpus=None) as (bare, port):
            runs["bare grpcio aio"].append(_per_call(bare.pid, port, BARE_METHOD, b"", seconds))
    print(f"warm Loads, one grpc.aio client with 64 in flight, {rounds} rounds, medians:")
    print(
        f"{'server':17} {'req/s':>7} {'loop µs':>8} {'poller':>7} {'others':>7} {'client':>7} "
        f"{'all':>6}"
    )
    for name, results in runs.items():
        rate, loop, poller, others, client = (
            statistics.median(col) for col in zip(*results, strict=True)
        )
        every = loop + poller + others + client
        print(
            f"{name:17} {rate:7,.0f} {loop:8.0f} {poller:7.0f} {others:7.0f} {client:7.0f} "
            f"{every:6.0f}"
        )


def _calls(seconds: float, top: int, work: Path) -> None:
    """Function calls per call on the gRPC loop thread: `pkgloader serve`'s server and a bare
    handler of the same call shape, in this process, each under the client's load."""
    from pkgloader import app as app_module
    from pkgloader import logs
    from pkgloader.rpc import server as rpc_server
    from pkgloader.settings import Settings

    work.mkdir(parents=True, exist_ok=True)
    logs.configure("INFO").writer.stream = open(os.devnull, "w")  # noqa: SIM115 - until exit
    app = app_module.build(Settings.load(_server_env(0, work)))
    server, port = app_module.create_server(app, address="127.0.0.1:0")
    server.start()
    app_module.set_serving(app, True)
    request = load_request(WABT.as_uri(), WABT_SHA256, content=False)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = next(iter(channel.unary_stream(LOAD)(request, timeout=60)))
    served = [0]

    async def bare(request: bytes, context: object) -> Any:
        served[0] += 1
        yield reply

    def make() -> tuple[aio.Server, int]:
        handlers = {"Call": grpc.unary_stream_rpc_method_handler(bare)}
        bare_server = aio.server(options=[("grpc.so_reuseport", 0)])
        service, _, method = BARE_METHOD.strip("/").partition("/")
        bare_server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handlers["Call"]}),)
        )
        return bare_server, bare_server.add_insecure_port("127.0.0.1:0")

    bare_srv, bare_port = rpc_server.Server.build(make)
    bare_srv.start()

    def loads() -> float:
        value = app.metrics.registry.get_sample_value(
            "pkgloader_rpc_duration_seconds_count", {"method": "Load", "code": "OK"}
        )
        return value or 0.0

    def counted(port: int, method: str, body: bytes, calls: Callable[[], float]) -> Counter[str]:
        counts: Counter[str] = collections.Counter()

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                code = frame.f_code
                counts[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
            elif event == "c_call":
                counts[f"{getattr(arg, '__qualname__', arg)} [C]"] += 1

        async def set_profile(function: Any) -> None:
            sys.setprofile(function)

        spec = {**_client_spec(port, body, seconds), "method": method}
        run_client({**spec, "duration": 0.5}, cpus=None)  # warm both ends first
        before = calls()
        rpc_server.run(set_profile(profile))
        try:
            run_client(spec, cpus=None)
        finally:
            rpc_server.run(set_profile(None))
        made = calls() - before
        return collections.Counter({name: n / made for name, n in counts.items()})

    try:
        ours = counted(port, LOAD, request, loads)
        theirs = counted(bare_port, BARE_METHOD, b"", lambda: float(served[0]))
    finally:
        bare_srv.stop(None).wait()
        server.stop(None).wait()
        app.close()
    print("function calls per call on the gRPC loop thread, 64 in flight:")
    for name, counts in (("pkgloader serve, warm Load", ours), ("bare grpcio aio", theirs)):
        python = sum(n for key, n in counts.items() if not key.endswith("[C]"))
        print(f"{name:28} {python:6.0f} Python {sum(counts.values()) - python:6.0f} C")
    print(f"--- the {top} that differ most (pkgloader minus bare, per call)")
    differ = sorted(set(ours) | set(theirs), key=lambda k: -abs(ours[k] - theirs[k]))
    for key in differ[:top]:
        print(f"{ours[key] - theirs[key]:+7.2f}  {key}")


if __name__ == "__main__":
    main()
