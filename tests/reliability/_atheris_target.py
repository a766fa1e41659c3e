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


def one_input(data: bytes) -> None:
    try:
        container = formats.open_package(data)
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
