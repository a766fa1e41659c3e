"""7. Time to first byte of a Load whose package is on disk but not in memory, for the wabt
fixture: the first content chunk, against a bare server's first chunk of the same bytes.

Two cases: the first Load a freshly started server serves (nothing warmed in the process), and
the steady state of a running server whose memory cache lacks the package (it is evicted from
memory, not from disk, before each Load).
"""

from __future__ import annotations

import shutil

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
    pkgloader_server,
    run_client,
    stream_once,
    temp_dir,
)
from bench._report import Figure, Report

TITLE = "Time to first byte, package on disk but not in memory, wabt"
EVICT = "/pkgloader.v1.PackageLoaderService/Evict"


def run(cfg: Config, report: Report) -> None:
    import base64

    starts = 5 if not cfg.quick else 2
    repeats = 50 if not cfg.quick else 5
    request = load_request(WABT.as_uri(), WABT_SHA256, content=True)
    evict = pb.EvictRequest(
        webc_sha256=[WABT_SHA256], scope=pb.EVICT_SCOPE_MEMORY
    ).SerializeToString()
    size = WABT.stat().st_size
    fresh_meta, fresh_chunk, bare_fresh = [], [], []
    with temp_dir(cfg, "ttfb-") as tmp:
        cache = tmp / "cache"
        cache.mkdir()
        shutil.copyfile(WABT, cache / f"{WABT_SHA256}.bin")
        for _ in range(starts):
            with pkgloader_server(cfg, "ttfb", cache_dir=cache, memory=256 * MiB) as (_, port):
                first = stream_once(f"127.0.0.1:{port}", LOAD, request)[0]
                assert first["bytes"] >= size
                fresh_meta.append(first["first"])
                fresh_chunk.append(first["second"])
            with bare_server("sync", "stream", total=size, chunk=MiB) as (_, port):
                bare_fresh.append(
                    stream_once(f"127.0.0.1:{port}", "/bench.Bare/Call", b"")[0]["first"]
                )
        with pkgloader_server(cfg, "ttfb", cache_dir=cache, memory=256 * MiB) as (_, port):
            spec = {
                "mode": "stream",
                "target": f"127.0.0.1:{port}",
                "method": LOAD,
                "request": base64.b64encode(request).decode(),
                "repeats": repeats,
                "between": {"method": EVICT, "request": base64.b64encode(evict).decode()},
            }
            run_client({**spec, "repeats": 3})  # warm the process: not timed
            steady = run_client(spec)["runs"]
        with bare_server("sync", "stream", total=size, chunk=MiB) as (_, port):
            bare_steady = stream_once(f"127.0.0.1:{port}", "/bench.Bare/Call", b"", repeats=repeats)
    steady_chunk = median([r["second"] for r in steady]) * 1e3
    report.add(
        Figure(
            "first_byte",
            "First content byte, disk only, running server",
            steady_chunk,
            "ms",
            "bare sync server, first pre-built 1 MiB chunk",
            median([r["first"] for r in bare_steady]) * 1e3,
            "≤ 5 ms",
            steady_chunk <= 5.0,
            f"median of {repeats} Loads, each after an Evict from memory; metadata message after "
            f"{median([r['first'] for r in steady]) * 1e3:.2f} ms",
        )
    )
    ttfb = median(fresh_chunk) * 1e3
    report.add(
        Figure(
            "first_byte",
            "First content byte, the first Load of a fresh process",
            ttfb,
            "ms",
            "bare sync server, its first call",
            median(bare_fresh) * 1e3,
            "≤ 5 ms",
            ttfb <= 5.0,
            f"median of {starts} fresh server processes; metadata message after "
            f"{median(fresh_meta) * 1e3:.2f} ms",
            why="the first call a fresh grpcio server handles pays one-time costs (worker thread "
            "start, first-call code paths, lazy imports) that the bare server's first call shows "
            "too; in a running process the same disk-only Load is the figure above.",
        )
    )
    report.note(
        "first_byte",
        "Timed in the client from the call to the first `chunk` message (the metadata message "
        "comes before it), on a channel connected beforehand. A Load of a package on disk maps "
        "the file, parses the package, copies it into the memory cache, builds the metadata and "
        "sends the first 1 MiB. The file is in the page cache.",
    )
