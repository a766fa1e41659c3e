"""The service's wire format, owned in one place: how every RPC is registered with grpc, and the
response bytes the service builds itself.

Registration: one path, grpc's public handler constructors (`grpc.unary_stream_rpc_method_handler`
and its siblings), one handler per method of the service's descriptor, so a method added to the
proto is registered by construction. Every handler's response serializer passes ready-made bytes
through and serializes messages, so the servicer may yield either and there is no mode to set.

Ready-made bytes: a Load's package message ends with the package's format, manifest and volumes,
which never change for a package; they are serialized once (`MetadataCache`) and kept beside the
package, charged to the memory tier's budget through the package's public `charge`. Content
chunks (Load, GetAtom, ReadFile: all field 2, bytes) are framed here by hand, which costs one copy
of each chunk and no protobuf work (building them with protobuf cost 2.5 times the sha256 pass
over the same bytes).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from google.protobuf import message_factory, struct_pb2
from google.protobuf.message import Message
from grpc import aio
from pkgloader_client.server import SERVICE_NAME, pb

from pkgloader import formats
from pkgloader.formats.writer import uleb128 as varint  # a protobuf varint is ULEB128
from pkgloader.loader import LoadResult, StoredPackage
from pkgloader.policy import Source

CHUNK = 1024 * 1024  # the contract: content chunks of at most 1 MiB

#: The service as the proto declares it: its methods are what `handlers` registers.
SERVICE = pb.DESCRIPTOR.services_by_name[SERVICE_NAME.rsplit(".", 1)[-1]]

SOURCES = {
    Source.MEMORY: pb.SOURCE_MEMORY,
    Source.DISK: pb.SOURCE_DISK,
    Source.DOWNLOAD: pb.SOURCE_DOWNLOAD,
}

# grpc's handler constructors by (client streaming, server streaming).
_CONSTRUCTORS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def serialize(item: Message | bytes) -> bytes:
    """Every response's serializer: ready-made message bytes as they are, messages serialized."""
    return item if isinstance(item, bytes) else item.SerializeToString()


def handlers(servicer: object) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """One handler per method of the service, each bound to the servicer's method of that name."""
    table = {}
    for method in SERVICE.methods:
        request = message_factory.GetMessageClass(method.input_type)
        make = _CONSTRUCTORS[(method.client_streaming, method.server_streaming)]
        table[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=serialize,
        )
    return table


def register(servicer: object, server: aio.Server) -> None:
    """Serve `servicer` on `server` (what the generated `add_..._to_server` does, with our
    serializers), as a generic handler only: see `GenericOnly` for why no registered methods."""
    table = handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, table),))


class GenericOnly:
    """A server as another package's generated `add_..._to_server` (health, reflection) sees it:
    the generic handler it adds is passed on, its registered-method handlers are not.

    Why: grpcio's asyncio server keeps one pending request for each registered method, and one
    for everything else, and `asyncio.wait`s on all of them for every call it accepts (grpcio
    1.85, `AioServer._server_main_loop`), adding, checking and removing a done callback on each
    one every time. With the 14 registered methods of ours, health and reflection, that was 126
    of the 266 more Python and C function calls a warm Load made than a bare server's call
    (counted on the loop thread under load, docs/performance.md); a generic handler is one dict
    lookup per call.
    One per `add_..._to_server` call: today's generated functions add the generic handler,
    then the same handlers as registered methods; one that only registers them would have its
    handlers passed on as a generic handler instead, so no service is left unserved."""

    def __init__(self, server: aio.Server) -> None:
        self._server = server
        self._added = False

    def add_generic_rpc_handlers(
        self, handlers: tuple[grpc.GenericRpcHandler[Any, Any], ...]
    ) -> None:
        self._server.add_generic_rpc_handlers(handlers)
        self._added = True

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Served by the generic handler added before (see the class); without one, as one."""
        if not self._added:
            generic = grpc.method_handlers_generic_handler(service, handlers)
            self.add_generic_rpc_handlers((generic,))


# -- ready-made messages ------------------------------------------------------------------------

# LoadResponse is a oneof of `package` (field 1) and `chunk` (field 2), both length-delimited
# (wire type 2): tag byte, varint length, payload. GetAtomResponse and ReadFileResponse frame
# their chunks the same way (field 2, bytes).
_PACKAGE_TAG = b"\x0a"
_CHUNK_TAG = b"\x12"
_FULL_CHUNK_HEADER = _CHUNK_TAG + varint(CHUNK)

# What a kept value costs beyond its bytes (the bytes object, its weak-dictionary slot).
_KEPT_OVERHEAD = 200
#: A memory hit's whole message is kept for package ids up to this long ...
_KEPT_ID = 128
#: ... and charged its metadata plus this much for the call's fields (hash, size, source,
#: cache path and such an id take under 300 bytes).
_HIT_FIELDS = 512


class MetadataCache:
    """Each package's serialized format, manifest and volumes (`pb.Package` fields), built on
    its first Load and kept while the package object lives (weakly: when the memory tier drops
    the package, this goes with it). What it keeps is charged to the memory tier through
    `StoredPackage.charge`, as everything a cached package keeps must be."""

    def __init__(self) -> None:
        self._kept: weakref.WeakKeyDictionary[StoredPackage, bytes] = weakref.WeakKeyDictionary()
        #: a memory hit's whole message, for the package id it was last asked with
        self._hits: weakref.WeakKeyDictionary[StoredPackage, tuple[str, bytes]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def metadata(self, stored: StoredPackage) -> bytes:
        kept = self._kept.get(stored)
        if kept is not None:
            return kept
        built = _metadata(stored.container)
        with self._lock:
            kept = self._kept.setdefault(stored, built)
        if kept is built:  # the first to build it charges it; a racing twin is dropped
            stored.charge(len(built) + _KEPT_OVERHEAD)
        return kept

    def package_message(self, result: LoadResult, package_id: str) -> bytes:
        """`LoadResponse{package}` bytes: this call's fields, then the package's kept metadata
        (built now if it is not kept yet: for a large manifest, work to keep off the loop)."""
        return _package_message(result, package_id, self.metadata(result.package))

    def kept_package_message(self, result: LoadResult, package_id: str) -> bytes | None:
        """`package_message` when the package's metadata is kept already, else None.

        A memory hit's message is the same on every call that names the package the same way,
        so the whole message is kept too, for the package id last asked with: a warm Load then
        builds no protobuf at all."""
        stored = result.package
        same = result.source is Source.MEMORY and not result.warnings
        if same:
            hit = self._hits.get(stored)
            if hit is not None and hit[0] == package_id:
                return hit[1]
        kept = self._kept.get(stored)
        if kept is None:
            return None
        message = _package_message(result, package_id, kept)
        if same and len(package_id) <= _KEPT_ID:
            with self._lock:
                first = stored not in self._hits
                self._hits[stored] = (package_id, message)
            if first:  # one kept message per package, whichever id it holds
                stored.charge(len(kept) + _HIT_FIELDS + _KEPT_OVERHEAD)
        return message


def _package_message(result: LoadResult, package_id: str, metadata: bytes) -> bytes:
    """This call's fields, then the package's metadata. Two serialized messages of one type,
    concatenated, parse as the two merged."""
    package = result.package
    head = pb.Package(
        webc_sha256=package.hash.hex,
        size=package.size,
        source=SOURCES[result.source],
        cache_path=package.cache_name or "",
        warnings=result.warnings,
        package_id=package_id,
    ).SerializeToString()
    body = head + metadata
    return _PACKAGE_TAG + varint(len(body)) + body


def chunk_messages(pieces: Iterable[bytes | memoryview]) -> Iterator[bytes]:
    """`{chunk}` message bytes (field 2, bytes) for each piece, in order: a LoadResponse,
    GetAtomResponse or ReadFileResponse chunk."""
    for piece in pieces:
        size = len(piece)
        header = _FULL_CHUNK_HEADER if size == CHUNK else _CHUNK_TAG + varint(size)
        yield b"".join((header, piece))


def _metadata(container: formats.Container) -> bytes:
    return pb.Package(
        format=container.format,
        manifest=_manifest(container.manifest),
        volumes=[
            pb.Volume(name=name, files=volume.file_count, bytes=volume.total_bytes)
            for name, volume in container.volumes().items()
        ],
    ).SerializeToString()


def _manifest(manifest: formats.Manifest) -> pb.Manifest:
    message = pb.Manifest(
        commands=[
            pb.Command(name=c.name, runner=c.runner, annotations=struct(c.annotations))
            for c in manifest.commands
        ],
        atoms=[
            pb.Atom(
                name=a.name,
                kind=a.kind,
                signature=a.signature,
                size=a.size,
                annotations=struct(a.annotations),
            )
            for a in manifest.atoms
        ],
        dependencies=[pb.Dependency(alias=d.alias, spec=d.spec) for d in manifest.dependencies],
        package=struct(manifest.package),
        bindings=[
            pb.Binding(name=b.name, kind=b.kind, annotations=_value(b.annotations))
            for b in manifest.bindings
        ],
    )
    if manifest.entrypoint is not None:
        message.entrypoint = manifest.entrypoint
    return message


def struct(data: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if isinstance(data, dict):
        message.update(data)
    return message


def _value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if data is None:
        value.null_value = struct_pb2.NULL_VALUE
    else:
        holder = struct_pb2.Struct()
        holder.update({"v": data})
        value.CopyFrom(holder.fields["v"])
    return value
