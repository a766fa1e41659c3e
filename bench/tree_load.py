"""9. LoadTree: a tree of the three real v1 fixtures (wabt's six commands, dash's one, hello's and
dash's volumes mounted), against Load of the same packages in the same run.

- Warm, metadata only, 64 in flight: LoadTree of the tree (three memory hits, commands resolved
  to atoms, atom hashes remembered per package) against Load of wabt alone.
- Atoms streamed: LoadTree with include_atoms (7 distinct atoms, 3.0 MiB; memory-tier bytes, so
  GetAtom's rule applies: verified once per package, not hashed again as they go out) against
  Load of wabt with include_content (3.3 MiB), client in another process.
- Cold: LoadTree from an empty cache (three file:// loads, at most 32 at once) against the three
  Loads one after the other, each on a fresh server.
"""

from __future__ import annotations

from pkgloader_client import pb

from bench._common import (
    FIXTURES,
    LOAD,
    WABT,
    WABT_SHA256,
    Config,
    MiB,
    load_request,
    measure_rate,
    median,
    pkgloader_server,
    stream_once,
    temp_dir,
)
from bench._report import Figure, Report

TITLE = "LoadTree of three real packages, warm, with atoms, and cold"
LOAD_TREE = "/pkgloader.v1.PackageLoaderService/LoadTree"

DASH = FIXTURES / "dash-1.0.18-f0d13233-bcda-4cf1-9a23-3460bffaae2a.webc"
DASH_SHA256 = "8f65a4da88e86935c3a0214bde050bb59b774cbf700f4d68a87948170385b323"
HELLO = FIXTURES / "hello-0.1.0-665d2ddc-80e6-4845-85d3-4587b1693bb7.webc"
HELLO_SHA256 = "da74f27c90ad4af24a6d69a1cdc521313fa64176abd3f3c200c730048e0fa94e"
PACKAGES = [
    ("wasmer/wabt@1.0.37", WABT, WABT_SHA256),
    ("sharrattj/dash@1.0.18", DASH, DASH_SHA256),
    ("wasmer/hello@0.1.0", HELLO, HELLO_SHA256),
]
WABT_COMMANDS = ["wat2wasm", "wast2json", "wasm2wat", "wasm-interp", "wasm-validate", "wasm-strip"]


def tree_request(include_atoms: bool) -> bytes:
    wabt, dash, hello = (p[0] for p in PACKAGES)
    resolution = pb.Resolution(
        root=wabt,
        nodes=[
            pb.ResolvedNode(
                id=pid,
                dist=pb.DistributionInfo(
                    webc_url=path.as_uri(), webc_sha256=sha, webc_size=path.stat().st_size
                ),
            )
            for pid, path, sha in PACKAGES
        ],
        edges=[
            pb.ResolvedEdge(**{"from": wabt, "to": dash, "alias": "dash"}),
            pb.ResolvedEdge(**{"from": wabt, "to": hello, "alias": "hello"}),
        ],
        commands=[pb.ResolvedCommand(name=n, package=wabt, original_name=n) for n in WABT_COMMANDS]
        + [pb.ResolvedCommand(name="dash", package=dash, original_name="dash")],
        mounts=[
            pb.ResolvedMount(mount_path="/", package=wabt, volume="atom", original_path="/"),
            pb.ResolvedMount(mount_path="/usr", package=dash, volume="atom", original_path="/usr"),
            pb.ResolvedMount(mount_path="/www", package=hello, volume="atom", original_path="/"),
        ],
    )
    return pb.LoadTreeRequest(
        specifier=wabt, resolution=resolution, include_atoms=include_atoms
    ).SerializeToString()


def _mb_per_s(runs: list[dict[str, float]]) -> float:
    return median([r["bytes"] / MiB / r["seconds"] for r in runs])


def run(cfg: Config, report: Report) -> None:
    target = "127.0.0.1:{}"
    tree_meta, tree_atoms = tree_request(False), tree_request(True)
    load_meta = load_request(WABT.as_uri(), WABT_SHA256, content=False)
    load_content = load_request(WABT.as_uri(), WABT_SHA256, content=True)
    repeats = 2 if cfg.quick else 10
    with temp_dir(cfg, "tree-") as tmp:
        with pkgloader_server(cfg, "tree-warm", cache_dir=tmp / "cache", memory=256 << 20) as (
            _,
            port,
        ):
            address = target.format(port)
            stream_once(address, LOAD_TREE, tree_meta)  # prime: all three in memory
            tree_rate = measure_rate(cfg, address, LOAD_TREE, tree_meta)
            load_rate = measure_rate(cfg, address, LOAD, load_meta)
            atoms = stream_once(address, LOAD_TREE, tree_atoms, repeats=repeats)
            content = stream_once(address, LOAD, load_content, repeats=repeats)
        cold_tree, cold_loads = [], []
        for i in range(1 if cfg.quick else 3):
            with pkgloader_server(cfg, "tree-cold", cache_dir=tmp / f"t{i}", memory=256 << 20) as (
                _,
                port,
            ):
                cold_tree.append(stream_once(target.format(port), LOAD_TREE, tree_meta)[0])
            with pkgloader_server(cfg, "load-cold", cache_dir=tmp / f"l{i}", memory=256 << 20) as (
                _,
                port,
            ):
                cold_loads.append(
                    sum(
                        stream_once(
                            target.format(port),
                            LOAD,
                            load_request(path.as_uri(), sha, content=False),
                        )[0]["seconds"]
                        for _, path, sha in PACKAGES
                    )
                )
    report.add(
        Figure(
            "tree_load",
            "Warm LoadTree rate (3 packages, 7 commands, 3 mounts)",
            tree_rate["rate"],
            "req/s",
            "warm Load of wabt, same server",
            load_rate["rate"],
            note=f"LoadTree p50 {tree_rate['p50_ms']:.2f} ms, p99 {tree_rate['p99_ms']:.2f} ms; "
            f"Load p50 {load_rate['p50_ms']:.2f} ms; errors {tree_rate['errors']:.0f}",
        )
    )
    report.add(
        Figure(
            "tree_load",
            "LoadTree with atoms (7 atoms, verified once per package)",
            _mb_per_s(atoms),
            "MiB/s",
            "Load of wabt with content, same server",
            _mb_per_s(content),
            note=f"median of {repeats}; {atoms[0]['bytes'] / MiB:.1f} MiB of atoms vs "
            f"{content[0]['bytes'] / MiB:.1f} MiB of package",
        )
    )
    report.add(
        Figure(
            "tree_load",
            "Cold LoadTree (3 file:// packages)",
            median([r["seconds"] for r in cold_tree]) * 1e3,
            "ms",
            "the 3 cold Loads one after the other",
            median(cold_loads) * 1e3,
            note="fresh server and cache each; median of the rounds",
        )
    )
