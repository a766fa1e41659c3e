"""`python -m bench [NAME ...] [--quick] [--no-buildgrid] [--out PATH] [--keep]`

Runs the benchmarks (all by default) and writes the results: a full run of every benchmark to
bench/RESULTS.md, anything else (a subset, --quick) to bench/out/RESULTS.md unless --out says.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from bench._common import OUT, REPO, Config
from bench._report import Report

#: name → module, in the order of the issue's list.
BENCHMARKS = [
    "warm_load",
    "content_load",
    "cold_load",
    "single_flight",
    "validate_cache",
    "many_entries",
    "first_byte",
    "formats_open",
    "resolve",
    "atom_stream",
    "tree_load",
    "python_client",
]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and durations")
    parser.add_argument("--no-buildgrid", action="store_true", help="skip the BuildGrid baselines")
    parser.add_argument("--out", type=Path, help="where to write the Markdown results")
    parser.add_argument("--work", type=Path, default=OUT, help="scratch folder (default bench/out)")
    parser.add_argument("--keep", action="store_true", help="keep generated packages")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    names = [n for n in BENCHMARKS if n in args.names] or BENCHMARKS
    cfg = Config(quick=args.quick, buildgrid=not args.no_buildgrid, work=args.work.resolve())
    cfg.work.mkdir(parents=True, exist_ok=True)
    full = names == BENCHMARKS and not args.quick
    out = args.out or (REPO / "bench" / "RESULTS.md" if full else OUT / "RESULTS.md")
    command = (
        "make bench"
        if full
        else "python -m bench "
        + " ".join(
            (["--quick"] if args.quick else [])
            + (["--no-buildgrid"] if args.no_buildgrid else [])
            + list(args.names)
        )
    )
    report = Report(command=command.strip(), quick=args.quick)
    modules = {name: importlib.import_module(f"bench.{name}") for name in BENCHMARKS}
    titles = {name: modules[name].TITLE for name in BENCHMARKS}
    failed = False
    # A SIGTERM unwinds like Ctrl-C, so every server and client this run started is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for name in names:
            print(f"== {name}: {titles[name]}", flush=True)
            started = time.monotonic()
            try:
                modules[name].run(cfg, report)
            except Exception:
                failed = True
                report.errors[name] = traceback.format_exc()[-4000:]
                print(report.errors[name], file=sys.stderr, flush=True)
            report.seconds[name] = time.monotonic() - started
            report.write(out, titles)  # after each one: a partial run still leaves its figures
    finally:
        if not args.keep:
            shutil.rmtree(cfg.work / "data", ignore_errors=True)
    print(f"results written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
