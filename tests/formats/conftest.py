"""Make ``pkgloader`` importable from a bare checkout (``service/`` is not on the path)."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import pkgloader.formats  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "service"))
