"""`Resolver`: wasmer's `resolve()` and `resolve_package()` over a `Source` (doc §9a).

Breadth-first from the root over each manifest's `use` map: each dependency takes the newest
version its source offers (no unification), one node per package id, one edge per alias; then
a topological order, root first. The failures keep the reference's words:
`Dependency cycle detected: a → b → a`, `Multiple versions of {name} were found {versions}`,
`Unable to find "{specifier}" in the registry: {why}`, `Unable to resolve "{url}": {why}`.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

from pkgloader.errors import (
    DependencyCycle,
    DuplicateVersions,
    InvalidPackage,
    InvalidSpecifier,
    NoMatchingVersion,
    PackageNotFound,
    ResourceExhausted,
)
from pkgloader.resolve._semver import Version
from pkgloader.resolve._source import Miss, QueryMiss, Source
from pkgloader.resolve._specifier import Specifier, UrlSpecifier, parse_specifier
from pkgloader.resolve._types import (
    Edge,
    Mount,
    Node,
    PackageId,
    Resolution,
    Resolved,
    ResolvedCommand,
    Summary,
)

#: Packages in one graph. Real trees have a handful; the bound keeps one Resolve (and its
#: response) from growing without limit on a registry that answers with endless dependencies.
MAX_PACKAGES = 1024


class Resolver:
    def __init__(self, source: Source, *, max_packages: int = MAX_PACKAGES) -> None:
        self.source = source
        self.max_packages = max_packages

    def resolve(self, specifier: str) -> Resolved:
        """Resolve what `specifier` names, and its dependencies."""
        warnings: list[str] = []
        root = self._latest(parse_specifier(specifier), warnings)
        resolved = self.resolve_from(root)
        return Resolved(resolved.resolution, (*warnings, *resolved.warnings))

    def resolve_from(self, root: Summary) -> Resolved:
        """Resolve the dependencies of a package whose summary is known already."""
        warnings: list[str] = []
        nodes: list[Node] = [Node(root.id, root.dist, root.info)]
        index: dict[PackageId, int] = {root.id: 0}
        edges: list[tuple[int, int, str]] = []
        answers: dict[Specifier, Summary] = {}  # one query per specifier and Resolve
        queue = [0]
        while queue:
            at = queue.pop(0)
            info = nodes[at].info
            assert info is not None  # every node built here carries its info
            for dependency in info.dependencies:
                try:
                    specifier = parse_specifier(dependency.spec)
                except InvalidSpecifier as exc:
                    raise InvalidPackage(
                        f'the "{info.id}" package\'s dependency "{dependency.alias}": '
                        f"{exc.message}",
                        package=str(info.id),
                    ) from None
                summary = answers.get(specifier)
                if summary is None:
                    summary = answers[specifier] = self._latest(specifier, warnings)
                target = index.get(summary.id)
                if target is None:
                    if len(nodes) >= self.max_packages:
                        raise ResourceExhausted(
                            f"the dependency graph of {root.id} has more than "
                            f"{self.max_packages} packages",
                            limit=str(self.max_packages),
                        )
                    target = index[summary.id] = len(nodes)
                    nodes.append(Node(summary.id, summary.dist, summary.info))
                    queue.append(target)
                edges.append((at, target, dependency.alias))
        order = _toposort(len(nodes), edges)
        if order is None:
            cycle = _find_cycle(len(nodes), edges)
            raise DependencyCycle(
                "Dependency cycle detected: " + " → ".join(str(nodes[i].id) for i in cycle),
                cycle=" → ".join(str(nodes[i].id) for i in cycle),
            )
        _check_for_duplicate_versions(nodes)
        return Resolved(_resolve_package(nodes, order, edges), tuple(warnings))

    def _latest(self, specifier: Specifier, warnings: list[str]) -> Summary:
        try:
            candidates = self.source.query(specifier)
        except QueryMiss as miss:
            message = f"{_registry_error_message(specifier)}: {miss.describe()}"
            if miss.kind is Miss.NO_MATCHES:
                raise NoMatchingVersion(
                    message,
                    specifier=str(specifier),
                    archived_versions=", ".join(miss.archived),
                ) from None
            raise PackageNotFound(message, specifier=str(specifier)) from None
        warnings.extend(w for w in candidates.warnings if w not in warnings)
        return candidates.latest()


def _registry_error_message(specifier: Specifier) -> str:
    if isinstance(specifier, UrlSpecifier):
        return f'Unable to resolve "{specifier}"'
    return f'Unable to find "{specifier}" in the registry'


def _toposort(count: int, edges: list[tuple[int, int, str]]) -> list[int] | None:
    """Kahn's algorithm, lowest index first among the ready (root first, then BFS order);
    None when there is a cycle."""
    incoming = [0] * count
    outgoing: dict[int, list[int]] = defaultdict(list)
    for source, target, _ in edges:
        incoming[target] += 1
        outgoing[source].append(target)
    ready = [i for i in range(count) if incoming[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        at = heapq.heappop(ready)
        order.append(at)
        for target in outgoing[at]:
            incoming[target] -= 1
            if incoming[target] == 0:
                heapq.heappush(ready, target)
    return order if len(order) == count else None


def _find_cycle(count: int, edges: list[tuple[int, int, str]]) -> list[int]:
    """A cycle through the lowest-indexed node that lies on one (the node closest to the
    root, as the reference picks), following the edges' direction, start repeated at the end."""
    outgoing: dict[int, list[int]] = defaultdict(list)
    for source, target, _ in edges:
        outgoing[source].append(target)
    for start in range(count):
        # Breadth-first from `start`: the shortest way back to it, if there is one.
        parent: dict[int, int] = {}
        frontier = [start]
        while frontier:
            following = []
            for at in frontier:
                for target in outgoing[at]:
                    if target == start:
                        path = [at]
                        while path[-1] != start:
                            path.append(parent[path[-1]])
                        return [*reversed(path), start]
                    if target not in parent:
                        parent[target] = at
                        following.append(target)
            frontier = following
    raise AssertionError("no cycle in a graph that has no topological order")


def _check_for_duplicate_versions(nodes: list[Node]) -> None:
    """Only one copy of each package in a graph, as the reference insists (it does not merge)."""
    versions: dict[str, set[str]] = defaultdict(set)
    for node in nodes:
        if node.id.is_named:
            versions[node.id.name].add(node.id.version)
    for name in sorted(versions):
        if len(versions[name]) > 1:
            found = sorted(versions[name], key=Version.parse)
            raise DuplicateVersions(
                f"Multiple versions of {name} were found {', '.join(found)}",
                package=name,
                versions=", ".join(found),
            )


def _resolve_package(
    nodes: list[Node], order: list[int], edges: list[tuple[int, int, str]]
) -> Resolution:
    root = nodes[0]
    assert root.info is not None
    entrypoint = root.info.entrypoint
    commands: dict[str, ResolvedCommand] = {}
    mounts: list[Mount] = []
    # Indexed once: a scan of the edges per `from` mapping is quadratic in a manifest's size
    # (100,000 aliases and mappings). The first edge of an alias wins, as a scan found it.
    targets: dict[tuple[int, str], int] = {}
    for source, to, alias in edges:
        targets.setdefault((source, alias), to)
    for at in order:
        node = nodes[at]
        info = node.info
        assert info is not None
        if entrypoint is None and info.entrypoint is not None:
            entrypoint = info.entrypoint
        for name in info.commands:
            # Root first: the first command of a name wins, later ones are shadowed.
            commands.setdefault(name, ResolvedCommand(name, node.id, name))
        for mapping in info.filesystem:
            package = node.id
            if mapping.dependency_name is not None:
                target = targets.get((at, mapping.dependency_name))
                if target is None:
                    raise InvalidPackage(
                        f'the "{node.id}" package mounts the "{mapping.volume_name}" volume from '
                        f'"{mapping.dependency_name}", which is not one of its dependencies',
                        package=str(node.id),
                    )
                package = nodes[target].id
            mounts.append(
                Mount(mapping.mount_path, package, mapping.volume_name, mapping.original_path)
            )
    if entrypoint is None and len(root.info.commands) == 1:
        # The reference's fallback for packages that name no entrypoint (e.g. cowsay).
        entrypoint = root.info.commands[0]
    return Resolution(
        root=root.id,
        nodes=tuple(nodes[i] for i in order),
        edges=tuple(Edge(nodes[s].id, nodes[t].id, alias) for s, t, alias in edges),
        # In name order, as the reference's BTreeMap holds them.
        commands=tuple(commands[name] for name in sorted(commands)),
        entrypoint=entrypoint,
        mounts=tuple(mounts),
    )
