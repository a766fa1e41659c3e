"""`PackageLoaderClient`: the blocking client."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from types import TracebackType
from typing import Any, BinaryIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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

#: Called with (bytes received, package size) once the metadata arrives and after every chunk.
Progress = Callable[[int, int], None]


@contextmanager
def _translated() -> Iterator[None]:
    """Turn a failed call into the client's exception tree; the one place this happens."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc


def _first_package(responses: Iterator[pb.LoadResponse]) -> pb.Package:
    first = next(responses, None)
    if first is None or first.WhichOneof("item") != "package":
        raise InternalError("the Load stream did not start with the package metadata")
    return first.package


def _chunks(responses: Iterator[pb.LoadResponse]) -> Iterator[bytes]:
    for response in responses:
        if response.WhichOneof("item") != "chunk":
            raise InternalError("the Load stream sent a second package item")
        yield response.chunk


class PackageLoaderClient:
    """A blocking client of the pkgloader service; close it, or use it as a context manager.

    Every call has a deadline (`timeout`, or `load_timeout` for loads; each call can override it)
    and raises a subclass of `PkgloaderError` on failure. TLS is used when `tls=True` or any TLS
    file is given; `token` is sent as `authorization: Bearer <token>` with every call.
    Pass `channel` to use a channel you own (the client then never closes it).
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
        channel: grpc.Channel | None = None,
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
        self.channel: grpc.Channel = channel or self._connection.channel()
        self.stub = PackageLoaderServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout
        self.load_timeout = load_timeout

    @property
    def target(self) -> str:
        return self._connection.target

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> PackageLoaderClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call_args(self, timeout: float | None, default: float) -> dict[str, Any]:
        return {
            "timeout": default if timeout is None else timeout,
            "metadata": self._connection.metadata,
        }

    def load(
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
        """Load a package; with `include_content`, its bytes come in `Package.content`.

        The content is held in memory: for large packages prefer `load_to`.
        """
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
            responses = iter(call)
            package = _first_package(responses)
            content = b"".join(_chunks(responses))
        return Package.from_proto(package, content if include_content else None)

    def load_to(
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
        """Stream a package into `path`, atomically: the file appears complete and verified, or
        not at all (and an existing file is left as it was)."""
        request = load_request(
            url,
            sha256,
            package_id=package_id,
            include_content=True,
            hash_validation=hash_validation,
            size=size,
        )
        target = AtomicFile(path)
        call = None
        try:
            with _translated():
                call = self.stub.Load(request, **self._call_args(timeout, self.load_timeout))
                responses = iter(call)
                package = _first_package(responses)
                if progress is not None:
                    progress(0, package.size)
                for chunk in _chunks(responses):
                    target.write(chunk)
                    if progress is not None:
                        progress(target.received, package.size)
            target.commit(package.size, package.webc_sha256)
        except BaseException:
            target.discard()
            if call is not None:
                call.cancel()  # type: ignore[no-untyped-call]  # a no-op once the call ended
            raise
        return Package.from_proto(package)

    def scan(self, *, batch_size: int = 0, timeout: float | None = None) -> list[CacheEntry]:
        """Every file of the server's disk cache."""
        with _translated():
            return entries(
                self.stub.Scan(
                    pb.ScanRequest(batch_size=batch_size), **self._call_args(timeout, self.timeout)
                )
            )

    def retain(
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
            return RetainResult.from_proto(
                self.stub.Retain(request, **self._call_args(timeout, self.timeout))
            )

    def evict(
        self,
        hashes: Iterable[str],
        *,
        delete_files: bool = False,
        timeout: float | None = None,
    ) -> EvictResult:
        """Drop packages from the answering replica's memory cache; optionally delete the files."""
        request = evict_request(hashes, delete_files=delete_files)
        with _translated():
            return EvictResult.from_proto(
                self.stub.Evict(request, **self._call_args(timeout, self.timeout))
            )

    def validate_cache(
        self, *, prune: bool = False, deep: bool = False, timeout: float | None = None
    ) -> ValidationReport:
        """Re-hash every cache file; `prune` deletes the bad ones, `deep` also parses packages."""
        request = validate_request(prune=prune, deep=deep)
        with _translated():
            return ValidationReport.from_proto(
                self.stub.ValidateCache(request, **self._call_args(timeout, self.timeout))
            )

    def resolve(self, specifier: str, *, timeout: float | None = None) -> Resolution:
        """Resolve `namespace/name@requirement`, a URL or `sha256:<hex>` and its dependencies."""
        request = pb.ResolveRequest(specifier=specifier)
        with _translated():
            return Resolution.from_proto(
                self.stub.Resolve(request, **self._call_args(timeout, self.timeout))
            )

    def health(self, service: str = SERVICE_NAME, *, timeout: float | None = None) -> ServingStatus:
        """The grpc.health.v1 status of `service` ("" for the server as a whole)."""
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = self._health.Check(request, **self._call_args(timeout, self.timeout))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return ServingStatus.SERVICE_UNKNOWN
            raise from_rpc_error(exc) from exc
        return ServingStatus(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # -- contents: GetAtom, ReadFile, ListDirectory ------------------------------------------

    def get_atom(
        self,
        sha256: str,
        name: str,
        *,
        url: str | None = None,
        package_id: str | None = None,
        timeout: float | None = None,
    ) -> Content:
        """One atom of a package, in memory, checked against the sha256 the server announced.
        The package must be cached on the server, or `url` says where to load it from."""
        request = get_atom_request(sha256, name, url=url, package_id=package_id)
        sink = ContentSink()
        info = self._receive(self.stub.GetAtom, request, sink, timeout, None)
        return Content(info, sink.data)

    def get_atom_to(
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
        """Stream an atom into `target`: a path (written atomically, as `load_to` does) or an
        open binary file (such as stdout)."""
        request = get_atom_request(sha256, name, url=url, package_id=package_id)
        return self._receive(self.stub.GetAtom, request, _sink(target), timeout, progress)

    def read_file(
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
        info = self._receive(self.stub.ReadFile, request, sink, timeout, None)
        return Content(info, sink.data)

    def read_file_to(
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
        return self._receive(self.stub.ReadFile, request, _sink(target), timeout, progress)

    def list_directory(
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
            return Listing.from_proto(
                self.stub.ListDirectory(request, **self._call_args(timeout, default))
            )

    def _receive(
        self,
        method: Any,
        request: Any,
        sink: ContentSink | AtomicFile,
        timeout: float | None,
        progress: Progress | None,
    ) -> ContentInfo:
        """Run a GetAtom/ReadFile stream into `sink`; check what arrived against its `info`."""
        call = None
        try:
            with _translated():
                # The load deadline: the stream may wait for a download, and an atom is large.
                call = method(request, **self._call_args(timeout, self.load_timeout))
                responses = iter(call)
                first = next(responses, None)
                if first is None or first.WhichOneof("item") != "info":
                    raise InternalError("the stream did not start with the content info")
                info = first.info
                if progress is not None:
                    progress(0, info.size)
                for response in responses:
                    if response.WhichOneof("item") != "chunk":
                        raise InternalError("the stream sent a second info item")
                    sink.write(response.chunk)
                    if progress is not None:
                        progress(sink.received, info.size)
            sink.commit(info.size, info.sha256)
        except BaseException:
            sink.discard()
            if call is not None:
                call.cancel()  # a no-op once the call ended
            raise
        return ContentInfo.from_proto(info)

    def load_tree(
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
        """Everything needed to run a package (LoadTree): its commands, the atom each runs, its
        mounts. The root is a `specifier`, or a package's `url` and `sha256`; `resolution` (a
        `Resolve` answer, as a message or its JSON dict) is used instead of resolving.

        With `include_atoms` the atoms come in `PackageTree.atoms` (in memory); with `atoms_dir`
        too, each is saved there as `<sha256>.wasm`, atomically and verified, and listed in
        `PackageTree.atom_files`.
        """
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
                responses = iter(call)
                receiver.first(next(responses, None))
                for response in responses:
                    receiver.item(response)
            return receiver.finish(request.include_atoms)
        except BaseException:
            receiver.discard()
            if call is not None:
                call.cancel()  # type: ignore[no-untyped-call]  # a no-op once the call ended
            raise


def _sink(target: PathLike | BinaryIO) -> ContentSink | AtomicFile:
    if isinstance(target, str | os.PathLike):
        return AtomicFile(target)
    return ContentSink(target)
