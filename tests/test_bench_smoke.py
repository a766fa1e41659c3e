"""The benchmark tools still run: a tiny pass of two benchmarks and the sampling profiler,
timing ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def _python(*args: str) -> str:
    """`python args...` from the repository's root; its stdout, once it has exited 0."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_bench_quick_pass_writes_results(tmp_path: Path) -> None:
    """`python -m bench --quick` runs servers, clients and the upstream, and writes every figure
    with its baseline; no figure's value is checked (benchmarks are not tests)."""
    out = tmp_path / "RESULTS.md"
    _python(
        *("-m", "bench", "--quick", "--no-buildgrid", "--work", str(tmp_path / "w")),
        *("--out", str(out), "formats_open", "single_flight"),
    )
    text = out.read_text()
    assert "| 4 | 100 concurrent Loads, upstream requests |" in text
    assert "| 8 | Open + list wabt (3.4 MB), mapped file |" in text
    assert "Did not complete" not in text
    assert not (tmp_path / "w" / "data").exists(), "generated packages are cleaned up"


def test_the_sampling_profiler_reports_the_loop_threads_functions(tmp_path: Path) -> None:
    """`python -m bench.profile_warm --sampler py-spy` samples a running `pkgloader serve` under
    warm Loads and prints the gRPC loop thread's functions, ours among them."""
    printed = _python(
        *("-m", "bench.profile_warm", "--sampler", "py-spy", "--seconds", "2"),
        *("--work", str(tmp_path)),
    )
    assert "grpc-loop thread:" in printed
    assert "CallInterceptor._wrap_stream.<locals>.stream (pkgloader/rpc/interceptors.py)" in (
        printed
    )
