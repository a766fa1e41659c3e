"""9. GetAtom of a large atom (≥ 64 MiB) with flat server memory, beside Load's content stream.

One synthetic webc v1 package holding one large signed atom sits in the disk cache of a server
whose memory tier admits nothing, so every call reads through the disk. The first GetAtom hashes
the atom (checked against its manifest signature) and then streams it in 1 MiB chunks, hashing it
again; the loader's memo tier remembers the verified digest, so the timed calls hash it once, as
it streams. The baseline is
Load with `include_content` streaming the whole package from the same server in the same run.
For each: throughput, and how far the server's peak resident memory (VmHWM, reset before each
call) rose above its resident memory before the call.
"""

from __future__ import annotations

import shutil
import threading

from bench._common import (
    LOAD,
    Config,
    MiB,
    field_bytes,
    load_request,
    median,
    pkgloader_server,
    read_status,
    reset_peak,
    stream_once,
    temp_dir,
)
from bench._packages import big_webc
from bench._report import Figure, Report

TITLE = "GetAtom of a large atom (≥ 64 MiB), disk and memory tiers: memory and speed vs Load"
GET_ATOM = "/pkgloader.v1.PackageLoaderService/GetAtom"

#: From disk a GetAtom whose digest is remembered hashes the atom once, as it goes out (so that a
#: file changed since is never delivered whole); Load hashes nothing.
TARGETS = {
    "disk": ("≥ 0.5× Load (one sha256 pass over the atom)", 0.5),
    "memory": ("≥ 0.8× Load (hashed once, on the first call)", 0.8),
}
WHY = {
    "disk": (
        "sha256 runs at about 400 MiB/s per core here. The first GetAtom of a disk package "
        "hashes the atom twice (before sending: a signature mismatch is refused with nothing "
        "sent; while sending: a cache file that changed in between is never delivered whole); "
        "its verified digest is then remembered (the loader's memo tier, bounded, keyed by the "
        "file's sha256 name), so later calls hash only while sending, where Load streams its "
        "already verified file without hashing. Before the memo: 0.39× Load."
    ),
    "memory": (
        "the memory tier's copy is immutable, so the atom's verified hash is kept with the "
        "package after the first call and the stream costs what Load's does: one copy per chunk."
    ),
}

#: What "flat" means: the server's peak may rise by this much whatever the atom's size (a few
#: 1 MiB chunks in flight in grpcio and in the hashing passes, allocator slack).
FLAT = 32 * MiB


def _anon(pid: int) -> int:
    """RssAnon in bytes: the process's own memory, without file pages it may map (a mapped file's
    pages count in VmRSS/VmHWM, yet they are the kernel's page cache, reclaimable)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _call(pid: int, target: str, method: str, request: bytes) -> tuple[float, int, int, int]:
    """(seconds, bytes received, peak anonymous-memory rise, VmHWM rise) of one call, the client
    in another process; anonymous memory is sampled every 2 ms while the call runs."""
    before, rss_before = _anon(pid), read_status(pid)["VmRSS"]
    reset_peak(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], _anon(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        [run] = stream_once(target, method, request)
    finally:
        done.set()
        sampler.join()
    hwm = read_status(pid)["VmHWM"]
    return run["seconds"], int(run["bytes"]), peak[0] - before, max(0, hwm - rss_before)


def run(cfg: Config, report: Report) -> None:
    size = cfg.size(256 * MiB, 64 * MiB + 8192)  # the atom is ≥ 64 MiB even in a quick run
    repeats = 3 if not cfg.quick else 2
    package = big_webc(cfg.work / "data", size)
    atom_size = size - 4096
    atom_request = field_bytes(1, package.sha256.encode()) + field_bytes(2, b"big")
    load = load_request(f"file://{package.path}", package.sha256, content=True)
    results: dict[tuple[str, str], list[tuple[float, int, int, int]]] = {}

    with temp_dir(cfg, "atom-") as tmp:
        cache = tmp / "cache"
        cache.mkdir()
        shutil.copyfile(package.path, cache / f"{package.sha256}.bin")
        for source, memory in (("disk", 0), ("memory", 2 * size + 64 * MiB)):
            with pkgloader_server(cfg, f"atom-{source}", cache_dir=cache, memory=memory) as (
                proc,
                port,
            ):
                target = f"127.0.0.1:{port}"
                # Untimed first calls: imports, the first parse, promotion into memory.
                stream_once(target, LOAD, load)
                stream_once(target, GET_ATOM, atom_request)
                for _ in range(repeats):
                    for name, method, req in (
                        ("Load", LOAD, load),
                        ("GetAtom", GET_ATOM, atom_request),
                    ):
                        runs = results.setdefault((name, source), [])
                        runs.append(_call(proc.pid, target, method, req))

    for (name, _), runs in results.items():
        assert all(r[1] >= (atom_size if name == "GetAtom" else package.size) for r in runs), runs
    speed = {k: median([r[1] / MiB / r[0] for r in v]) for k, v in results.items()}
    # The worse of the two readings: the sampled anonymous peak, and VmHWM (exact, but it would
    # also count the pages of a mapped file; the loader reads with pread, so it maps none).
    rise = {k: max(max(r[2], r[3]) for r in v) for k, v in results.items()}
    hwm = {k: max(r[3] for r in v) for k, v in results.items()}
    for source in ("disk", "memory"):
        ours, base = ("GetAtom", source), ("Load", source)
        report.add(
            Figure(
                "atom_stream",
                f"GetAtom {atom_size // MiB} MiB atom from {source}, server peak memory rise",
                rise[ours] / MiB,
                "MiB",
                f"Load's content stream from {source}",
                rise[base] / MiB,
                f"flat: ≤ {FLAT // MiB} MiB whatever the size",
                rise[ours] <= FLAT,
                f"worst of {repeats}; VmHWM alone rose {hwm[ours] / MiB:,.1f} MiB "
                f"(Load: {hwm[base] / MiB:,.1f} MiB)",
            )
        )
        report.add(
            Figure(
                "atom_stream",
                f"GetAtom {atom_size // MiB} MiB atom from {source}, throughput",
                speed[ours],
                "MiB/s",
                f"Load's content stream from {source}",
                speed[base],
                TARGETS[source][0],
                speed[ours] >= TARGETS[source][1] * speed[base],
                f"median of {repeats}",
                why=WHY[source],
            )
        )
    report.note(
        "atom_stream",
        f"Package: a synthetic webc v1 of {package.size:,} bytes whose one atom is "
        f"{atom_size:,} bytes with a sha256 signature. Disk: PKGLOADER_MEMORY_CACHE_BYTES=0, so "
        "every call reads the cache file; memory: the package promoted by an untimed first call. "
        "Peak rise = the larger of VmHWM after the call (reset just before) minus VmRSS before "
        "it, and the highest RssAnon sampled every 2 ms during the call minus RssAnon before it. "
        "Client: one grpc.aio process, raw bytes, one call at a time.",
    )
