"""Value types shared by every floor: how hashes are checked, where a package came from."""

from __future__ import annotations

import enum


class HashPolicy(enum.Enum):
    """What a Load does when the bytes do not hash to the expected sha256."""

    NONE = "none"
    WARN = "warn"
    FAIL = "fail"

    @classmethod
    def parse(cls, text: str) -> HashPolicy:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ValueError(f"expected none, warn or fail, got {text!r}") from None


class Source(enum.Enum):
    """Where a Load found its package."""

    MEMORY = "memory"
    DISK = "disk"
    DOWNLOAD = "download"


class CallerRole(enum.Enum):
    """Who asks for a Load, as far as what it may learn is concerned.

    ADMIN is also every caller of a server without client auth (PKGLOADER_AUTH_TOKENS_FILE
    unset): such a server lets anyone do anything, admin-only calls included.
    """

    READER = "reader"
    ADMIN = "admin"
