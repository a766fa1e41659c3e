"""pkgloader.resolve: from a package specifier to a dependency graph (wasmer's resolver).

The resolver knows nothing of caching or gRPC: sources answer "which versions of this name
exist, and what are their dist and manifest"; the resolver turns those answers into a
`Resolution` (nodes, edges, commands, entrypoint, mounts).
"""

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

__all__ = [
    "Dependency",
    "Dist",
    "Edge",
    "FileSystemMapping",
    "Mount",
    "Node",
    "PackageId",
    "PackageInfo",
    "Resolution",
    "Resolved",
    "ResolvedCommand",
    "Resolves",
    "Summary",
    "WebcVersion",
]
