"""The package reader under attack, beyond tests/formats/test_fuzz.py (which flips, sets,
inserts and deletes bytes in place and checks only the exception type):

- length and offset fields inflated to huge values (the blow-up a reader must refuse),
  LEB128 runs and crossovers between samples, read from a file (mapped, as the cache does);
  each input under a hang alarm, the process's peak RSS checked after all of them;
- a bounded coverage-guided atheris run in a subprocess, where libFuzzer's -timeout and
  -rss_limit_mb turn a hang or a memory blow-up into a failure.

Only `formats.FormatError` may escape the reader.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pkgloader import formats

from tests.conftest import COWSAY, DASH, HELLO, REPO, STATIC
from tests.formats._helpers import exercise
from tests.reliability.conftest import SOAK

MiB = 1 << 20
HANG_SECONDS = 20  # far above any real parse (milliseconds); only a hang reaches it
SAMPLES = {f.name: f.data for f in (HELLO, STATIC, DASH, COWSAY)}
# Where headers, indexes, manifests and volume headers live in each sample.
HOT = {
    HELLO.name: (0, len(SAMPLES[HELLO.name])),
    STATIC.name: (0, len(SAMPLES[STATIC.name])),
    DASH.name: (0, 1760),
    COWSAY.name: (0, 4096),
}
INFLATED = [2**7, 2**15 - 1, 2**16, 2**31 - 1, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1]


@contextlib.contextmanager
def hang_alarm(seconds: int) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise TimeoutError(f"the reader hung for {seconds}s on one input")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def read_fully(source: bytes | Path) -> None:
    """Open and use everything; only FormatError may escape."""
    try:
        container = formats.open_package(source)
    except formats.FormatError:
        return
    try:
        exercise(container)
    except formats.FormatError:
        pass
    finally:
        container.close()


@st.composite
def attacked(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(sorted(SAMPLES)))
    data = bytearray(SAMPLES[name])
    lo, hi = HOT[name]
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(lo, max(lo, min(hi, len(data)) - 1)))
        kind = draw(st.sampled_from(["int", "leb128", "crossover", "zero-run"]))
        if kind == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from([*INFLATED, len(data) + draw(st.integers(-8, 8))]))
            value %= 256**width
            order = draw(st.sampled_from(["little", "big"]))
            data[at : at + width] = value.to_bytes(width, order)
        elif kind == "leb128":
            data[at : at + 1] = b"\xff" * draw(st.integers(1, 12)) + b"\x7f"
        elif kind == "crossover":
            other = SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))]
            start = draw(st.integers(0, len(other) - 1))
            data[at:] = other[start : start + draw(st.integers(1, 4096))]
        else:
            data[at : at + draw(st.integers(1, 64))] = bytes(draw(st.integers(1, 64)))
    return bytes(data)


def test_inflated_lengths_and_crossovers_never_hang_or_blow_up(tmp_path: Path) -> None:
    """Huge length/offset fields, LEB128 runs, crossovers: FormatError or a clean parse."""
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    path = tmp_path / "input.webc"
    tried = {"inputs": 0}

    @settings(
        max_examples=2000 if SOAK else 400,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(attacked())
    def run(data: bytes) -> None:
        tried["inputs"] += 1
        path.write_bytes(data)
        with hang_alarm(HANG_SECONDS):
            read_fully(data)
            read_fully(path)  # mapped from a file, as a cache hit is

    run()
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"formats: {tried['inputs']} inputs, peak RSS +{(peak_after - peak_before) >> 20} MiB")
    assert peak_after - peak_before < 256 * MiB


def test_atheris_run_finds_no_crash_hang_or_blow_up(tmp_path: Path, rng, record_property) -> None:
    """A bounded coverage-guided run (20,000 inputs) of open_package + every read API."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        why = "atheris is not installed (pip install atheris; wheels for CPython ≤ 3.11)"
        # The lock installs it on CI's kind of machine (x86_64, CPython 3.11): no skip there.
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for fixture in (HELLO, STATIC, COWSAY):  # linked, never copied
        (seeds / fixture.name).symlink_to(fixture.path)
    out = tmp_path / "corpus"
    out.mkdir()
    runs = 500_000 if SOAK else 20_000
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability._atheris_target",
            f"-runs={runs}",
            f"-seed={rng.randrange(1, 2**31)}",
            "-max_len=400000",
            f"-timeout={HANG_SECONDS}",
            # libFuzzer's RSS figure is getrusage's ru_maxrss, which Linux carries across exec:
            # forked from a large pytest process, the fuzzer starts "at" pytest's size. Its own
            # limit is set out of that range; the target checks its own VmHWM (1 GiB) instead.
            "-rss_limit_mb=8192",
            "-print_final_stats=1",
            f"-artifact_prefix={tmp_path}/",
            str(out),
            str(seeds),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert f"Done {runs} runs" in log, log[-2000:]
    rss = max(int(m) for m in re.findall(r"vmhwm_mb: (\d+)", log))
    coverage = max(int(m) for m in re.findall(r"cov: (\d+)", log))
    record_property("atheris_runs", runs)
    record_property("atheris_peak_rss_mb", rss)
    print(f"atheris: {runs} runs, coverage {coverage} edges, peak RSS {rss} MB")
    assert rss < 1024
