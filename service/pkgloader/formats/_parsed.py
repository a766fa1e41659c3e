"""What a format parser hands to ``Container``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._volume import Content, Volume


def _nothing() -> list[str]:
    return []


@dataclass
class Parsed:
    format: str
    version: str
    manifest: object  # the decoded manifest map, before shape checks
    atoms: dict[str, Content]  # views, or OnDemand for a tar.gz member not kept in memory
    volumes: dict[str, Volume]
    # Format-specific integrity checks, run by ``Container.validate`` (atom signatures are
    # checked by the container itself, the same way for every format).
    problems: Callable[[], list[str]] = _nothing
    checksum_valid: Callable[[], bool | None] | None = None
