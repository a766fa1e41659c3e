"""pkgloader.resolve: from a package specifier to a dependency graph (wasmer's resolver).

The resolver knows nothing of caching or gRPC: sources answer "which versions of this name
exist, and what are their dist and manifest"; the resolver turns those answers into a
`Resolution` (nodes, edges, commands, entrypoint, mounts).
"""

from pkgloader.resolve._directory import DirectorySource
from pkgloader.resolve._registry import PUBLIC_REGISTRY, RegistrySource
from pkgloader.resolve._resolver import MAX_PACKAGES, Resolver
from pkgloader.resolve._semver import Version, VersionReq
from pkgloader.resolve._source import (
    Candidates,
    MultiSource,
    NamedSource,
    QueryMiss,
    Source,
    SourceState,
)
from pkgloader.resolve._specifier import (
    HashSpecifier,
    NamedSpecifier,
    Specifier,
    UrlSpecifier,
    parse_specifier,
)
from pkgloader.resolve._types import (
    Dependency,
    Dist,
    Edge,
    FileSystemMapping,
    Mount,
    Node,
    PackageId,
    PackageInfo,
    Resolution,
    Resolved,
    ResolvedCommand,
    Resolves,
    Summary,
    WebcVersion,
)
from pkgloader.resolve._url import CacheSource, UrlSource, summary_of

__all__ = [
    "MAX_PACKAGES",
    "PUBLIC_REGISTRY",
    "CacheSource",
    "Candidates",
    "Dependency",
    "DirectorySource",
    "Dist",
    "Edge",
    "FileSystemMapping",
    "HashSpecifier",
    "Mount",
    "MultiSource",
    "NamedSource",
    "NamedSpecifier",
    "Node",
    "PackageId",
    "PackageInfo",
    "QueryMiss",
    "RegistrySource",
    "Resolution",
    "Resolved",
    "ResolvedCommand",
    "Resolver",
    "Resolves",
    "Source",
    "SourceState",
    "Specifier",
    "Summary",
    "UrlSource",
    "UrlSpecifier",
    "Version",
    "VersionReq",
    "WebcVersion",
    "parse_specifier",
    "summary_of",
]
