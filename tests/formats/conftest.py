"""Make ``pkgloader`` importable from a bare checkout (``service/`` is not on the path)."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import pkgloader.formats  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "service"))


import pytest

from ._helpers import HELLO, WEBSERVER


@pytest.fixture(scope="session")
def hello_bytes() -> bytes:
    """The hello v1 sample's bytes."""
    return HELLO.read_bytes()


@pytest.fixture(scope="session")
def webserver_bytes() -> bytes:
    """The volume-static-webserver v3 sample's bytes."""
    return WEBSERVER.read_bytes()
