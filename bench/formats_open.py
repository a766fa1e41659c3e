"""8. Opening a package from a mapped file and listing its manifest, atoms and volumes: the wabt
fixture (3.4 MB), and a package of the same shape with atoms 100× larger built here. Time and
memory must not grow with atom sizes.

Each package is measured in a fresh process (`python -m bench.formats_open PATH`), so the memory
figure is that process's own: its RSS growth, and the Python heap's peak (tracemalloc).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from bench._common import PYTHON, WABT, Config, MiB, base_env, median, pinned, read_status
from bench._report import Figure, Report

TITLE = "Open a package from a mapped file and list manifest, atoms and volumes"


def open_and_list(path: Path) -> int:
    from pkgloader import formats

    with formats.open_package(path) as container:
        manifest = container.manifest
        atoms = {name: len(view) for name, view in container.atoms().items()}
        volumes = {name: (v.file_count, v.total_bytes) for name, v in container.volumes().items()}
        return len(manifest.atoms) + len(atoms) + len(volumes)


def probe(path: Path, iterations: int) -> dict[str, float]:
    import pkgloader.formats  # noqa: F401 - imports are not what is measured

    rss0 = read_status(__import__("os").getpid())["VmRSS"]
    tracemalloc.start()
    t0 = time.perf_counter()
    open_and_list(path)
    first = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = read_status(__import__("os").getpid())["VmHWM"]
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        open_and_list(path)
        times.append(time.perf_counter() - t0)
    return {"first": first, "median": median(times), "heap_peak": peak, "rss_growth": rss1 - rss0}


def run(cfg: Config, report: Report) -> None:
    from bench._packages import scaled_wabt

    iterations = 200 if not cfg.quick else 20
    factor = 100
    big = scaled_wabt(cfg.work / "data", factor)
    results = {}
    for name, path in (("wabt", WABT), ("big", big.path)):
        out = subprocess.run(
            pinned([PYTHON, "-m", "bench.formats_open", str(path), str(iterations)]),
            capture_output=True,
            text=True,
            check=True,
            env=base_env(),
        )
        results[name] = json.loads(out.stdout)
    small, large = results["wabt"], results["big"]
    report.add(
        Figure(
            "formats_open",
            "Open + list wabt (3.4 MB), mapped file",
            small["median"] * 1e3,
            "ms",
            target="< 5 ms",
            met=small["median"] * 1e3 < 5.0,
            note=f"median of {iterations}; the first open in a fresh process: "
            f"{small['first'] * 1e3:.2f} ms",
        )
    )
    report.add(
        Figure(
            "formats_open",
            f"Open + list, atoms {factor}× larger ({big.size / MiB:,.0f} MiB)",
            large["median"] * 1e3,
            "ms",
            "wabt",
            small["median"] * 1e3,
            "does not grow with atom sizes (≤ 1.5×)",
            large["median"] <= 1.5 * small["median"],
            f"first open: {large['first'] * 1e3:.2f} ms",
        )
    )
    report.add(
        Figure(
            "formats_open",
            f"Python heap peak of one open, atoms {factor}× larger",
            large["heap_peak"] / 1024,
            "KiB",
            "wabt",
            small["heap_peak"] / 1024,
            "does not grow with atom sizes (≤ 1.5×)",
            large["heap_peak"] <= 1.5 * small["heap_peak"],
            f"RSS growth of the process over the first open: {large['rss_growth'] / 1024:,.0f} KiB "
            f"vs {small['rss_growth'] / 1024:,.0f} KiB",
        )
    )
    report.note(
        "formats_open",
        f"The large package is wabt rebuilt with each atom's bytes repeated {factor}× (same "
        f"manifest, commands, atom names and volumes; no header checksum). Listing = the "
        f"manifest, every atom's name and size, every volume's file count and byte total.",
    )


if __name__ == "__main__":
    print(json.dumps(probe(Path(sys.argv[1]), int(sys.argv[2]))))
