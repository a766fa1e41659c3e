"""9. Resolve: a dependency graph from a package folder, 64 in flight, beside warm Load.

The tree is eight packages in a package folder (PKGLOADER_PACKAGE_DIRS), each depending on the
next two, so 8 nodes and 13 edges: every Resolve lists the folder for each of 13 dependency
queries and reads each file's parsed summary from the source's memo (no network, no registry).
The baseline, in the same run and the same server, is the warm Load of one package (memory hit,
metadata only): the cheapest call the service answers.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from pkgloader.formats import writer

from bench._common import (
    LOAD,
    WABT,
    WABT_SHA256,
    Config,
    field_bytes,
    load_request,
    measure_rate,
    pkgloader_server,
    temp_dir,
)
from bench._report import Figure, Report

TITLE = "Resolve (8-package folder tree) vs warm Load, 64 in flight"
RESOLVE = "/pkgloader.v1.PackageLoaderService/Resolve"
PACKAGES = 8
WASM = b"\0asm\x01\0\0\0"


def _tree(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(PACKAGES):
        use = {f"p{j}": f"bench/p{j}@^1" for j in (i + 1, i + 2) if j < PACKAGES}
        manifest = {"package": {"wapm": {"name": f"bench/p{i}", "version": "1.0.0"}}}
        if use:
            manifest["use"] = use
        (folder / f"bench--p{i}@1.0.0.webc").write_bytes(
            writer.write_v1(manifest, {"main": WASM}, {})
        )


def run(cfg: Config, report: Report) -> None:
    from pkgloader_client import pb

    resolve_request = field_bytes(1, b"bench/p0")
    load = load_request(WABT.as_uri(), WABT_SHA256, content=False)
    with temp_dir(cfg, "resolve-") as tmp:
        _tree(tmp / "packages")
        extra = {"PKGLOADER_PACKAGE_DIRS": str(tmp / "packages")}
        with pkgloader_server(
            cfg, "resolve-pkgloader", cache_dir=tmp / "cache", memory=256 << 20, extra=extra
        ) as (_, port):
            target = f"127.0.0.1:{port}"
            with grpc.insecure_channel(target) as channel:
                # Prime both (and prove the Resolve answers what the figure claims).
                reply = channel.unary_unary(RESOLVE)(resolve_request, timeout=60)
                answer = pb.ResolveResponse.FromString(reply)
                assert len(answer.resolution.nodes) == PACKAGES, answer
                assert len(answer.resolution.edges) == 2 * PACKAGES - 3, answer
                list(channel.unary_stream(LOAD)(load, timeout=60))
            resolved = measure_rate(cfg, target, RESOLVE, resolve_request, kind="unary_unary")
            loaded = measure_rate(cfg, target, LOAD, load)
    report.add(
        Figure(
            "resolve",
            "Resolve rate",
            resolved["rate"],
            "req/s",
            "warm Load rate, same server and run",
            loaded["rate"],
            note=f"Resolve p50 {resolved['p50_ms']:.2f} ms, p99 {resolved['p99_ms']:.2f} ms, "
            f"errors {resolved['errors']:.0f}; reply {len(reply)} bytes; warm Load p50 "
            f"{loaded['p50_ms']:.2f} ms",
        )
    )
    report.note(
        "resolve",
        f"{PACKAGES} webc v1 packages in one folder, each using the next two (8 nodes, 13 edges); "
        f"{cfg.seconds(5, 1):g} s window after {cfg.seconds(1, 0.3):g} s warm-up.",
    )
