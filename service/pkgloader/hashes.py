"""`WebcHash`: the sha256 that names a package, and the only way text becomes one."""

from __future__ import annotations

import string
from dataclasses import dataclass

from pkgloader.errors import InvalidHash

_HEX = frozenset(string.hexdigits)


@dataclass(frozen=True, slots=True)
class WebcHash:
    """A package's sha256. `hex` is always lowercase: it is the cache file name."""

    hex: str

    @classmethod
    def parse(cls, text: str) -> WebcHash:
        """Accept 64 hex digits in either case (as wasmer's `parse_hex` does)."""
        if len(text) != 64 or not _HEX.issuperset(text):
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise InvalidHash(
                f"webc_sha256 must be 64 hex digits, got {shown!r} ({len(text)} characters)",
                value=shown,
            )
        return cls(text.lower())

    def __str__(self) -> str:
        return self.hex
