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


@dataclasses.dataclass(frozen=True)
class ResolvedNode(_Data):
    """A package of a resolution and where to get it (an empty `webc_url`: it is cached)."""

    id: str
    webc_url: str
    webc_sha256: str
    webc_size: int | None


@dataclasses.dataclass(frozen=True)
class ResolvedEdge(_Data):
    """Package `from_` (the proto's `from`) uses package `to` under `alias`."""

    from_: str
    to: str
    alias: str


@dataclasses.dataclass(frozen=True)
class ResolvedCommand(_Data):
    name: str
    package: str
    original_name: str


@dataclasses.dataclass(frozen=True)
class ResolvedMount(_Data):
    mount_path: str
    package: str
    volume: str
    original_path: str


@dataclasses.dataclass(frozen=True)
class Resolution(_Data):
    """What Resolve answered: the dependency graph, commands, entrypoint and mounts.

    `message` is the `pb.Resolution` itself, to send back as it is (LoadTree takes one);
    `to_dict()` gives the ResolveResponse's JSON as grpcurl prints it.
    """

    root: str
    nodes: list[ResolvedNode]
    edges: list[ResolvedEdge]
    commands: list[ResolvedCommand]
    entrypoint: str | None
    mounts: list[ResolvedMount]
    warnings: list[str]
    message: pb.Resolution = dataclasses.field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": json_format.MessageToDict(self.message),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_proto(cls, r: pb.ResolveResponse) -> Resolution:
        m = r.resolution
        return cls(
            root=m.root,
            nodes=[
                ResolvedNode(
                    n.id,
                    n.dist.webc_url,
                    n.dist.webc_sha256,
                    n.dist.webc_size if n.dist.HasField("webc_size") else None,
                )
                for n in m.nodes
            ],
            edges=[ResolvedEdge(getattr(e, "from"), e.to, e.alias) for e in m.edges],
            commands=[ResolvedCommand(c.name, c.package, c.original_name) for c in m.commands],
            entrypoint=m.entrypoint if m.HasField("entrypoint") else None,
            mounts=[
                ResolvedMount(x.mount_path, x.package, x.volume, x.original_path) for x in m.mounts
            ],
            warnings=list(r.warnings),
            message=m,
        )


# -- contents calls ---------------------------------------------------------------------------


class EntryKind(enum.Enum):
    """What a directory entry is."""

    UNSPECIFIED = "unspecified"
    FILE = "file"
    DIRECTORY = "directory"


_KINDS = {
    pb.ENTRY_KIND_UNSPECIFIED: EntryKind.UNSPECIFIED,
    pb.ENTRY_KIND_FILE: EntryKind.FILE,
    pb.ENTRY_KIND_DIRECTORY: EntryKind.DIRECTORY,
}


def _time(message: pb.ContentInfo | pb.DirectoryEntry) -> dt.datetime | None:
    if not message.HasField("modified"):
        return None
    return message.modified.ToDatetime(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class ContentInfo(_Data):
    """What GetAtom or ReadFile says of the bytes before sending them."""

    name: str  # the atom's name, or the file's full path in its volume
    size: int
    sha256: str  # computed by the server from the bytes, and checked by the client on arrival
    signature: str  # atoms: the manifest's signature
    kind: str  # atoms: the manifest's kind
    modified: dt.datetime | None  # files: where the format stores it (webc v3)
    volume: str  # files: the volume

    @classmethod
    def from_proto(cls, i: pb.ContentInfo) -> ContentInfo:
        return cls(
            name=i.name,
            size=i.size,
            sha256=i.sha256,
            signature=i.signature,
            kind=i.kind,
            modified=_time(i),
            volume=i.volume,
        )


@dataclasses.dataclass(frozen=True)
class Content(_Data):
    """An atom or a file, held in memory (for large ones prefer `get_atom_to`/`read_file_to`)."""

    info: ContentInfo
    data: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class DirectoryEntry(_Data):
    path: str  # the full path from the volume's root: what read_file/list_directory accept
    kind: EntryKind
    size: int
    sha256: str  # files: as the package records it (webc v3), else ""
    modified: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class Listing(_Data):
    """A directory listing; `truncated` when the server left entries out (see `total_entries`)."""

    entries: tuple[DirectoryEntry, ...]
    truncated: bool
    total_entries: int

    @classmethod
    def from_proto(cls, r: pb.ListDirectoryResponse) -> Listing:
        return cls(
            entries=tuple(
                DirectoryEntry(
                    path=e.path,
                    kind=_KINDS.get(e.kind, EntryKind.UNSPECIFIED),
                    size=e.size,
                    sha256=e.sha256,
                    modified=_time(e),
                )
                for e in r.entries
            ),
            truncated=r.truncated,
            total_entries=r.total_entries,
        )


@dataclasses.dataclass(frozen=True)
class TreeCommand(_Data):
    """A command of a tree: the package that declares it and the atom (in which package) it runs."""

    name: str
    declared_in: str
    package: str
    package_sha256: str
    atom_name: str
    atom_sha256: str
    atom_size: int
    runner: str
    annotations: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class TreeMount(_Data):
    """A volume of a package, mounted at `mount_path` of the tree's filesystem."""

    mount_path: str
    package: str
    package_sha256: str
    volume: str
    original_path: str


@dataclasses.dataclass(frozen=True)
class TreePackage(_Data):
    """A package loaded for a tree, and where the server found it."""

    id: str
    sha256: str
    source: Source
    size: int


@dataclasses.dataclass(frozen=True)
class PackageTree(_Data):
    """What LoadTree returns: everything needed to run a package.

    With `include_atoms`, `atoms` maps each atom's sha256 to its bytes (or, when they were saved
    to a folder, `atom_files` maps it to the file's path).
    """

    id: str
    package_ids: tuple[str, ...]
    entrypoint: str | None
    commands: tuple[TreeCommand, ...]
    mounts: tuple[TreeMount, ...]
    packages: tuple[TreePackage, ...]
    file_system_bytes: int
    warnings: tuple[str, ...]
    atom_files: dict[str, str] = dataclasses.field(default_factory=dict)
    atoms: dict[str, bytes] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def atom_bytes(self) -> int:
        """The total size of the distinct atoms the commands run."""
        return sum({c.atom_sha256: c.atom_size for c in self.commands}.values())

    @classmethod
    def from_proto(
        cls,
        p: pb.BinaryPackage,
        *,
        atoms: dict[str, bytes] | None = None,
        atom_files: dict[str, str] | None = None,
    ) -> PackageTree:
        return cls(
            id=p.id,
            package_ids=tuple(p.package_ids),
            entrypoint=p.entrypoint if p.HasField("entrypoint") else None,
            commands=tuple(
                TreeCommand(
                    name=c.name,
                    declared_in=c.declared_in,
                    package=c.package,
                    package_sha256=c.package_sha256,
                    atom_name=c.atom_name,
                    atom_sha256=c.atom_sha256,
                    atom_size=c.atom_size,
                    runner=c.runner,
                    annotations=_struct(c.annotations),
                )
                for c in p.commands
            ),
            mounts=tuple(
                TreeMount(m.mount_path, m.package, m.package_sha256, m.volume, m.original_path)
                for m in p.mounts
            ),
            packages=tuple(
                TreePackage(t.id, t.webc_sha256, _SOURCES.get(t.source, Source.UNSPECIFIED), t.size)
                for t in p.packages
            ),
            file_system_bytes=p.file_system_bytes,
            warnings=tuple(p.warnings),
            atom_files=dict(atom_files or {}),
            atoms=dict(atoms or {}),
        )
