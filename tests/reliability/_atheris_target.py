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


def one_input(data: bytes) -> None:
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
