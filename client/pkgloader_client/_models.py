"""Typed results of the client's calls, converted once from the generated messages.

Plain frozen dataclasses, so callers need neither protobuf nor the generated modules to use them;
`to_dict()` gives a JSON-ready form (what the command line prints with `--json`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format, struct_pb2

from pkgloader_client._generated.pkgloader.v1 import package_loader_pb2 as pb


class Source(enum.Enum):
    """Where the server found a package."""

    UNSPECIFIED = "unspecified"
    MEMORY = "memory"
    DISK = "disk"
    DOWNLOAD = "download"


class ServingStatus(enum.Enum):
    """A grpc.health.v1 serving status."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


_SOURCES = {
    pb.SOURCE_UNSPECIFIED: Source.UNSPECIFIED,
    pb.SOURCE_MEMORY: Source.MEMORY,
    pb.SOURCE_DISK: Source.DISK,
    pb.SOURCE_DOWNLOAD: Source.DOWNLOAD,
}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.repr  # `repr=False` fields are raw messages or bytes, not data to print
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class _Data:
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the public fields."""
        result: dict[str, Any] = _jsonable(self)
        return result


def _struct(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)


@dataclasses.dataclass(frozen=True)
class Command(_Data):
    name: str
    runner: str
    annotations: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Atom(_Data):
    name: str
    kind: str
    signature: str
    size: int
    annotations: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Dependency(_Data):
    alias: str
    spec: str


@dataclasses.dataclass(frozen=True)
class Binding(_Data):
    name: str
    kind: str
    annotations: Any


@dataclasses.dataclass(frozen=True)
class Manifest(_Data):
    entrypoint: str | None
    commands: tuple[Command, ...]
    atoms: tuple[Atom, ...]
    dependencies: tuple[Dependency, ...]
    package: dict[str, Any]
    bindings: tuple[Binding, ...]

    @classmethod
    def from_proto(cls, m: pb.Manifest) -> Manifest:
        return cls(
            entrypoint=m.entrypoint if m.HasField("entrypoint") else None,
            commands=tuple(Command(c.name, c.runner, _struct(c.annotations)) for c in m.commands),
            atoms=tuple(
                Atom(a.name, a.kind, a.signature, a.size, _struct(a.annotations)) for a in m.atoms
            ),
            dependencies=tuple(Dependency(d.alias, d.spec) for d in m.dependencies),
            package=_struct(m.package),
            bindings=tuple(
                Binding(b.name, b.kind, json_format.MessageToDict(b.annotations))
                for b in m.bindings
            ),
        )


@dataclasses.dataclass(frozen=True)
class Volume(_Data):
    name: str
    files: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class Package(_Data):
    """A loaded package: its metadata, its manifest and, when asked for, its bytes."""

    sha256: str
    size: int
    source: Source
    cache_path: str
    format: str
    manifest: Manifest
    warnings: tuple[str, ...]
    volumes: tuple[Volume, ...]
    package_id: str
    #: The package bytes; None unless the load asked for them.
    content: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, p: pb.Package, content: bytes | None = None) -> Package:
        return cls(
            sha256=p.webc_sha256,
            size=p.size,
            source=_SOURCES.get(p.source, Source.UNSPECIFIED),
            cache_path=p.cache_path,
            format=p.format,
            manifest=Manifest.from_proto(p.manifest),
            warnings=tuple(p.warnings),
            volumes=tuple(Volume(v.name, v.files, v.bytes) for v in p.volumes),
            package_id=p.package_id,
            content=content,
        )


@dataclasses.dataclass(frozen=True)
class CacheEntry(_Data):
    """A package file in the server's disk cache."""

    sha256: str
    size: int
    last_used: dt.datetime
    in_memory: bool
    cache_path: str

    @classmethod
    def from_proto(cls, e: pb.CacheEntry) -> CacheEntry:
        return cls(
            sha256=e.webc_sha256,
            size=e.size,
            last_used=e.last_used.ToDatetime(tzinfo=dt.UTC),
            in_memory=e.in_memory,
            cache_path=e.cache_path,
        )


def entries(batches: Iterable[pb.ScanResponse]) -> list[CacheEntry]:
    return [CacheEntry.from_proto(e) for batch in batches for e in batch.entries]


@dataclasses.dataclass(frozen=True)
class RetainResult(_Data):
    """What a Retain removed (or, dry run, would remove) and what remains."""

    removed: tuple[CacheEntry, ...]  # the first 1000 (see `truncated`)
    kept_files: int
    kept_bytes: int
    removed_bytes: int
    removed_files: int = 0  # all of them
    truncated: bool = False  # `removed` lists fewer than `removed_files`

    @classmethod
    def from_proto(cls, r: pb.RetainResponse) -> RetainResult:
        removed = tuple(CacheEntry.from_proto(e) for e in r.removed)
        return cls(
            removed=removed,
            kept_files=r.kept_files,
            kept_bytes=r.kept_bytes,
            removed_bytes=r.removed_bytes,
            # A server without the count sends 0: then the list is complete.
            removed_files=r.removed_files or len(removed),
            truncated=r.truncated,
        )


@dataclasses.dataclass(frozen=True)
class EvictResult(_Data):
    """The hashes that were in the memory cache, and those whose disk files were deleted."""

    evicted: tuple[str, ...]  # the first 10000 (see `truncated`)
    deleted: tuple[str, ...]  # the first 10000
    evicted_count: int = 0
    deleted_count: int = 0
    truncated: bool = False

    @classmethod
    def from_proto(cls, r: pb.EvictResponse) -> EvictResult:
        return cls(
            evicted=tuple(r.evicted),
            deleted=tuple(r.deleted),
            evicted_count=r.evicted_count or len(r.evicted),
            deleted_count=r.deleted_count or len(r.deleted),
            truncated=r.truncated,
        )


@dataclasses.dataclass(frozen=True)
class MismatchedFile(_Data):
    """A cache file whose content does not hash to its name."""

    source: str
    expected_sha256: str
    actual_sha256: str
    pruned: bool


@dataclasses.dataclass(frozen=True)
class InvalidFile(_Data):
    """A cache file that hashes to its name but fails deep validation."""

    source: str
    sha256: str
    problems: tuple[str, ...]
    pruned: bool


@dataclasses.dataclass(frozen=True)
class ValidationReport(_Data):
    """The outcome of ValidateCache."""

    mismatches: tuple[MismatchedFile, ...]  # the first 1000 (see `truncated`)
    invalid_packages: tuple[InvalidFile, ...]  # the first 1000
    checked_files: int
    checked_bytes: int
    mismatch_count: int = 0
    invalid_package_count: int = 0
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not (self.mismatch_count or self.invalid_package_count)

    @classmethod
    def from_proto(cls, r: pb.ValidateCacheResponse) -> ValidationReport:
        return cls(
            mismatches=tuple(
                MismatchedFile(m.source, m.expected_sha256, m.actual_sha256, m.pruned)
                for m in r.mismatches
            ),
            invalid_packages=tuple(
                InvalidFile(b.source, b.webc_sha256, tuple(b.problems), b.pruned)
                for b in r.invalid_packages
            ),
            checked_files=r.checked_files,
            checked_bytes=r.checked_bytes,
            mismatch_count=r.mismatch_count or len(r.mismatches),
            invalid_package_count=r.invalid_package_count or len(r.invalid_packages),
            truncated=r.truncated,
        )
