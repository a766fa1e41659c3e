"""`PackageLoaderServicer`: proto in, domain call, proto out. Nothing else happens here."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, cast

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from pkgloader_client.server import (
    SERVICE_NAME,
    PackageLoaderServiceServicer,
    add_PackageLoaderServiceServicer_to_server,
    pb,
)

from pkgloader import contents, formats
from pkgloader.cache.disk import Entry
from pkgloader.errors import InvalidRequest
from pkgloader.formats.writer import uleb128 as _varint  # a protobuf varint is ULEB128
from pkgloader.hashes import WebcHash
from pkgloader.loader import LoadRequest, LoadResult, PackageLoader, StoredPackage
from pkgloader.maintenance import CacheMaintenance, RetainCriteria
from pkgloader.policy import CallerRole, HashPolicy, Source
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
from pkgloader.tree import PackageTree, TreeCommand, TreeLoader, TreeRoot, atom_chunks

CHUNK = 1024 * 1024  # the contract: content chunks of at most 1 MiB
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

_POLICIES = {
    pb.HASH_VALIDATION_UNSPECIFIED: None,
    pb.HASH_VALIDATION_NONE: HashPolicy.NONE,
    pb.HASH_VALIDATION_WARN: HashPolicy.WARN,
    pb.HASH_VALIDATION_FAIL: HashPolicy.FAIL,
}
_SOURCES = {
    Source.MEMORY: pb.SOURCE_MEMORY,
    Source.DISK: pb.SOURCE_DISK,
    Source.DOWNLOAD: pb.SOURCE_DOWNLOAD,
}


class PackageLoaderServicer(PackageLoaderServiceServicer):
    #: Load yields serialized `LoadResponse` bytes instead of messages. Only `add_to_server` sets
    #: it, as it registers the serializer that passes such bytes through.
    preserialized = False

    def __init__(
        self,
        loader: PackageLoader,
        maintenance: CacheMaintenance,
        call_timeout: float = 900.0,
        resolver: Resolves | None = None,
        trees: TreeLoader | None = None,
    ) -> None:
        self._loader = loader
        self._maintenance = maintenance
        self._call_timeout = call_timeout
        self._resolver = resolver
        self._trees = trees or TreeLoader(loader, resolver)

    def Load(self, request: pb.LoadRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        dist = request.summary.dist
        log = _log_fields(context)
        log.update(package_id=request.summary.package_id[:200], sha256=dist.webc_sha256[:64])
        result = self._loader.load(
            LoadRequest(
                url=dist.webc_url,
                sha256=dist.webc_sha256,
                package_id=request.summary.package_id,
                policy=_enum(_POLICIES, request.hash_validation, "hash_validation"),
                size_hint=dist.webc_size if dist.HasField("webc_size") else None,
                # The interceptor records the role when client auth is on; without it every
                # caller may do anything, so each is ADMIN.
                role=CallerRole.READER if log.get("role") == "reader" else CallerRole.ADMIN,
            ),
            alive=context.is_active,
            timeout=_timeout(context, self._call_timeout),
        )
        log.update(source=result.source.value, bytes=result.package.size)
        # Ready-made LoadResponse bytes: registered through `add_to_server`, they go out as they
        # are; registered through the generated function, they are parsed back into messages.
        ready = self.preserialized
        first = _package_message(result, request.summary.package_id)
        yield first if ready else pb.LoadResponse.FromString(first)
        if request.include_content:
            for message in _chunk_messages(result.package):
                yield message if ready else pb.LoadResponse.FromString(message)
            log["sent_bytes"] = result.package.size

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
        log = _log_fields(context)
        log.update(mismatches=report.mismatch_count, invalid_packages=report.invalid_count)
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
        _log_fields(context)["removed_files"] = outcome.removed_files
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
        _log_fields(context)["specifier"] = request.specifier[:200]
        if self._resolver is None:  # only servers built by hand in tests; app.build wires one
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server has no resolver")
        resolved = self._resolver.resolve(request.specifier)
        return pb.ResolveResponse(
            resolution=resolution_to_proto(resolved.resolution), warnings=resolved.warnings
        )

    def LoadTree(
        self, request: pb.LoadTreeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LoadTreeResponse]:
        log = _log_fields(context)
        if request.WhichOneof("root") == "summary":
            summary = request.summary
            dist = summary.dist
            root = TreeRoot(
                url=dist.webc_url,
                sha256=WebcHash.parse(dist.webc_sha256).hex,
                package_id=summary.package_id,
                size=dist.webc_size if dist.HasField("webc_size") else None,
            )
        else:
            root = TreeRoot(specifier=request.specifier)
        log.update(specifier=(root.specifier or root.package_id)[:200], sha256=root.sha256)
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
        log.update(packages=len(tree.packages))
        yield pb.LoadTreeResponse(package=_binary_package(tree))
        if request.include_atoms:
            sent = 0
            for atom in tree.atoms:
                for offset, data in atom_chunks(atom, CHUNK):
                    yield pb.LoadTreeResponse(
                        atom=pb.AtomChunk(atom_sha256=atom.sha256, offset=offset, data=data)
                    )
                    sent += len(data)
            log["sent_bytes"] = sent

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
        for message in _content_chunks(checked):
            yield message if self.preserialized else pb.GetAtomResponse.FromString(message)
        _log_fields(context)["sent_bytes"] = checked.size

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
        for message in _content_chunks(checked):
            yield message if self.preserialized else pb.ReadFileResponse.FromString(message)
        _log_fields(context)["sent_bytes"] = checked.size

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
                package_id=summary.package_id,
                size_hint=summary.dist.webc_size if summary.dist.HasField("webc_size") else None,
            )
        log = _log_fields(context)
        log.update(sha256=(sha256 or (load.sha256 if load else ""))[:64])
        opened = contents.open_contents(
            self._loader,
            sha256,
            load,
            alive=context.is_active,
            timeout=_timeout(context, self._call_timeout),
        )
        log.update(source=opened.source.value, bytes=opened.size)
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


def _log_fields(context: grpc.ServicerContext) -> dict[str, Any]:
    call = getattr(context, "pkgloader_call", None)
    return call.fields if call is not None else {}


def _enum(table: Mapping[Any, Any], value: int, name: str) -> Any:
    if value not in table:
        raise InvalidRequest(f"unknown {name} value {value}")
    return table[value]


def _hashes(values: Any, name: str) -> frozenset[str]:
    if len(values) > MAX_LIST:
        raise InvalidRequest(f"{name} lists {len(values)} hashes; at most {MAX_LIST} are accepted")
    return frozenset(WebcHash.parse(v).hex for v in values)


def add_to_server(servicer: PackageLoaderServicer, server: grpc.Server) -> None:
    """Register `servicer` as the generated function does, except that Load's serializer passes
    ready-made bytes through (and `servicer` is told to make them)."""
    recorder = _Recorder()
    add_PackageLoaderServiceServicer_to_server(servicer, cast(grpc.Server, recorder))
    handlers = dict(recorder.handlers)
    handlers["Load"] = handlers["Load"]._replace(response_serializer=_serialize_load)
    # GetAtom and ReadFile chunks are framed the same way (field 2, bytes): built as bytes too.
    for name in ("GetAtom", "ReadFile"):
        handlers[name] = handlers[name]._replace(response_serializer=_serialize_load)
    servicer.preserialized = True
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # Registered methods skip grpcio's generic lookup per call; grpc-stubs does not know it yet.
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]


class _Recorder:
    """Stands in for a server to catch the handlers the generated function registers."""

    handlers: dict[str, Any]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
        self.handlers = handlers


def _serialize_load(item: pb.LoadResponse | bytes) -> bytes:
    return item if isinstance(item, bytes) else item.SerializeToString()


# A LoadResponse is a oneof of `package` (field 1) and `chunk` (field 2), both length-delimited
# (wire type 2): tag byte, varint length, payload. Building the bytes here costs one copy of
# each chunk (from the package bytes in memory, or from the buffer a file read filled) and no
# protobuf work at all.
_PACKAGE_TAG = b"\x0a"
_CHUNK_TAG = b"\x12"


_FULL_CHUNK_HEADER = _CHUNK_TAG + _varint(CHUNK)


def _chunk_messages(stored: StoredPackage) -> Iterator[bytes]:
    """`LoadResponse{chunk}` bytes for each 1 MiB slice of the package, in order (a file that
    shrinks meanwhile ends the stream with `CacheFileChanged`, raised by `chunks`)."""
    for piece in stored.chunks(CHUNK):
        header = _FULL_CHUNK_HEADER if len(piece) == CHUNK else _CHUNK_TAG + _varint(len(piece))
        yield b"".join((header, piece))


def _content_chunks(checked: contents.Checked) -> Iterator[bytes]:
    """`GetAtomResponse{chunk}` / `ReadFileResponse{chunk}` bytes (both: field 2, bytes) for each
    1 MiB piece of a checked content. Building the messages with protobuf cost 2.5 times the
    sha256 pass over the same bytes; framing them here costs one copy."""
    for piece in checked.chunks(CHUNK):
        header = _FULL_CHUNK_HEADER if len(piece) == CHUNK else _CHUNK_TAG + _varint(len(piece))
        yield b"".join((header, piece))


def _package_message(result: LoadResult, package_id: str) -> bytes:
    """`LoadResponse{package}` bytes: this call's fields, then the package's serialized metadata.
    Two serialized messages of one type, concatenated, parse as the two merged."""
    head = pb.Package(
        webc_sha256=result.package.hash.hex,
        size=result.package.size,
        source=_SOURCES[result.source],
        cache_path=result.package.cache_name or "",
        warnings=result.warnings,
        package_id=package_id,
    ).SerializeToString()
    body = head + _metadata(result.package)
    return _PACKAGE_TAG + _varint(len(body)) + body


def _metadata(stored: StoredPackage) -> bytes:
    """format, manifest and volumes, serialized: immutable per package, so built once and kept
    with it (a warm Load then costs no manifest conversion and no large serialization)."""
    cached: bytes | None = stored.memo.get("pb_metadata")
    if cached is None:
        # `remember` charges the bytes to the memory tier when the package is held there.
        container = stored.container
        cached = pb.Package(
            format=container.format,
            manifest=_manifest(container.manifest, container),
            volumes=[
                pb.Volume(name=name, files=volume.file_count, bytes=volume.total_bytes)
                for name, volume in container.volumes().items()
            ],
        ).SerializeToString()
        cached = stored.remember("pb_metadata", cached)
    return cached


def _manifest(manifest: formats.Manifest, container: formats.Container) -> pb.Manifest:
    message = pb.Manifest(
        commands=[
            pb.Command(name=c.name, runner=c.runner, annotations=_struct(c.annotations))
            for c in manifest.commands
        ],
        atoms=[
            pb.Atom(
                name=a.name,
                kind=a.kind,
                signature=a.signature,
                size=a.size,
                annotations=_struct(a.annotations),
            )
            for a in manifest.atoms
        ],
        dependencies=[pb.Dependency(alias=d.alias, spec=d.spec) for d in manifest.dependencies],
        package=_struct(manifest.package),
        bindings=[
            pb.Binding(name=b.name, kind=b.kind, annotations=_value(b.annotations))
            for b in manifest.bindings
        ],
    )
    if manifest.entrypoint is not None:
        message.entrypoint = manifest.entrypoint
    return message


def _struct(data: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if isinstance(data, dict):
        struct.update(data)
    return struct


def _value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if data is None:
        value.null_value = struct_pb2.NULL_VALUE
    else:
        holder = struct_pb2.Struct()
        holder.update({"v": data})
        value.CopyFrom(holder.fields["v"])
    return value


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
        annotations = _struct(c.annotations).SerializeToString()
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
                id=p.id, webc_sha256=p.webc_sha256, source=_SOURCES[p.source], size=p.size
            )
            for p in tree.packages
        ],
        file_system_bytes=tree.file_system_bytes,
        warnings=tree.warnings,
    )
    if tree.entrypoint is not None:
        message.entrypoint = tree.entrypoint
    return message
