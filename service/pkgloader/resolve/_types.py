"""What the resolver takes and gives: package ids, distributions, summaries, and the `Resolution`.

Frozen dataclasses only, so a resolution can be shared between threads and compared in tests.
They mirror wasmer's resolver types (`PackageId`, `DistributionInfo`, `PackageInfo`,
`PackageSummary`, `DependencyGraph`, `ResolvedPackage`), flattened into lists: a `Resolution` is
exactly what the `Resolve` RPC returns and what `LoadTree` consumes.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from typing import Protocol

from pkgloader.errors import InvalidRequest
from pkgloader.hashes import WebcHash


@dataclass(frozen=True)
class PackageId:
    """`namespace/name@version` for a named package, else `sha256:<hex>`.

    A named id's `version` is the canonical semver text ("0.0.0" when the package has none);
    a hash id has `name == version == ""` and the package's lowercase sha256 in `sha256`.
    """

    name: str = ""
    version: str = ""
    sha256: str = ""

    @classmethod
    def named(cls, name: str, version: str) -> PackageId:
        return cls(name=name, version=version)

    @classmethod
    def hashed(cls, sha256: str) -> PackageId:
        return cls(sha256=WebcHash.parse(sha256).hex)

    @classmethod
    def parse(cls, text: str) -> PackageId:
        """The inverse of `str()`: for ids a caller sends back (LoadTree's `resolution`)."""
        if cls is PackageId and len(text) <= _MAX_CACHED_ID:
            return _parse_id(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> PackageId:
        if text.startswith("sha256:"):
            return cls.hashed(text.removeprefix("sha256:"))
        name, sep, version = text.rpartition("@")
        if not sep or not name or not version:
            raise InvalidRequest(
                f"package id must be namespace/name@version or sha256:<hex>, got {text[:200]!r}",
                package=text[:200],
            )
        return cls.named(name, version)

    @property
    def is_named(self) -> bool:
        return bool(self.name)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}" if self.name else f"sha256:{self.sha256}"


#: A warm LoadTree parses every id of its resolution (18 for bench/tree_load's) on each call;
#: ids are immutable, so the recent ones are kept: at most 4096 of at most 256 characters.
_MAX_CACHED_ID = 256


@functools.lru_cache(maxsize=4096)
def _parse_id(text: str) -> PackageId:
    return PackageId._parse(text)


@dataclass(frozen=True)
class Dist:
    """Where a package is downloaded from and what it hashes to (wasmer's `DistributionInfo`)."""

    webc_url: str
    webc_sha256: str  # lowercase hex
    webc_size: int | None = None


class WebcVersion(enum.Enum):
    """Which of wasmer's two package families a package belongs to, as `load_package_tree` sees it.

    V2: webc v1 and v2, which get the default `atom` volume at `/` when they have no `fs`
    annotation. V3: webc v3 and tar.gz packages, which do not. At Resolve time a registry node's
    kind is that of the distribution taken (V3 preferred), a directory or url node's that of its
    file.
    """

    V2 = "v2"
    V3 = "v3"

    @classmethod
    def of_format(cls, fmt: str) -> WebcVersion:
        """From `formats.Container.format` (webc-v1, webc-v2, webc-v3, tarball)."""
        return cls.V2 if fmt in ("webc-v1", "webc-v2") else cls.V3


@dataclass(frozen=True)
class FileSystemMapping:
    """One entry of a manifest's `fs` annotation; `dependency_name` is its `from` alias."""

    volume_name: str
    mount_path: str
    original_path: str | None = None
    dependency_name: str | None = None


@dataclass(frozen=True)
class Dependency:
    """One entry of a manifest's `use` map: the alias and what it asks for (a specifier's text)."""

    alias: str
    spec: str


@dataclass(frozen=True)
class PackageInfo:
    """What the resolver needs of a package's manifest (wasmer's `PackageInfo`)."""

    id: PackageId
    commands: tuple[str, ...] = ()
    entrypoint: str | None = None
    dependencies: tuple[Dependency, ...] = ()
    filesystem: tuple[FileSystemMapping, ...] = ()
    webc_version: WebcVersion = WebcVersion.V3


@dataclass(frozen=True)
class Summary:
    """A candidate a source offers: a package's info and where to get it."""

    info: PackageInfo
    dist: Dist

    @property
    def id(self) -> PackageId:
        return self.info.id


@dataclass(frozen=True)
class Node:
    """A package of a resolution. `info` is None when the resolution came from a caller (then
    LoadTree learns the manifest and the webc version from the loaded package itself)."""

    id: PackageId
    dist: Dist
    info: PackageInfo | None = field(default=None, compare=False)

    @property
    def webc_version(self) -> WebcVersion | None:
        return None if self.info is None else self.info.webc_version


@dataclass(frozen=True)
class Edge:
    """Package `from_` uses package `to` under `alias` (a key of its `use` map)."""

    from_: PackageId
    to: PackageId
    alias: str


@dataclass(frozen=True)
class ResolvedCommand:
    """A command of the resolved package: its name, and the package that declares it."""

    name: str
    package: PackageId
    original_name: str


@dataclass(frozen=True)
class Mount:
    """A volume of a package mounted at `mount_path`; `original_path` None: the volume's root."""

    mount_path: str
    package: PackageId
    volume: str
    original_path: str | None = None


@dataclass(frozen=True)
class Resolution:
    """A resolved package: the dependency graph and what it offers (wasmer's `Resolution`).

    `nodes` are in topological order, root first, each package once; `edges` one per alias;
    `commands` first-of-a-name-wins in node order (the root shadows its dependencies);
    `mounts` every `fs` mapping in node order, `from` aliases turned into package ids.
    """

    root: PackageId
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...] = ()
    commands: tuple[ResolvedCommand, ...] = ()
    entrypoint: str | None = None
    mounts: tuple[Mount, ...] = ()

    def node(self, package: PackageId) -> Node | None:
        for node in self.nodes:
            if node.id == package:
                return node
        return None

    def dependency(self, package: PackageId, alias: str) -> PackageId | None:
        """The package `package` reaches under `alias`, following its outgoing edges."""
        for edge in self.edges:
            if edge.from_ == package and edge.alias == alias:
                return edge.to
        return None

    def validate(self) -> None:
        """Raise `InvalidRequest` unless every id an edge, command or mount names is a node.

        A resolution the service computed always passes; one a caller sends back is checked.
        """
        ids = {node.id for node in self.nodes}
        if len(ids) != len(self.nodes):
            raise InvalidRequest("resolution lists a package twice in nodes")
        if self.root not in ids:
            raise InvalidRequest(f"resolution root {self.root} is not among its nodes")
        named: list[tuple[str, PackageId]] = []
        for edge in self.edges:
            named += [("edge", edge.from_), ("edge", edge.to)]
        named += [("command", c.package) for c in self.commands]
        named += [("mount", m.package) for m in self.mounts]
        for what, package in named:
            if package not in ids:
                raise InvalidRequest(
                    f"resolution {what} names package {package}, which is not among its nodes",
                    package=str(package),
                )

    def validate_sent(self) -> None:
        """`validate`, and what a caller could make up that a resolver never computes: an
        entrypoint that is none of its commands, a mount path that is not a plain absolute path
        (`..`, `.`, a NUL or a backslash would put a volume outside the tree, or nowhere)."""
        self.validate()
        names = {c.name for c in self.commands}
        if self.entrypoint is not None and self.entrypoint not in names:
            raise InvalidRequest(
                f"resolution entrypoint {self.entrypoint!r} is not one of its commands"
                + (f" ({', '.join(sorted(names)[:10])})" if names else " (it has none)")
            )
        for mount in self.mounts:
            path = mount.mount_path
            segments = path.split("/")[1:]
            if (
                not path.startswith("/")
                or "\x00" in path
                or "\\" in path
                or any(s in (".", "..") for s in segments)
            ):
                raise InvalidRequest(
                    f"resolution mount path {path!r} (volume {mount.volume!r} of {mount.package}) "
                    "is not an absolute path without '.', '..', NUL or backslash",
                    package=str(mount.package),
                )


@dataclass(frozen=True)
class Resolved:
    """What `Resolver.resolve` returns: the resolution and non-fatal problems met on the way."""

    resolution: Resolution
    warnings: tuple[str, ...] = ()


class Resolves(Protocol):
    """What the servicer (and LoadTree) need of a resolver."""

    def resolve(self, specifier: str) -> Resolved:
        """Resolve `specifier` and its dependencies; raise a `PkgloaderError` otherwise."""
        ...

    def resolve_from(self, root: Summary) -> Resolved:
        """Resolve the dependencies of a package already known (e.g. loaded from a summary)."""
        ...
