"""What a format parser hands to ``Container``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._source import Content
from ._volume import Volume


def _nothing() -> list[str]:
    return []


@dataclass
class Parsed:
    format: str
    version: str
    manifest: object  # the decoded manifest map, before shape checks
    atoms: dict[str, Content]  # handles: regions of the source, or tar.gz members
    volumes: dict[str, Volume]
    # Format-specific integrity checks, run by ``Container.validate`` (atom signatures are
    # checked by the container itself, the same way for every format).
    problems: Callable[[], list[str]] = _nothing
    checksum_valid: Callable[[], bool | None] | None = None
    #: Bytes the parse holds in memory outside the package's source (tar.gz: members kept
    #: in memory and inflater checkpoints); the trees and manifest are added by the container.
    held_bytes: int = 0
