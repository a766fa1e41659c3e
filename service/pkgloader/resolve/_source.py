"""Sources answer "which packages match this specifier"; `MultiSource` asks them in order.

A source raises `QueryMiss` when it cannot answer (the specifier kind is not its business, the
name is unknown to it, or no version matches), so the next one is asked, as wasmer's
`MultiSource` does; any other error (a registry that is down, a download that fails) ends the
query. `QueryMiss` never leaves the resolver: `Resolver` turns the last one into a
`PackageNotFound` or `NoMatchingVersion` with the reference's words.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pkgloader.resolve._semver import Version
from pkgloader.resolve._specifier import Specifier
from pkgloader.resolve._types import Summary


class Miss(enum.Enum):
    UNSUPPORTED = "unsupported"
    NOT_FOUND = "not_found"
    NO_MATCHES = "no_matches"


class QueryMiss(Exception):  # a control-flow signal between sources, never shown
    """This source has no answer; `archived` lists archived versions that would have matched."""

    def __init__(self, kind: Miss, archived: Sequence[str] = ()) -> None:
        super().__init__(kind.value)
        self.kind = kind
        self.archived = tuple(archived)

    def describe(self) -> str:
        """wasmer's `QueryError` Display."""
        if self.kind is Miss.UNSUPPORTED:
            return "This type of package specifier isn't supported"
        if self.kind is Miss.NOT_FOUND:
            return "Not found"
        archived = sorted(self.archived, key=_version_key)
        if not archived:
            return "The package was found, but no published versions matched the constraint"
        if len(archived) == 1:
            return f"The only version satisfying the constraint, {archived[0]}, is archived"
        return (
            f"Unable to satisfy the request. Version {archived[0]}, and {len(archived) - 1} "
            "are all archived"
        )


def _version_key(text: str) -> tuple[int, Version | str]:
    try:
        return (0, Version.parse(text))
    except ValueError:
        return (1, text)


@dataclass(frozen=True)
class Candidates:
    """A source's answer: every matching package (at least one), and warnings for the caller."""

    summaries: tuple[Summary, ...]
    warnings: tuple[str, ...] = ()

    def latest(self) -> Summary:
        """The newest version (wasmer's `Source::latest`); hash ids have no version to compare."""
        return max(self.summaries, key=lambda s: _version_key(s.id.version or "0.0.0"))


class Source(Protocol):
    def query(self, specifier: Specifier) -> Candidates:
        """Every package matching `specifier`; `QueryMiss` when there is none here."""
        ...


class MultiSource:
    """Asks its sources in order; the first that answers wins.

    On a miss the next source is asked. When all miss, the most telling miss is raised: "no
    matching version" (with the archived versions any source saw) over "not found" over
    "unsupported".
    """

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = tuple(sources)

    def query(self, specifier: Specifier) -> Candidates:
        misses: list[QueryMiss] = []
        for source in self.sources:
            try:
                return source.query(specifier)
            except QueryMiss as miss:
                misses.append(miss)
        no_matches = [m for m in misses if m.kind is Miss.NO_MATCHES]
        if no_matches:
            raise QueryMiss(Miss.NO_MATCHES, [v for m in no_matches for v in m.archived])
        raise QueryMiss(Miss.NOT_FOUND)
