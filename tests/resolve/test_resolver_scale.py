"""The resolver's work grows linearly with a manifest's aliases and `fs` mappings."""

from __future__ import annotations

from collections.abc import Iterator

from pkgloader.resolve._resolver import _resolve_package
from pkgloader.resolve._types import Dist, FileSystemMapping, Node, PackageId, PackageInfo

ALIASES = 2_000


class CountingEdges(list[tuple[int, int, str]]):
    """The real edge list, counting how often it is walked from the start."""

    walks = 0

    def __iter__(self) -> Iterator[tuple[int, int, str]]:
        CountingEdges.walks += 1
        return super().__iter__()


def test_from_mappings_look_their_alias_up_without_a_scan_per_mapping() -> None:
    """A root with 2,000 aliases, each mounted with `from`, walks its edges a constant number
    of times (a scan per mapping walked them 2,000 times), and each mount names its target."""
    dist = Dist("https://127.0.0.1/x.webc", "0" * 64)
    root_id = PackageId.named("ns/root", "1.0.0")
    dep_ids = [PackageId.named(f"ns/dep{i}", "1.0.0") for i in range(ALIASES)]
    root = Node(
        root_id,
        dist,
        PackageInfo(
            root_id,
            filesystem=tuple(
                FileSystemMapping("atom", f"/m{i}", None, f"a{i}") for i in range(ALIASES)
            ),
        ),
    )
    nodes = [root, *(Node(d, dist, PackageInfo(d)) for d in dep_ids)]
    edges = CountingEdges((0, i + 1, f"a{i}") for i in range(ALIASES))
    # A second edge under a repeated alias: the first one still wins.
    edges.append((0, 2, "a0"))
    CountingEdges.walks = 0
    resolution = _resolve_package(nodes, list(range(len(nodes))), edges)
    assert CountingEdges.walks <= 3
    assert [m.package for m in resolution.mounts] == dep_ids
    assert resolution.mounts[0].mount_path == "/m0"
