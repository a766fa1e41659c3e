"""Sources answer "which packages match this specifier"; `MultiSource` asks them in order.

A source raises `QueryMiss` when it cannot answer (the specifier kind is not its business, the
name is unknown to it, or no version matches), so the next one is asked, as wasmer's
`MultiSource` does; any other error (a registry that is down, a download that fails) ends the
query. `QueryMiss` never leaves the resolver: `Resolver` turns the last one into a
`PackageNotFound` or `NoMatchingVersion` with the reference's words.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
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


class NamedSource(Source, Protocol):
    """A source of a `MultiSource`, which names it on the status page."""

    #: "registry", "directory", "url" or "cache".
    kind: str

    @property
    def location(self) -> str:
        """Where it looks, with nothing secret in it (no token, no query string)."""
        ...


class MultiSource:
    """Asks its sources in order; the first that answers wins.

    On a miss the next source is asked. When all miss, the most telling miss is raised: "no
    matching version" (with the archived versions any source saw) over "not found" over
    "unsupported".
    """

    def __init__(
        self, sources: Sequence[NamedSource], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.sources = tuple(sources)
        self._clock = clock
        #: Per source, when it last answered (a match or a clean miss: it was reachable and
        #: made sense); a source that failed (a registry that is down) keeps its older time.
        self._answered: list[float | None] = [None] * len(self.sources)

    def query(self, specifier: Specifier) -> Candidates:
        misses: list[QueryMiss] = []
        for i, source in enumerate(self.sources):
            try:
                answer = source.query(specifier)
            except QueryMiss as miss:
                self._answered[i] = self._clock()
                misses.append(miss)
            else:
                self._answered[i] = self._clock()
                return answer
        no_matches = [m for m in misses if m.kind is Miss.NO_MATCHES]
        if no_matches:
            raise QueryMiss(Miss.NO_MATCHES, [v for m in no_matches for v in m.archived])
        raise QueryMiss(Miss.NOT_FOUND)

    def states(self) -> list[SourceState]:
        """Each source, in the order asked, and when it last answered (for `/status`)."""
        # A source that knows better when it last answered (the registry: a stale answer from
        # its cache reads as an answer here, but the registry itself was down) says so itself.
        return [
            SourceState(source.kind, source.location, getattr(source, "last_success", answered))
            for source, answered in zip(self.sources, self._answered, strict=True)
        ]


@dataclass(frozen=True)
class SourceState:
    kind: str
    location: str
    #: Unix time of its last answer; None: none since start.
    last_success: float | None
