"""Coverage-guided fuzzing of the package reader with atheris (libFuzzer), run by
test_formats_fuzz.py in a subprocess: `python -m tests.reliability._atheris_target
<libFuzzer flags> <corpus dirs>`. Any exception but FormatError is a crash; libFuzzer's own
-timeout and -rss_limit_mb turn a hang or a memory blow-up into one too.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from pkgloader import formats

from tests.formats._helpers import exercise

_LIMITS = formats.TarballLimits(max_member_bytes=16 << 20, max_total_bytes=32 << 20)


_RUNS = [0]
LIMIT_MB = 1024


def _check_memory() -> None:
    """The process's own peak RSS (VmHWM belongs to this exec, unlike ru_maxrss), every 500 runs."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) // 1024
                print(f"vmhwm_mb: {peak}", file=sys.stderr, flush=True)
                if peak > LIMIT_MB:
                    raise MemoryError(f"the reader's process reached {peak} MB (limit {LIMIT_MB})")


def one_input(data: bytes) -> None:
    _RUNS[0] += 1
    if _RUNS[0] % 500 == 1:
        _check_memory()
    try:
        # Tight tar.gz limits: a mutated gzip bomb would otherwise be inflated whole by
        # exercise()'s read_file (by design a read returns the whole member), and libFuzzer counts
        # the process's RSS across runs. The reader's bounds are what is tested, not their size.
        container = formats.open_package(data, limits=_LIMITS)
    except formats.FormatError:
        return
    try:
        exercise(container)
    except formats.FormatError:
        pass
    finally:
        container.close()


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
