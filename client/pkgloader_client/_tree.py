"""What both clients share for LoadTree: the request, and the receiver that checks the stream.

The receiver takes the stream's items one at a time: the `package` first, then each announced
atom once, its chunks in order. Each atom is counted and hashed as it arrives and must match the
size and sha256 its commands announced (`TransferError` otherwise). Atoms go to memory, or, with
a folder, each to `<sha256>.wasm` there through `AtomicFile`, so a file appears whole and
verified or not at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from pkgloader_client._config import _HASH_VALIDATION, AtomicFile, HashValidation, PathLike
from pkgloader_client._errors import InternalError, InvalidArgument, TransferError
from pkgloader_client._generated.pkgloader.v1 import package_loader_pb2 as pb
from pkgloader_client._models import PackageTree, Resolution

#: Called with (atom bytes received, atom bytes announced) once the tree arrives and after each
#: atom chunk.
TreeProgress = Callable[[int, int], None]

#: A resolution to send back: what `resolve()` returned, the message, or its proto3 JSON form
#: (what grpcurl printed for Resolve, or its `resolution` field) as a dict.
ResolutionLike = Resolution | pb.Resolution | Mapping[str, Any]


def tree_request(
    specifier: str | None,
    *,
    url: str | None,
    sha256: str | None,
    package_id: str | None,
    size: int | None,
    resolution: ResolutionLike | None,
    include_atoms: bool,
    hash_validation: HashValidation | None,
) -> pb.LoadTreeRequest:
    if (specifier is None) == (url is None):
        raise InvalidArgument(
            "give either a specifier or a package's url (with its sha256)",
            code=grpc.StatusCode.INVALID_ARGUMENT,
        )
    if url is not None and not sha256:
        raise InvalidArgument(
            "a package url needs its sha256", code=grpc.StatusCode.INVALID_ARGUMENT
        )
    if hash_validation not in _HASH_VALIDATION:
        raise InvalidArgument(
            f"hash_validation must be one of none, warn, fail, got {hash_validation!r}",
            code=grpc.StatusCode.INVALID_ARGUMENT,
        )
    request = pb.LoadTreeRequest(
        include_atoms=include_atoms, hash_validation=_HASH_VALIDATION[hash_validation]
    )
    if specifier is not None:
        request.specifier = specifier
    else:
        request.summary.package_id = package_id or ""
        request.summary.dist.webc_url = url or ""
        request.summary.dist.webc_sha256 = sha256 or ""
        if size is not None:
            request.summary.dist.webc_size = size
    if resolution is not None:
        if isinstance(resolution, Resolution):
            request.resolution.CopyFrom(resolution.message)
        elif isinstance(resolution, pb.Resolution):
            request.resolution.CopyFrom(resolution)
        else:
            try:
                json_format.ParseDict(dict(resolution), request.resolution)
            except json_format.ParseError as exc:
                raise InvalidArgument(
                    f"not a Resolution: {exc}", code=grpc.StatusCode.INVALID_ARGUMENT
                ) from None
    return request


class TreeReceiver:
    """Checks and collects one LoadTree stream; `discard` after any failure."""

    def __init__(self, *, atoms_dir: PathLike | None, progress: TreeProgress | None = None) -> None:
        self._dir = None if atoms_dir is None else Path(atoms_dir)
        self._progress = progress
        self.tree: pb.BinaryPackage | None = None
        self._sizes: dict[str, int] = {}
        self._done: set[str] = set()
        self._current: str | None = None
        self._received = 0  # of the current atom
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._file: AtomicFile | None = None
        self._total = 0
        self._total_received = 0
        self.atoms: dict[str, bytes] = {}
        self.atom_files: dict[str, str] = {}

    def first(self, response: pb.LoadTreeResponse | None) -> None:
        if response is None or response.WhichOneof("item") != "package":
            raise InternalError("the LoadTree stream did not start with the package")
        self.tree = response.package
        self._sizes = {c.atom_sha256: c.atom_size for c in self.tree.commands}
        self._total = sum(self._sizes.values())
        if self._progress is not None:
            self._progress(0, self._total)

    def item(self, response: pb.LoadTreeResponse) -> None:
        if response.WhichOneof("item") != "atom":
            raise InternalError("the LoadTree stream sent a second package item")
        chunk = response.atom
        if chunk.atom_sha256 != self._current:
            self._end_atom()
            if chunk.atom_sha256 not in self._sizes or chunk.atom_sha256 in self._done:
                raise TransferError(
                    f"the server sent atom {chunk.atom_sha256[:16]}… that no command runs, "
                    "or sent it twice",
                    code=grpc.StatusCode.DATA_LOSS,
                )
            self._current = chunk.atom_sha256
            self._received, self._hash = 0, hashlib.sha256()
            if self._dir is not None:
                self._file = AtomicFile(self._dir / f"{chunk.atom_sha256}.wasm")
        if chunk.offset != self._received:
            raise TransferError(
                f"atom {chunk.atom_sha256[:16]}…: a chunk at offset {chunk.offset}, expected "
                f"{self._received}",
                code=grpc.StatusCode.DATA_LOSS,
            )
        data = chunk.data
        self._received += len(data)
        self._total_received += len(data)
        if self._file is not None:
            self._file.write(data)
        else:
            self._hash.update(data)
            self._buffer += data
        if self._progress is not None:
            self._progress(self._total_received, self._total)

    def _end_atom(self) -> None:
        sha = self._current
        if sha is None:
            return
        self._current = None
        size = self._sizes[sha]
        if self._file is not None:
            target, self._file = self._file, None
            try:
                target.commit(size, sha)
            except BaseException:
                target.discard()
                raise
            self.atom_files[sha] = str(target.target)
        else:
            actual, data = self._hash.hexdigest(), bytes(self._buffer)
            self._buffer = bytearray()
            if len(data) != size or actual != sha:
                raise TransferError(
                    f"atom {sha[:16]}…: received {len(data)} bytes hashing to {actual}, the "
                    f"server announced {size} bytes hashing to {sha}",
                    code=grpc.StatusCode.DATA_LOSS,
                )
            self.atoms[sha] = data
        self._done.add(sha)

    def finish(self, include_atoms: bool) -> PackageTree:
        self._end_atom()
        assert self.tree is not None
        missing = set(self._sizes) - self._done
        if include_atoms and missing:
            raise TransferError(
                f"the stream ended without {len(missing)} of the tree's atoms",
                code=grpc.StatusCode.DATA_LOSS,
            )
        return PackageTree.from_proto(self.tree, atoms=self.atoms, atom_files=self.atom_files)

    def discard(self) -> None:
        if self._file is not None:
            self._file.discard()
            self._file = None
