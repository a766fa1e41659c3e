"""Byte counts as people write them, with one meaning on both sides of the wire.

The service's settings (`PKGLOADER_MAX_PACKAGE_BYTES=4Gi`) and the CLI (`retain
--max-total-bytes 20G`) both read sizes with `parse_size`, so the same text is the same number
of bytes everywhere: the SI suffixes are decimal (`k` 10³, `M` 10⁶, `G` 10⁹, `T` 10¹²), the IEC
ones binary (`Ki` 2¹⁰, `Mi` 2²⁰, `Gi` 2³⁰, `Ti` 2⁴⁰), as Kubernetes quantities are. A trailing
`B` is allowed (`64KiB`, `2GB`); case does not matter.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(text: str) -> int:
    """`1048576`, `512Mi`, `2G`, `64KiB` → bytes (`G` is 10⁹, `Gi` 2³⁰); ValueError otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"expected a byte count such as 1048576, 512Mi or 2G, got {text!r}")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
