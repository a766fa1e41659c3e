"""Format detection, exactly as wasmer's ``is_tarball`` + ``webc::detect`` (doc §2)."""

from __future__ import annotations

import mmap

from ._errors import DetectError

GZIP_MAGIC = b"\x1f\x8b"
WEBC_MAGIC = b"\x00webc"

_FORMATS = {b"001": "webc-v1", b"002": "webc-v2", b"003": "webc-v3"}

Buffer = bytes | bytearray | memoryview | mmap.mmap


def as_view(data: Buffer) -> memoryview:
    """A flat, byte-indexed view of ``data`` (no copy)."""
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def detect(data: Buffer) -> str:
    """Name the package format of ``data``: ``webc-v1``, ``webc-v2``, ``webc-v3`` or ``tarball``.

    Raises ``DetectError`` when the bytes are neither gzip nor ``\\0webc`` + 001/002/003.
    """
    head = bytes(as_view(data)[:8])
    if head[:2] == GZIP_MAGIC:
        return "tarball"
    if head[:5] != WEBC_MAGIC:
        raise DetectError(
            f"not a package: expected gzip magic or {WEBC_MAGIC!r}, found {head[:5]!r}"
        )
    version = head[5:8]
    if len(version) < 3:
        raise DetectError(f"not a package: the webc header ends after {len(head)} bytes")
    try:
        return _FORMATS[version]
    except KeyError:
        shown = version.decode("ascii", "backslashreplace")
        raise DetectError(f"Unsupported WEBC version, {shown}") from None
