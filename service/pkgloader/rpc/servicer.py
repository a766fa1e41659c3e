"""`PackageLoaderServicer`: proto in, domain call, proto out. Nothing else happens here."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from pkgloader_client.server import PackageLoaderServiceServicer, pb

from pkgloader import contents
from pkgloader.cache.disk import Entry
from pkgloader.errors import InvalidRequest
from pkgloader.hashes import WebcHash
from pkgloader.loader import LoadRequest, LoadResult, PackageLoader
from pkgloader.maintenance import CacheMaintenance, RetainCriteria
from pkgloader.policy import CallerRole, HashPolicy
from pkgloader.resolve import (
    Dist,
    Edge,
    Mount,
    Node,
    PackageId,
    Resolution,
    ResolvedCommand,
    Resolves,
)
from pkgloader.rpc import blocking, calls, wire
from pkgloader.rpc.wire import CHUNK, MetadataCache
from pkgloader.tree import PackageTree, TreeCommand, TreeLoader, TreeRoot, atom_chunks

SCAN_BATCH = 1000
# Every response stays far below 4 MiB, the receive limit gRPC clients (Go, Node, Java, Python)
# have by default, whatever the cache holds: a CacheEntry is at most ~170 bytes, a HashMismatch
# ~220, a hash 66; lists are cut and counted in full beside them.
MAX_SCAN_BATCH = 10_000  # ~1.7 MiB per Scan message at most
MAX_EVICT_LIST = 10_000  # hashes per Evict response list, ~660 KiB each
MAX_PROBLEMS = 10  # problems listed per invalid package ...
MAX_PROBLEM_CHARS = 1000  # ... each cut to this many characters
INVALID_BUDGET = 1024 * 1024  # serialized bytes of InvalidPackage items per response
MAX_LIST = 100_000  # hashes per Retain/Evict list; far beyond a real cache, bounds the work
#: A package id ("namespace/name@version") is echoed in the response: far beyond any real one,
#: as webc_url's limit is, so a huge one is a bad request, not a response over the send limit.
MAX_PACKAGE_ID = 8192

_POLICIES = {
    pb.HASH_VALIDATION_UNSPECIFIED: None,
    pb.HASH_VALIDATION_NONE: HashPolicy.NONE,
    pb.HASH_VALIDATION_WARN: HashPolicy.WARN,
    pb.HASH_VALIDATION_FAIL: HashPolicy.FAIL,
}


class PackageLoaderServicer(PackageLoaderServiceServicer):
    def __init__(
        self,
        loader: PackageLoader,
        maintenance: CacheMaintenance,
        call_timeout: float = 900.0,
        resolver: Resolves | None = None,
        trees: TreeLoader | None = None,
        wire: MetadataCache | None = None,
    ) -> None:
        self._loader = loader
        self._wire = wire if wire is not None else MetadataCache()
        self._maintenance = maintenance
        self._call_timeout = call_timeout
        self._resolver = resolver
        self._trees = trees or TreeLoader(loader, resolver)

    async def Load(self, request: pb.LoadRequest, context: Any) -> AsyncIterator[Any]:
        """A package memory holds, with its metadata already serialized, is answered on the
        event loop, where the call arrived (most warm Loads: no thread hand-over); any other
        Load runs on the business pool (`_load`), since it may wait for the disk or a
        download."""
        warm = self._warm(request)
        if warm is None:
            stepped = blocking.stepped(self._load, request, context, wire.serialize)
            async with contextlib.aclosing(stepped) as items:
                async for item in items:
                    yield item
            return
        result, message = warm
        yield message
        if request.include_content:
            # From process memory: slicing and framing, no I/O.
            for item in wire.chunk_messages(result.package.chunks(CHUNK)):
                yield item
            calls.current().sent_bytes = result.package.size

    def _warm(self, request: pb.LoadRequest) -> tuple[LoadResult, bytes] | None:
        call = calls.current()
        hit = self._loader.load_from_memory(self._load_request(request, call))
        if hit is None or not hit.package.in_memory:
            return None
        message = self._wire.kept_package_message(hit, request.summary.package_id)
        if message is None:
            return None
        self._note(hit, call)
        return hit, message

    def _load(self, request: pb.LoadRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        call = calls.current()
        result = self._loader.load(
            self._load_request(request, call),
            alive=context.is_active,
            timeout=_timeout(context, self._call_timeout),
        )
        self._note(result, call)
        # Ready-made LoadResponse bytes (rpc.wire): the kept metadata, then framed chunks.
        yield self._wire.package_message(result, request.summary.package_id)
        if request.include_content:
            # Views of one buffer read again for each chunk: framing copies each at once.
            yield from wire.chunk_messages(result.package.views(CHUNK))
            calls.current().sent_bytes = result.package.size

    @staticmethod
    def _load_request(request: pb.LoadRequest, call: calls.CallRecord) -> LoadRequest:
        dist = request.summary.dist
        if len(request.summary.package_id) > MAX_PACKAGE_ID:
            raise _long_package_id(request.summary.package_id)
        call.package_id = request.summary.package_id[:200]
        call.sha256 = dist.webc_sha256[:64]
        return LoadRequest(
            url=dist.webc_url,
            sha256=dist.webc_sha256,
            package_id=request.summary.package_id,
            policy=_enum(_POLICIES, request.hash_validation, "hash_validation"),
            size_hint=dist.webc_size if dist.HasField("webc_size") else None,
            # The interceptor records the role when client auth is on; without it every
            # caller may do anything, so each is ADMIN.
            role=CallerRole.READER if call.role == "reader" else CallerRole.ADMIN,
        )

    @staticmethod
    def _note(result: LoadResult, call: calls.CallRecord) -> None:
        call.source = result.source.value
        call.package_bytes = result.package.size

    def ValidateCache(
        self, request: pb.ValidateCacheRequest, context: grpc.ServicerContext
    ) -> pb.ValidateCacheResponse:
        mode = _enum(
            {
                pb.CACHE_VALIDATION_UNSPECIFIED: False,
                pb.CACHE_VALIDATION_WARN: False,
                pb.CACHE_VALIDATION_PRUNE: True,
            },
            request.mode,
            "mode",
        )
        report = self._maintenance.validate(prune=bool(mode), deep=request.deep)
        invalid: list[pb.InvalidPackage] = []
        budget = INVALID_BUDGET
        for b in report.invalid:
            item = pb.InvalidPackage(
                source=b.name,
                webc_sha256=b.sha256,
                problems=[p[:MAX_PROBLEM_CHARS] for p in b.problems[:MAX_PROBLEMS]],
                pruned=b.pruned,
                problem_count=len(b.problems),
            )
            budget -= item.ByteSize()
            if budget < 0:
                break
            invalid.append(item)
        call = calls.current()
        call.mismatches = report.mismatch_count
        call.invalid_packages = report.invalid_count
        return pb.ValidateCacheResponse(
            mismatches=[
                pb.HashMismatch(
                    source=m.name,
                    expected_sha256=m.expected,
                    actual_sha256=m.actual,
                    pruned=m.pruned,
                )
                for m in report.mismatches
            ],
            invalid_packages=invalid,
            checked_files=report.checked_files,
            checked_bytes=report.checked_bytes,
            mismatch_count=report.mismatch_count,
            invalid_package_count=report.invalid_count,
            truncated=(
                len(report.mismatches) < report.mismatch_count
                or len(invalid) < report.invalid_count
            ),
        )

    def Scan(
        self, request: pb.ScanRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ScanResponse]:
        size = min(request.batch_size or SCAN_BATCH, MAX_SCAN_BATCH)
        batch: list[pb.CacheEntry] = []
        for entry in self._maintenance.scan():
            batch.append(self._entry(entry))
            if len(batch) >= size:
                yield pb.ScanResponse(entries=batch)
                batch = []
        if batch:
            yield pb.ScanResponse(entries=batch)

    def Retain(self, request: pb.RetainRequest, context: grpc.ServicerContext) -> pb.RetainResponse:
        unused_for = None
        if request.HasField("unused_for"):
            unused_for = _seconds(request.unused_for, "unused_for")
            if unused_for < 0:
                raise InvalidRequest("unused_for must not be negative")
        outcome = self._maintenance.retain(
            RetainCriteria(
                keep=_hashes(request.keep_sha256, "keep_sha256"),
                remove=_hashes(request.remove_sha256, "remove_sha256"),
                unused_for=unused_for,
                max_total_bytes=(
                    request.max_total_bytes if request.HasField("max_total_bytes") else None
                ),
                dry_run=request.dry_run,
            )
        )
        calls.current().removed_files = outcome.removed_files
        return pb.RetainResponse(
            removed=[self._entry(e) for e in outcome.removed],
            kept_files=outcome.kept_files,
            kept_bytes=outcome.kept_bytes,
            removed_bytes=outcome.removed_bytes,
            removed_files=outcome.removed_files,
            truncated=outcome.truncated,
        )

    def Evict(self, request: pb.EvictRequest, context: grpc.ServicerContext) -> pb.EvictResponse:
        delete = _enum(
            {
                pb.EVICT_SCOPE_UNSPECIFIED: False,
                pb.EVICT_SCOPE_MEMORY: False,
                pb.EVICT_SCOPE_ALL: True,
            },
            request.scope,
            "scope",
        )
        hashes = [WebcHash(h) for h in sorted(_hashes(request.webc_sha256, "webc_sha256"))]
        evicted, deleted = self._maintenance.evict(hashes, delete=bool(delete))
        return pb.EvictResponse(
            evicted=evicted[:MAX_EVICT_LIST],
            deleted=deleted[:MAX_EVICT_LIST],
            evicted_count=len(evicted),
            deleted_count=len(deleted),
            truncated=max(len(evicted), len(deleted)) > MAX_EVICT_LIST,
        )

    def Resolve(
        self, request: pb.ResolveRequest, context: grpc.ServicerContext
    ) -> pb.ResolveResponse:
        calls.current().specifier = request.specifier[:200]
        if self._resolver is None:  # only servers built by hand in tests; app.build wires one
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server has no resolver")
        resolved = self._resolver.resolve(request.specifier)
        return pb.ResolveResponse(
            resolution=resolution_to_proto(resolved.resolution), warnings=resolved.warnings
        )

    def LoadTree(
        self, request: pb.LoadTreeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LoadTreeResponse]:
        call = calls.current()
        if request.WhichOneof("root") == "summary":
            summary = request.summary
            dist = summary.dist
            root = TreeRoot(
                url=dist.webc_url,
                sha256=WebcHash.parse(dist.webc_sha256).hex,
                package_id=_package_id(summary),
                size=dist.webc_size if dist.HasField("webc_size") else None,
            )
        else:
            root = TreeRoot(specifier=request.specifier)
        call.specifier = (root.specifier or root.package_id)[:200]
        call.sha256 = root.sha256
        resolution = None
        if request.HasField("resolution"):
            resolution = resolution_from_proto(request.resolution)
        tree = self._trees.load_tree(
            root,
            resolution,
            policy=_enum(_POLICIES, request.hash_validation, "hash_validation"),
            alive=context.is_active,
            timeout=_timeout(context, self._call_timeout),
        )
        call.packages = len(tree.packages)
        yield pb.LoadTreeResponse(package=_binary_package(tree))
        if request.include_atoms:
            sent = 0
            for atom in tree.atoms:
                for offset, data in atom_chunks(atom, CHUNK):
                    yield pb.LoadTreeResponse(
                        atom=pb.AtomChunk(atom_sha256=atom.sha256, offset=offset, data=data)
                    )
                    sent += len(data)
            call.sent_bytes = sent

    def _entry(self, entry: Entry) -> pb.CacheEntry:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(int(entry.last_used * 1e9))
        return pb.CacheEntry(
            webc_sha256=entry.hash.hex,
            size=entry.size,
            last_used=stamp,
            in_memory=self._maintenance.in_memory(entry.hash.hex),
            cache_path=entry.name,
        )

    # -- contents: GetAtom, ReadFile, ListDirectory ------------------------------------------

    def GetAtom(self, request: pb.GetAtomRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        opened = self._open(request.webc_sha256, request, context)
        atom = opened.contents.atom(request.atom_name)  # hashed and checked before any item
        checked = atom.checked
        yield pb.GetAtomResponse(
            info=pb.ContentInfo(
                name=atom.name,
                size=checked.size,
                sha256=checked.sha256,
                signature=atom.signature,
                kind=atom.kind,
            )
        )
        yield from wire.chunk_messages(checked.chunks(CHUNK))
        calls.current().sent_bytes = checked.size

    def ReadFile(self, request: pb.ReadFileRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        opened = self._open(request.webc_sha256, request, context)
        found = opened.contents.file(request.volume, request.path)
        checked = found.checked
        yield pb.ReadFileResponse(
            info=pb.ContentInfo(
                name=found.path,
                size=checked.size,
                sha256=checked.sha256,
                modified=_stamp(found.modified),
                volume=found.volume,
            )
        )
        yield from wire.chunk_messages(checked.chunks(CHUNK))
        calls.current().sent_bytes = checked.size

    def ListDirectory(
        self, request: pb.ListDirectoryRequest, context: grpc.ServicerContext
    ) -> pb.ListDirectoryResponse:
        opened = self._open(request.webc_sha256, request, context)
        listing = opened.contents.listing(request.volume, request.path, recursive=request.recursive)
        return pb.ListDirectoryResponse(
            entries=[
                pb.DirectoryEntry(
                    path=e.path,
                    kind=pb.ENTRY_KIND_DIRECTORY if e.is_dir else pb.ENTRY_KIND_FILE,
                    size=e.size,
                    sha256=e.sha256,
                    modified=_stamp(e.modified),
                )
                for e in listing.entries
            ],
            truncated=listing.truncated,
            total_entries=listing.total,
        )

    def _open(self, sha256: str, request: Any, context: grpc.ServicerContext) -> contents.Opened:
        """The package a contents request names, from the cache or (with a summary) loaded."""
        load = None
        if request.HasField("summary"):
            summary = request.summary
            load = LoadRequest(
                url=summary.dist.webc_url,
                sha256=summary.dist.webc_sha256,
                package_id=_package_id(summary),
                size_hint=summary.dist.webc_size if summary.dist.HasField("webc_size") else None,
            )
        call = calls.current()
        call.sha256 = (sha256 or (load.sha256 if load else ""))[:64]
        opened = contents.open_contents(
            self._loader,
            sha256,
            load,
            alive=context.is_active,
            timeout=_timeout(context, self._call_timeout),
        )
        call.source = opened.source.value
        call.package_bytes = opened.size
        return opened


def _stamp(seconds: int | None) -> timestamp_pb2.Timestamp | None:
    return None if seconds is None else timestamp_pb2.Timestamp(seconds=seconds)


def _timeout(context: grpc.ServicerContext, default: float) -> float:
    """The client's remaining deadline, capped by the server's default for calls without one."""
    remaining = context.time_remaining()
    return default if remaining is None else max(0.0, min(remaining, default))


# google.protobuf.Duration's documented range is ±10,000 years; beyond it ToTimedelta overflows.
_MAX_DURATION_SECONDS = 315_576_000_000


def _seconds(duration: duration_pb2.Duration, name: str) -> float:
    if abs(duration.seconds) > _MAX_DURATION_SECONDS or abs(duration.nanos) > 999_999_999:
        raise InvalidRequest(
            f"{name} is out of range: a Duration holds at most {_MAX_DURATION_SECONDS} seconds "
            "and 999999999 nanoseconds"
        )
    return duration.seconds + duration.nanos / 1e9


def _package_id(summary: Any) -> str:
    """A summary's package id, within `MAX_PACKAGE_ID`."""
    package_id: str = summary.package_id
    if len(package_id) > MAX_PACKAGE_ID:
        raise _long_package_id(package_id)
    return package_id


def _long_package_id(package_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"package_id is {len(package_id)} characters long; at most {MAX_PACKAGE_ID} are accepted"
    )


def _enum(table: Mapping[Any, Any], value: int, name: str) -> Any:
    if value not in table:
        raise InvalidRequest(f"unknown {name} value {value}")
    return table[value]


def _hashes(values: Any, name: str) -> frozenset[str]:
    if len(values) > MAX_LIST:
        raise InvalidRequest(f"{name} lists {len(values)} hashes; at most {MAX_LIST} are accepted")
    return frozenset(WebcHash.parse(v).hex for v in values)


# -- Resolve ----------------------------------------------------------------------------------


def resolution_to_proto(resolution: Resolution) -> pb.Resolution:
    message = pb.Resolution(
        root=str(resolution.root),
        nodes=[
            pb.ResolvedNode(
                id=str(node.id),
                dist=pb.DistributionInfo(
                    webc_url=node.dist.webc_url,
                    webc_sha256=node.dist.webc_sha256,
                    webc_size=node.dist.webc_size,
                ),
            )
            for node in resolution.nodes
        ],
        # `from` is a Python keyword: the field can only be set through keyword unpacking.
        edges=[
            pb.ResolvedEdge(**{"from": str(e.from_), "to": str(e.to), "alias": e.alias})
            for e in resolution.edges
        ],
        commands=[
            pb.ResolvedCommand(name=c.name, package=str(c.package), original_name=c.original_name)
            for c in resolution.commands
        ],
        mounts=[
            pb.ResolvedMount(
                mount_path=m.mount_path,
                package=str(m.package),
                volume=m.volume,
                original_path=m.original_path or "",
            )
            for m in resolution.mounts
        ],
    )
    if resolution.entrypoint is not None:
        message.entrypoint = resolution.entrypoint
    return message


def resolution_from_proto(message: pb.Resolution) -> Resolution:
    """A caller's resolution (LoadTree's `resolution`), checked: an edge, command or mount that
    names no node, an entrypoint that is no command, a mount path out of the tree are
    INVALID_ARGUMENT."""
    nodes = []
    for node in message.nodes:
        dist = node.dist
        nodes.append(
            Node(
                id=PackageId.parse(node.id),
                dist=Dist(
                    webc_url=dist.webc_url,
                    webc_sha256=WebcHash.parse(dist.webc_sha256).hex,
                    webc_size=dist.webc_size if dist.HasField("webc_size") else None,
                ),
            )
        )
    resolution = Resolution(
        root=PackageId.parse(message.root),
        nodes=tuple(nodes),
        edges=tuple(
            Edge(PackageId.parse(getattr(e, "from")), PackageId.parse(e.to), e.alias)
            for e in message.edges
        ),
        commands=tuple(
            ResolvedCommand(c.name, PackageId.parse(c.package), c.original_name)
            for c in message.commands
        ),
        entrypoint=message.entrypoint if message.HasField("entrypoint") else None,
        mounts=tuple(
            Mount(m.mount_path, PackageId.parse(m.package), m.volume, m.original_path or None)
            for m in message.mounts
        ),
    )
    resolution.validate_sent()
    return resolution


# -- LoadTree -------------------------------------------------------------------------------------


def _tree_command(c: TreeCommand) -> pb.TreeCommand:
    message = pb.TreeCommand(
        name=c.name,
        declared_in=c.declared_in,
        package=c.package,
        package_sha256=c.package_sha256,
        atom_name=c.atom_name,
        atom_sha256=c.atom_sha256,
        atom_size=c.atom_size,
        runner=c.runner,
    )
    # Immutable per package, so serialized once and kept (charged) with the declaring package:
    # building the Struct from the dict cost 12 times merging its bytes.
    stored, key = c.declared_package, f"pb_annotations:{c.original_name}"
    annotations: bytes | None = None if stored is None else stored.memo.get(key)
    if annotations is None:
        annotations = wire.struct(c.annotations).SerializeToString()
        if stored is not None:
            annotations = stored.remember(key, annotations)
    message.annotations.MergeFromString(annotations)
    return message


def _binary_package(tree: PackageTree) -> pb.BinaryPackage:
    message = pb.BinaryPackage(
        id=tree.id,
        package_ids=tree.package_ids,
        commands=[_tree_command(c) for c in tree.commands],
        mounts=[
            pb.TreeMount(
                mount_path=m.mount_path,
                package=m.package,
                package_sha256=m.package_sha256,
                volume=m.volume,
                original_path=m.original_path,
            )
            for m in tree.mounts
        ],
        packages=[
            pb.TreePackage(
                id=p.id, webc_sha256=p.webc_sha256, source=wire.SOURCES[p.source], size=p.size
            )
            for p in tree.packages
        ],
        file_system_bytes=tree.file_system_bytes,
        warnings=tree.warnings,
    )
    if tree.entrypoint is not None:
        message.entrypoint = tree.entrypoint
    return message
