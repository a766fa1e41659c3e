"""`TreeLoader`: from a resolution to everything a runtime needs (wasmer's `load_package_tree`).

It composes `PackageLoader` and never downloads by itself, so every package of a tree goes through
Load's path: memory → disk → single-flight download, the hash policy, parsing. What it adds:

- Which packages to load: those that declare a resolved command and those a mount reads, plus the
  root; at most `MAX_PARALLEL_DOWNLOADS` (32, the reference's limit) at a time, each load waiting
  for room in the loader's download queue instead of failing, so a large tree is slow, not refused.
- Which atom each command runs: its `atom` annotation (or the `wasi`/`emscripten` polyfill,
  `"dep:name"`), else the command name for WASI and WCGI runners, else it is skipped with a
  warning. An atom of a dependency is found through the graph's edge of that alias. A command
  without annotations whose atom is missing runs the first atom (the reference's legacy hack).
- The mounts: each `fs` mapping over the volume of its package. v1/v2 packages and v3/tar.gz
  packages cannot be mixed (the reference's rule; we accept v1 with v2 and tar.gz with v3, where
  the reference refuses v1 and has no tar.gz).
- Each atom's sha256, computed from its bytes and checked against its manifest signature before
  anything is reported; `atom_chunks` checks the bytes again as they are streamed. Both are
  GetAtom's mechanism (`contents.checked_atom`, `contents.Checked.chunks`).

The failures the reference names keep its words, as `InvalidTree`; a package that fails to load
raises what Load raises.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context

from pkgloader import contents, formats, traces
from pkgloader.errors import (
    Cancelled,
    InvalidRequest,
    InvalidTree,
)
from pkgloader.loader import CHUNK, LoadRequest, LoadResult, PackageLoader, StoredPackage
from pkgloader.policy import HashPolicy, Source
from pkgloader.resolve import Node, PackageId, Resolution, Resolves, WebcVersion, summary_of

#: The reference's limit on packages loaded at once for one tree.
MAX_PARALLEL_DOWNLOADS = 32

WASI_RUNNER_URI = "https://webc.org/runner/wasi"
WCGI_RUNNER_URI = "https://webc.org/runner/wcgi"


# -- what a tree is -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeCommand:
    """A runnable command: where it is declared, and the atom (in which package) it runs."""

    name: str
    declared_in: str
    package: str
    package_sha256: str
    atom_name: str
    atom_sha256: str
    atom_size: int
    runner: str
    annotations: dict[str, formats.JSON]
    #: The command's name in `declared_in`'s manifest, and that package (whose memo the RPC
    #: layer keeps the annotations' serialized form in: they are immutable per package).
    original_name: str = ""
    declared_package: StoredPackage | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class TreeMount:
    """A volume of a package, made visible at `mount_path`; `original_path` is the directory of
    the volume that appears there (always `/` for v3 and tar.gz packages, as in the reference)."""

    mount_path: str
    package: str
    package_sha256: str
    volume: str
    original_path: str


@dataclass(frozen=True)
class TreePackage:
    """A package of the tree, and the cache tier it came from."""

    id: str
    webc_sha256: str
    source: Source
    size: int


@dataclass(frozen=True)
class TreeAtom:
    """An atom to stream: its bytes live in `package` (kept referenced while it streams)."""

    sha256: str
    size: int
    name: str
    package_id: str
    package: StoredPackage = field(repr=False, compare=False)
    checked: contents.Checked = field(repr=False, compare=False)


@dataclass(frozen=True)
class PackageTree:
    """What LoadTree reports: the reference's `BinaryPackage`, with each atom by hash."""

    id: str
    package_ids: tuple[str, ...]
    entrypoint: str | None
    commands: tuple[TreeCommand, ...]
    mounts: tuple[TreeMount, ...]
    packages: tuple[TreePackage, ...]
    file_system_bytes: int
    warnings: tuple[str, ...]
    #: Each distinct atom once, in command order.
    atoms: tuple[TreeAtom, ...]


@dataclass(frozen=True)
class TreeRoot:
    """The root of a tree: a specifier to resolve, or a package the caller can name exactly."""

    specifier: str = ""
    url: str = ""
    sha256: str = ""
    package_id: str = ""
    size: int | None = None


class TreeLoader:
    """Loads and assembles package trees through one `PackageLoader`."""

    def __init__(
        self,
        loader: PackageLoader,
        resolver: Resolves | None = None,
        *,
        max_parallel: int = MAX_PARALLEL_DOWNLOADS,
        threads: int = 2 * MAX_PARALLEL_DOWNLOADS,
    ) -> None:
        self.loader = loader
        self._resolver = resolver
        self.max_parallel = max_parallel
        # One pool for every tree, its threads reused: a pool per call spent more on starting
        # threads than a warm tree spends on its memory hits. Each tree submits at most
        # `max_parallel` loads at a time, so two trees can make progress together; more wait
        # their turn (waiting, never failing). A load never submits to this pool, so it cannot
        # deadlock on it.
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, "tree")

    def load_tree(
        self,
        root: TreeRoot,
        resolution: Resolution | None = None,
        *,
        policy: HashPolicy | None = None,
        alive: Callable[[], bool] | None = None,
        timeout: float | None = None,
    ) -> PackageTree:
        """Resolve `root` (unless `resolution` is given, then checked and used as it is), load
        what the tree needs and assemble it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        warnings: list[str] = []
        if resolution is None:
            resolution = self._resolve(root, warnings, policy, alive, timeout)
        graph = _Graph.checked(resolution)
        needed = graph.needed()
        requests = [
            dataclasses.replace(self._request(graph, package_id, root), policy=policy)
            for package_id in needed
        ]
        results = self._load_all(requests, alive, deadline)
        loaded = dict(zip(needed, results, strict=True))
        for result in results:
            warnings.extend(result.warnings)
        mounts, fs_bytes = _mounts(graph, loaded)
        commands, atoms = _commands(graph, loaded, warnings)
        return PackageTree(
            id=str(resolution.root),
            package_ids=tuple(str(p) for p in needed),
            entrypoint=resolution.entrypoint,
            commands=tuple(commands),
            mounts=tuple(mounts),
            packages=tuple(
                TreePackage(str(pid), r.package.hash.hex, r.source, r.package.size)
                for pid, r in loaded.items()
            ),
            file_system_bytes=fs_bytes,
            warnings=tuple(warnings),
            atoms=tuple(atoms),
        )

    def _resolve(
        self,
        root: TreeRoot,
        warnings: list[str],
        policy: HashPolicy | None,
        alive: Callable[[], bool] | None,
        timeout: float | None,
    ) -> Resolution:
        if self._resolver is None:
            raise InvalidRequest("this server has no resolver: send a resolution")
        if root.sha256:
            # A root named exactly: load it (as Load would), then resolve what its manifest uses.
            request = LoadRequest(
                url=root.url,
                sha256=root.sha256,
                package_id=root.package_id,
                policy=policy,
                size_hint=root.size,
            )
            with _package_span(request, None):
                result = self.loader.load(request, alive=alive, timeout=timeout, wait_for_room=True)
            resolved = self._resolver.resolve_from(summary_of(result.package, root.url))
        elif root.specifier:
            resolved = self._resolver.resolve(root.specifier)
        else:
            raise InvalidRequest("LoadTree needs a specifier or a summary")
        warnings.extend(resolved.warnings)
        return resolved.resolution

    @staticmethod
    def _request(graph: _Graph, package_id: PackageId, root: TreeRoot) -> LoadRequest:
        dist = graph.nodes[package_id].dist
        if package_id == graph.resolution.root and root.sha256:
            # The caller named the root exactly: load that, and the resolution must agree.
            if dist.webc_sha256.lower() != root.sha256.lower():
                raise InvalidRequest(
                    f"the summary's webc_sha256 {root.sha256} is not that of the resolution's "
                    f"root {package_id} ({dist.webc_sha256})"
                )
            return LoadRequest(
                url=root.url, sha256=root.sha256, package_id=str(package_id), size_hint=root.size
            )
        return LoadRequest(
            url=dist.webc_url,
            sha256=dist.webc_sha256,
            package_id=str(package_id),
            size_hint=dist.webc_size,
        )

    def _load_all(
        self,
        requests: Sequence[LoadRequest],
        alive: Callable[[], bool] | None,
        deadline: float | None,
    ) -> list[LoadResult]:
        """Load every request, `max_parallel` at a time; the first failure (in request order)
        is raised, and the loads still waiting give up."""
        failed = threading.Event()

        def still_wanted() -> bool:
            return not failed.is_set() and (alive is None or alive())

        parent = traces.current()  # the RPC's span, continued on the pool's threads

        def load(request: LoadRequest) -> LoadResult:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                with _package_span(request, parent):
                    return self.loader.load(
                        request, alive=still_wanted, timeout=remaining, wait_for_room=True
                    )
            except BaseException:
                failed.set()
                raise

        if len(requests) == 1:
            return [load(requests[0])]
        if all(r.sha256 in self.loader.memory for r in requests):
            # A warm tree: every load is a memory hit of microseconds, and handing each to a
            # thread of the pool and waiting for it cost more than the whole rest of the call.
            # (A resolution's hashes are lowercase hex, the memory tier's keys; any other
            # spelling only misses here and takes the pool.)
            return [load(request) for request in requests]
        slots = threading.BoundedSemaphore(self.max_parallel)
        futures: list[concurrent.futures.Future[LoadResult]] = []
        for request in requests:
            slots.acquire()
            if failed.is_set():
                slots.release()
                break
            future = self._pool.submit(load, request)
            future.add_done_callback(lambda _: slots.release())
            futures.append(future)
        concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        if failed.is_set():
            for future in futures:
                future.cancel()
            # Loads already running see `failed` and give up within their poll interval.
            concurrent.futures.wait(futures)
        # A load that gave up raises `Cancelled` because `failed` is set; report the real cause.
        errors = [e for f in futures if not f.cancelled() and (e := f.exception()) is not None]
        causes = [e for e in errors if not isinstance(e, Cancelled)] or errors
        if causes:
            raise causes[0]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# -- the graph ------------------------------------------------------------------------------------


def _package_span(
    request: LoadRequest, parent: otel_context.Context | None
) -> AbstractContextManager[Any]:
    """One package of a tree: a child of the RPC's span; the Load's own spans are its children."""
    return traces.span(
        traces.TREE_PACKAGE,
        {traces.PACKAGE_ID: request.package_id, traces.SHA256: request.sha256.lower()},
        parent,
    )


@dataclass
class _Graph:
    resolution: Resolution
    nodes: dict[PackageId, Node]
    #: (from, alias) -> to; the first edge of an alias wins, as the reference's edge search does
    edges: dict[tuple[PackageId, str], PackageId]

    @classmethod
    def checked(cls, resolution: Resolution) -> _Graph:
        """Index a resolution, refusing (`InvalidRequest`) one that names a node it lacks."""
        resolution.validate()
        edges: dict[tuple[PackageId, str], PackageId] = {}
        for edge in resolution.edges:
            edges.setdefault((edge.from_, edge.alias), edge.to)
        return cls(resolution, {n.id: n for n in resolution.nodes}, edges)

    def needed(self) -> list[PackageId]:
        """The root, then each package that declares a command or backs a mount, once each."""
        order = [self.resolution.root]
        order += [c.package for c in self.resolution.commands]
        order += [m.package for m in self.resolution.mounts]
        return list(dict.fromkeys(order))


# -- mounts ---------------------------------------------------------------------------------------


def _mounts(graph: _Graph, loaded: dict[PackageId, LoadResult]) -> tuple[list[TreeMount], int]:
    mappings = graph.resolution.mounts
    # v1 counts as v2 and tar.gz as v3 (`WebcVersion`), where the reference refuses v1.
    family = {
        m.package: WebcVersion.of_format(loaded[m.package].package.container.format)
        for m in mappings
    }
    v2 = [str(p) for p, f in family.items() if f is WebcVersion.V2]
    v3 = [str(p) for p, f in family.items() if f is WebcVersion.V3]
    if v2 and v3:
        raise InvalidTree(
            "Mix of webc v2 and v3 in the same dependency tree is not supported; "
            f"v2: {', '.join(v2)}, v3: {', '.join(v3)}"
        )
    mounts, total = [], 0
    for mapping in mappings:
        stored = loaded[mapping.package].package
        volume = stored.container.get_volume(mapping.volume)
        if volume is None:
            raise InvalidTree(
                f'The "{mapping.package}" package doesn\'t have a "{mapping.volume}" volume'
            )
        # v2 mounts a directory of the volume; v3 always mounts its root (the reference's rule).
        source = (mapping.original_path or "/") if v2 else "/"
        mounts.append(
            TreeMount(
                mapping.mount_path, str(mapping.package), stored.hash.hex, mapping.volume, source
            )
        )
        key = f"tree.bytes:{mapping.volume}:{source}"
        size: int | None = stored.memo.get(key)
        if size is None:
            # A walk of the volume's tree, once per package (it is immutable). Charged: the
            # paths come from the caller's resolution, so the keys are as many as callers want.
            size = stored.remember(key, _bytes_under(volume, source), cost=len(key) + 32)
        total += size
    return mounts, total


def _bytes_under(volume: formats.Volume, directory: str) -> int:
    prefix = directory.rstrip("/") + "/"
    return sum(size for path, size in volume.files() if prefix == "/" or path.startswith(prefix))


# -- commands -------------------------------------------------------------------------------------


def _commands(
    graph: _Graph, loaded: dict[PackageId, LoadResult], warnings: list[str]
) -> tuple[list[TreeCommand], list[TreeAtom]]:
    commands: list[TreeCommand] = []
    atoms: dict[str, TreeAtom] = {}
    # Indexed once per package: a scan per command is quadratic, and a crafted package with
    # 100,000 commands kept a worker busy for many minutes.
    for resolved in graph.resolution.commands:
        declared_in = resolved.package
        declaring = loaded[declared_in].package
        metadata, choice = _command_facts(
            declaring, resolved.original_name, resolved.name, str(declared_in)
        )
        if metadata is None:
            raise InvalidTree(
                f'Unable to find the "{resolved.original_name}" command metadata in the '
                f'"{declared_in}" package'
            )
        if choice is None:
            warnings.append(
                f'Skipping unsupported command "{resolved.name}" of "{declared_in}" '
                f"(runner {metadata.runner})"
            )
            continue
        atom_name, dependency = choice
        holder = declared_in
        if dependency is not None:
            target = graph.edges.get((declared_in, dependency))
            if target is None:
                raise InvalidTree(
                    f'Unable to find the "{dependency}" dependency for the "{resolved.name}" '
                    f'command in "{declared_in}"'
                )
            if target not in loaded:
                raise InvalidTree(
                    f'The "{resolved.name}" command in "{declared_in}" shadows an entry/command '
                    f'of the "{dependency}" dependency. Rename the local command.'
                )
            holder = target
        stored = loaded[holder].package
        if stored.container.get_atom(atom_name) is None:
            if metadata.annotations:
                # The stray ")" is the reference's; its words are the contract.
                raise InvalidTree(
                    f"The '{resolved.name}' command uses the '{atom_name}' atom, but it isn't "
                    f"present in the package: {holder})"
                )
            # The reference's legacy hack: old packages whose commands carry no annotations run
            # the first atom in name order.
            names = sorted(stored.container.atoms())
            if not names:
                raise InvalidTree(
                    f'The "{resolved.name}" command in "{declared_in}": '
                    "container does not have any atom"
                )
            atom_name = names[0]
        atom = _verified_atom(stored, atom_name, str(holder))
        atoms.setdefault(atom.sha256, atom)
        commands.append(
            TreeCommand(
                name=resolved.name,
                declared_in=str(declared_in),
                package=str(holder),
                package_sha256=stored.hash.hex,
                atom_name=atom_name,
                atom_sha256=atom.sha256,
                atom_size=atom.size,
                runner=metadata.runner,
                annotations=metadata.annotations,
                original_name=resolved.original_name,
                declared_package=declaring,
            )
        )
    return commands, list(atoms.values())


_Choice = tuple[str, str | None] | None


def _command_facts(
    stored: StoredPackage, original_name: str, name: str, package_id: str
) -> tuple[formats.Command | None, _Choice]:
    """The manifest's command `original_name` and the atom it runs under `name` (`_atom_for`),
    looked up once per package and remembered (charged) with it: a warm tree repeated the
    manifest search and the annotation parsing on every call."""
    key = f"tree.command:{original_name}:{name}"
    known: tuple[formats.Command | None, _Choice] | None = stored.memo.get(key)
    if known is None:
        metadata = _commands_by_name(stored).get(original_name)
        # An `InvalidTree` of `_atom_for` (naming `package_id`) is raised, never remembered.
        choice = None if metadata is None else _atom_for(name, metadata, package_id)
        known = stored.remember(key, (metadata, choice), cost=2 * len(key) + 64)
    return known


def _commands_by_name(stored: StoredPackage) -> dict[str, formats.Command]:
    """The manifest's commands by name, built once per package: a scan per command made a tree
    of a package with 100,000 commands quadratic (minutes of CPU the caller cannot cancel)."""
    index: dict[str, formats.Command] | None = stored.memo.get("tree.commands")
    if index is None:
        commands = stored.container.manifest.commands
        index = {c.name: c for c in commands}
        # A dict slot and the key's reference per command; the commands themselves are the
        # manifest's, already charged with the package.
        index = stored.remember("tree.commands", index, cost=64 + 100 * len(commands))
    return index


def _atom_for(
    name: str, command: formats.Command, package_id: str
) -> tuple[str, str | None] | None:
    """(atom, dependency alias or None) a command runs, or None for an unsupported command."""
    annotations = command.annotations
    atom = annotations.get("atom")
    if atom is not None:
        if not isinstance(atom, dict) or not isinstance(atom.get("name"), str):
            raise InvalidTree(
                f'Unable to deserialize atom annotations of the "{name}" command in "{package_id}"'
            )
        dependency = atom.get("dependency")
        return str(atom["name"]), dependency if isinstance(dependency, str) else None
    for key in ("wasi", "emscripten"):  # the webc crate's polyfill of the deprecated `atom`
        runner = annotations.get(key)
        if isinstance(runner, dict) and isinstance(runner.get("atom"), str):
            text = str(runner["atom"])
            dependency, colon, module = text.partition(":")
            return (module, dependency) if colon else (text, None)
    if command.runner.startswith((WASI_RUNNER_URI, WCGI_RUNNER_URI)):
        return name, None
    return None


# -- atoms ----------------------------------------------------------------------------------------


def _verified_atom(stored: StoredPackage, name: str, package_id: str) -> TreeAtom:
    """The atom with its sha256 computed from its bytes (once per package, kept in its memo),
    refused when it differs from the manifest's signature: GetAtom's check (`contents`)."""
    checked = contents.checked_atom(stored, name, what=f"the '{name}' atom of {package_id}")
    return TreeAtom(checked.sha256, checked.size, name, package_id, stored, checked)


def atom_chunks(atom: TreeAtom, size: int = CHUNK) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) pieces of an atom, at most `size` each: GetAtom's checked stream
    (`contents.Checked.chunks`), so a client never receives all of an atom whose bytes changed
    under us; it receives `ContentHashMismatch` instead."""
    offset = 0
    for piece in atom.checked.chunks(size):
        data = bytes(piece)  # a protobuf bytes field takes no view
        yield offset, data
        offset += len(data)
