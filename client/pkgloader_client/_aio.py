"""`AsyncPackageLoaderClient`: the asyncio client (grpc.aio), the same calls as the blocking one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, BinaryIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pkgloader_client._client import Progress, _sink, _translated
from pkgloader_client._config import (
    DEFAULT_LOAD_TIMEOUT,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    SERVICE_NAME,
    AtomicFile,
    Connection,
    ContentSink,
    HashValidation,
    PathLike,
    evict_request,
    get_atom_request,
    list_directory_request,
    load_request,
    read_file_request,
    retain_request,
    validate_request,
)
from pkgloader_client._errors import InternalError, from_rpc_error
from pkgloader_client._generated.pkgloader.v1 import package_loader_pb2 as pb
from pkgloader_client._generated.pkgloader.v1.package_loader_pb2_grpc import (
    PackageLoaderServiceStub,
)
from pkgloader_client._models import (
    CacheEntry,
    Content,
    ContentInfo,
    EvictResult,
    Listing,
    Package,
    PackageTree,
    Resolution,
    RetainResult,
    ServingStatus,
    ValidationReport,
    entries,
)
from pkgloader_client._tree import ResolutionLike, TreeProgress, TreeReceiver, tree_request

# grpc.aio.EOF: what read() returns at the end of a stream (missing from grpc-stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


async def _first_package(call: Any) -> pb.Package:
    first = await call.read()
    if first is _EOF or first.WhichOneof("item") != "package":
        raise InternalError("the Load stream did not start with the package metadata")
    package: pb.Package = first.package
    return package


async def _chunks(call: Any) -> AsyncIterator[bytes]:
    while (response := await call.read()) is not _EOF:
        if response.WhichOneof("item") != "chunk":
            raise InternalError("the Load stream sent a second package item")
        yield response.chunk


class AsyncPackageLoaderClient:
    """An asyncio client of the pkgloader service; `await close()`, or use `async with`.

    Same options, calls and errors as `PackageLoaderClient`; `channel` takes a `grpc.aio.Channel`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: bool | None = None,
        tls_ca: bytes | PathLike | None = None,
        tls_cert: bytes | PathLike | None = None,
        tls_key: bytes | PathLike | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        load_timeout: float = DEFAULT_LOAD_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
        metadata: Sequence[tuple[str, str]] = (),
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._connection = Connection.create(
            target,
            token=token,
            tls=tls,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            options=options,
            metadata=metadata,
        )
        self._owns_channel = channel is None
        self.channel: grpc.aio.Channel = channel or self._connection.aio_channel()
        self.stub: Any = PackageLoaderServiceStub(self.channel)
        self._health: Any = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout
        self.load_timeout = load_timeout

    @property
    def target(self) -> str:
        return self._connection.target

    async def close(self) -> None:
        if self._owns_channel:
            await self.channel.close(None)

    async def __aenter__(self) -> AsyncPackageLoaderClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _call_args(self, timeout: float | None, default: float) -> dict[str, Any]:
        return {
            "timeout": default if timeout is None else timeout,
            "metadata": self._connection.metadata,
        }

    async def load(
        self,
        url: str,
        sha256: str,
        *,
        package_id: str | None = None,
        include_content: bool = False,
        hash_validation: HashValidation | None = None,
        size: int | None = None,
        timeout: float | None = None,
    ) -> Package:
        """Load a package; with `include_content`, its bytes come in `Package.content`."""
        request = load_request(
            url,
            sha256,
            package_id=package_id,
            include_content=include_content,
            hash_validation=hash_validation,
            size=size,
        )
        with _translated():
            call = self.stub.Load(request, **self._call_args(timeout, self.load_timeout))
            package = await _first_package(call)
            content = b"".join([chunk async for chunk in _chunks(call)])
        return Package.from_proto(package, content if include_content else None)

    async def load_to(
        self,
        path: PathLike,
        url: str,
        sha256: str,
        *,
        package_id: str | None = None,
        hash_validation: HashValidation | None = None,
        size: int | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> Package:
        """Stream a package into `path` atomically (see `PackageLoaderClient.load_to`)."""
        request = load_request(
            url,
            sha256,
            package_id=package_id,
            include_content=True,
            hash_validation=hash_validation,
            size=size,
        )
        target = await asyncio.to_thread(AtomicFile, path)
        call = None
        try:
            with _translated():
                call = self.stub.Load(request, **self._call_args(timeout, self.load_timeout))
                package = await _first_package(call)
                if progress is not None:
                    progress(0, package.size)
                async for chunk in _chunks(call):
                    # File I/O off the event loop: a 1 MiB write can block on a slow disk.
                    await asyncio.to_thread(target.write, chunk)
                    if progress is not None:
                        progress(target.received, package.size)
            await asyncio.to_thread(target.commit, package.size, package.webc_sha256)
        except BaseException:
            target.discard()
            if call is not None:
                call.cancel()
            raise
        return Package.from_proto(package)

    async def scan(self, *, batch_size: int = 0, timeout: float | None = None) -> list[CacheEntry]:
        """Every file of the server's disk cache."""
        with _translated():
            call = self.stub.Scan(
                pb.ScanRequest(batch_size=batch_size), **self._call_args(timeout, self.timeout)
            )
            return entries([batch async for batch in call])

    async def retain(
        self,
        *,
        keep: Iterable[str] = (),
        remove: Iterable[str] = (),
        unused_for: float | timedelta | None = None,
        max_total_bytes: int | None = None,
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> RetainResult:
        """Remove cache files by criteria (see `RetainRequest`); no criteria removes nothing."""
        request = retain_request(
            keep=keep,
            remove=remove,
            unused_for=unused_for,
            max_total_bytes=max_total_bytes,
            dry_run=dry_run,
        )
        with _translated():
            response = await self.stub.Retain(request, **self._call_args(timeout, self.timeout))
        return RetainResult.from_proto(response)

    async def evict(
        self,
        hashes: Iterable[str],
        *,
        delete_files: bool = False,
        timeout: float | None = None,
    ) -> EvictResult:
        """Drop packages from the answering replica's memory cache; optionally delete the files."""
        request = evict_request(hashes, delete_files=delete_files)
        with _translated():
            response = await self.stub.Evict(request, **self._call_args(timeout, self.timeout))
        return EvictResult.from_proto(response)

    async def validate_cache(
        self, *, prune: bool = False, deep: bool = False, timeout: float | None = None
    ) -> ValidationReport:
        """Re-hash every cache file; `prune` deletes the bad ones, `deep` also parses packages."""
        request = validate_request(prune=prune, deep=deep)
        with _translated():
            response = await self.stub.ValidateCache(
                request, **self._call_args(timeout, self.timeout)
            )
        return ValidationReport.from_proto(response)

    async def resolve(self, specifier: str, *, timeout: float | None = None) -> Resolution:
        """Resolve `namespace/name@requirement`, a URL or `sha256:<hex>` and its dependencies."""
        request = pb.ResolveRequest(specifier=specifier)
        with _translated():
            response = await self.stub.Resolve(request, **self._call_args(timeout, self.timeout))
        return Resolution.from_proto(response)

    async def health(
        self, service: str = SERVICE_NAME, *, timeout: float | None = None
    ) -> ServingStatus:
        """The grpc.health.v1 status of `service` ("" for the server as a whole)."""
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = await self._health.Check(request, **self._call_args(timeout, self.timeout))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return ServingStatus.SERVICE_UNKNOWN
            raise from_rpc_error(exc) from exc
        return ServingStatus(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # -- contents: GetAtom, ReadFile, ListDirectory ------------------------------------------

    async def get_atom(
        self,
        sha256: str,
        name: str,
        *,
        url: str | None = None,
        package_id: str | None = None,
        timeout: float | None = None,
    ) -> Content:
        """One atom of a package, in memory (see `PackageLoaderClient.get_atom`)."""
        request = get_atom_request(sha256, name, url=url, package_id=package_id)
        sink = ContentSink()
        info = await self._receive(self.stub.GetAtom, request, sink, timeout, None)
        return Content(info, sink.data)

    async def get_atom_to(
        self,
        target: PathLike | BinaryIO,
        sha256: str,
        name: str,
        *,
        url: str | None = None,
        package_id: str | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> ContentInfo:
        """Stream an atom into `target`: a path (written atomically) or an open binary file."""
        request = get_atom_request(sha256, name, url=url, package_id=package_id)
        sink = await asyncio.to_thread(_sink, target)
        return await self._receive(self.stub.GetAtom, request, sink, timeout, progress)

    async def read_file(
        self,
        sha256: str,
        volume: str,
        path: str,
        *,
        url: str | None = None,
        package_id: str | None = None,
        timeout: float | None = None,
    ) -> Content:
        """One file of a package's volume, in memory (`path` from the volume's root)."""
        request = read_file_request(sha256, volume, path, url=url, package_id=package_id)
        sink = ContentSink()
        info = await self._receive(self.stub.ReadFile, request, sink, timeout, None)
        return Content(info, sink.data)

    async def read_file_to(
        self,
        target: PathLike | BinaryIO,
        sha256: str,
        volume: str,
        path: str,
        *,
        url: str | None = None,
        package_id: str | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> ContentInfo:
        """Stream a file into `target` (a path, written atomically, or an open binary file)."""
        request = read_file_request(sha256, volume, path, url=url, package_id=package_id)
        sink = await asyncio.to_thread(_sink, target)
        return await self._receive(self.stub.ReadFile, request, sink, timeout, progress)

    async def list_directory(
        self,
        sha256: str,
        volume: str,
        path: str = "/",
        *,
        recursive: bool = False,
        url: str | None = None,
        package_id: str | None = None,
        timeout: float | None = None,
    ) -> Listing:
        """The entries of a directory of a volume (with `recursive`, of its whole subtree)."""
        request = list_directory_request(
            sha256, volume, path, recursive=recursive, url=url, package_id=package_id
        )
        default = self.timeout if url is None else self.load_timeout
        with _translated():
            response = await self.stub.ListDirectory(request, **self._call_args(timeout, default))
        return Listing.from_proto(response)

    async def _receive(
        self,
        method: Any,
        request: Any,
        sink: ContentSink | AtomicFile,
        timeout: float | None,
        progress: Progress | None,
    ) -> ContentInfo:
        """Run a GetAtom/ReadFile stream into `sink`; check what arrived against its `info`."""
        call = None
        in_memory = isinstance(sink, ContentSink) and sink.in_memory
        try:
            with _translated():
                call = method(request, **self._call_args(timeout, self.load_timeout))
                first = await call.read()
                if first is _EOF or first.WhichOneof("item") != "info":
                    raise InternalError("the stream did not start with the content info")
                info = first.info
                if progress is not None:
                    progress(0, info.size)
                while (response := await call.read()) is not _EOF:
                    if response.WhichOneof("item") != "chunk":
                        raise InternalError("the stream sent a second info item")
                    if in_memory:
                        sink.write(response.chunk)
                    else:
                        # File I/O off the event loop: a 1 MiB write can block on a slow disk.
                        await asyncio.to_thread(sink.write, response.chunk)
                    if progress is not None:
                        progress(sink.received, info.size)
            await asyncio.to_thread(sink.commit, info.size, info.sha256)
        except BaseException:
            sink.discard()
            if call is not None:
                call.cancel()
            raise
        return ContentInfo.from_proto(info)

    async def load_tree(
        self,
        specifier: str | None = None,
        *,
        url: str | None = None,
        sha256: str | None = None,
        package_id: str | None = None,
        size: int | None = None,
        resolution: ResolutionLike | None = None,
        include_atoms: bool = False,
        atoms_dir: PathLike | None = None,
        hash_validation: HashValidation | None = None,
        timeout: float | None = None,
        progress: TreeProgress | None = None,
    ) -> PackageTree:
        """Everything needed to run a package (see `PackageLoaderClient.load_tree`)."""
        request = tree_request(
            specifier,
            url=url,
            sha256=sha256,
            package_id=package_id,
            size=size,
            resolution=resolution,
            include_atoms=include_atoms or atoms_dir is not None,
            hash_validation=hash_validation,
        )
        receiver = TreeReceiver(atoms_dir=atoms_dir, progress=progress)
        call = None
        try:
            with _translated():
                call = self.stub.LoadTree(request, **self._call_args(timeout, self.load_timeout))
                first = await call.read()
                receiver.first(None if first is _EOF else first)
                while (response := await call.read()) is not _EOF:
                    if atoms_dir is None:
                        receiver.item(response)
                    else:
                        # File I/O off the event loop: a 1 MiB write can block on a slow disk.
                        await asyncio.to_thread(receiver.item, response)
            if atoms_dir is None:
                return receiver.finish(request.include_atoms)
            return await asyncio.to_thread(receiver.finish, request.include_atoms)
        except BaseException:
            receiver.discard()
            if call is not None:
                call.cancel()
            raise
