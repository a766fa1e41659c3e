"""What both clients share: channel options, credentials, call metadata, request building, and the
atomic file that `load_to` streams into."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, Literal

import grpc

from pkgloader_client._errors import InvalidArgument, TransferError
from pkgloader_client._generated.pkgloader.v1 import package_loader_pb2 as pb
from pkgloader_client._version import __version__

#: The fully qualified service name, as used by reflection and health checking.
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["PackageLoaderService"].full_name
DEFAULT_TARGET = "127.0.0.1:50051"
#: Deadline of the small RPCs, seconds. A cache scan or a validation of a large cache takes
#: longer: pass `timeout=` per call.
DEFAULT_TIMEOUT = 60.0
#: Deadline of a Load, seconds: the server's own download deadline (900 s) plus streaming time.
DEFAULT_LOAD_TIMEOUT = 1200.0
#: Messages are at most a 1 MiB chunk plus framing, but a package's metadata (a manifest with
#: large annotations) and a Retain listing a whole cache are not bounded by that; 64 MiB is far
#: beyond both and still bounds what a broken peer can make us allocate.
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.primary_user_agent", f"pkgloader-client/{__version__}"),
)

HashValidation = Literal["none", "warn", "fail"]
_HASH_VALIDATION = {
    None: pb.HASH_VALIDATION_UNSPECIFIED,
    "none": pb.HASH_VALIDATION_NONE,
    "warn": pb.HASH_VALIDATION_WARN,
    "fail": pb.HASH_VALIDATION_FAIL,
}

PathLike = str | os.PathLike[str]


def _read(value: bytes | PathLike | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class Connection:
    """Where and how to connect: target, credentials, options, metadata sent with every call."""

    target: str = DEFAULT_TARGET
    token: str | None = None
    tls: bool = False
    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    options: tuple[tuple[str, Any], ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()

    @classmethod
    def create(
        cls,
        target: str,
        *,
        token: str | None,
        tls: bool | None,
        tls_ca: bytes | PathLike | None,
        tls_cert: bytes | PathLike | None,
        tls_key: bytes | PathLike | None,
        options: Sequence[tuple[str, Any]],
        metadata: Sequence[tuple[str, str]],
    ) -> Connection:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("a client certificate needs both tls_cert and tls_key")
        use_tls = bool(tls) or any(v is not None for v in (tls_ca, tls_cert))
        if tls is False and use_tls:
            raise ValueError("tls=False contradicts the TLS files given")
        extra: list[tuple[str, str]] = list(metadata)
        if token:
            # Sent as plain metadata rather than call credentials: grpc refuses call credentials
            # on insecure channels, and a token to a sidecar or mesh over loopback is a real case.
            extra.append(("authorization", f"Bearer {token}"))
        return cls(
            target=target,
            token=token,
            tls=use_tls,
            tls_ca=_read(tls_ca),
            tls_cert=_read(tls_cert),
            tls_key=_read(tls_key),
            # Later options win in grpc, so the caller's options override ours.
            options=(*CHANNEL_OPTIONS, *options),
            metadata=tuple(extra),
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca,
            private_key=self.tls_key,
            certificate_chain=self.tls_cert,
        )

    def channel(self) -> grpc.Channel:
        if self.tls:
            return grpc.secure_channel(self.target, self.credentials(), options=self.options)
        return grpc.insecure_channel(self.target, options=self.options)

    def aio_channel(self) -> grpc.aio.Channel:
        if self.tls:
            return grpc.aio.secure_channel(self.target, self.credentials(), options=self.options)
        return grpc.aio.insecure_channel(self.target, options=self.options)


def load_request(
    url: str,
    sha256: str,
    *,
    package_id: str | None,
    include_content: bool,
    hash_validation: HashValidation | None,
    size: int | None,
) -> pb.LoadRequest:
    if hash_validation not in _HASH_VALIDATION:
        raise InvalidArgument(
            f"hash_validation must be one of none, warn, fail, got {hash_validation!r}",
            code=grpc.StatusCode.INVALID_ARGUMENT,
        )
    dist = pb.DistributionInfo(webc_url=url, webc_sha256=sha256)
    if size is not None:
        dist.webc_size = size
    return pb.LoadRequest(
        summary=pb.PackageSummary(package_id=package_id or "", dist=dist),
        hash_validation=_HASH_VALIDATION[hash_validation],
        include_content=include_content,
    )


def retain_request(
    *,
    keep: Iterable[str],
    remove: Iterable[str],
    unused_for: float | timedelta | None,
    max_total_bytes: int | None,
    dry_run: bool,
) -> pb.RetainRequest:
    request = pb.RetainRequest(keep_sha256=list(keep), remove_sha256=list(remove), dry_run=dry_run)
    if unused_for is not None:
        if not isinstance(unused_for, timedelta):
            unused_for = timedelta(seconds=unused_for)
        request.unused_for.FromTimedelta(unused_for)
    if max_total_bytes is not None:
        request.max_total_bytes = max_total_bytes
    return request


def evict_request(hashes: Iterable[str], *, delete_files: bool) -> pb.EvictRequest:
    if isinstance(hashes, str):
        hashes = [hashes]  # one hash is a common call; iterating its characters never is
    return pb.EvictRequest(
        webc_sha256=list(hashes),
        scope=pb.EVICT_SCOPE_ALL if delete_files else pb.EVICT_SCOPE_MEMORY,
    )


def validate_request(*, prune: bool, deep: bool) -> pb.ValidateCacheRequest:
    return pb.ValidateCacheRequest(
        mode=pb.CACHE_VALIDATION_PRUNE if prune else pb.CACHE_VALIDATION_WARN, deep=deep
    )


def _check_received(received: int, actual: str, size: int, sha256: str, what: str) -> None:
    """DATA_LOSS unless `received` bytes hashing to `actual` are the `size` bytes of sha256
    `sha256` the server announced (`what`: "package" or "content", for the message)."""
    if received != size:
        raise TransferError(
            f"received {received} bytes of a {size}-byte {what}",
            code=grpc.StatusCode.DATA_LOSS,
            metadata={"expected_size": str(size), "actual_size": str(received)},
        )
    if actual != sha256.lower():
        raise TransferError(
            f"received bytes hash to {actual}, the server announced {sha256.lower()}",
            code=grpc.StatusCode.DATA_LOSS,
            metadata={"expected_sha256": sha256.lower(), "actual_sha256": actual},
        )


class AtomicFile:
    """A download target that appears whole or not at all.

    Bytes go to a unique temp file in the target's own folder (so the final rename stays on one
    file system and is atomic), counted and hashed as they arrive. `commit` checks them against
    the package's size and sha256, fsyncs, renames over the target and fsyncs the folder;
    `discard` removes the temp file. Whatever fails, the target is never left half-written.
    """

    def __init__(self, target: PathLike) -> None:
        self.target = Path(target)
        folder = self.target.parent
        fd, name = tempfile.mkstemp(dir=folder, prefix=f".{self.target.name}.", suffix=".part")
        self.temp = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.received = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self.received += len(chunk)

    def commit(self, size: int, sha256: str) -> None:
        _check_received(self.received, self._hash.hexdigest(), size, sha256, "package")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.temp, self.target)
        # The rename is durable only once the folder's entry is on disk too.
        folder = os.open(self.target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def discard(self) -> None:
        self._file.close()
        self.temp.unlink(missing_ok=True)


# -- contents calls (GetAtom, ReadFile, ListDirectory) ------------------------------------------


def _summary(url: str | None, sha256: str, package_id: str | None) -> pb.PackageSummary | None:
    """A summary to load the package from when it is not cached (only with a URL)."""
    if url is None:
        return None
    return pb.PackageSummary(
        package_id=package_id or "", dist=pb.DistributionInfo(webc_url=url, webc_sha256=sha256)
    )


def get_atom_request(
    sha256: str, name: str, *, url: str | None, package_id: str | None
) -> pb.GetAtomRequest:
    return pb.GetAtomRequest(
        webc_sha256=sha256, atom_name=name, summary=_summary(url, sha256, package_id)
    )


def read_file_request(
    sha256: str, volume: str, path: str, *, url: str | None, package_id: str | None
) -> pb.ReadFileRequest:
    return pb.ReadFileRequest(
        webc_sha256=sha256, volume=volume, path=path, summary=_summary(url, sha256, package_id)
    )


def list_directory_request(
    sha256: str,
    volume: str,
    path: str,
    *,
    recursive: bool,
    url: str | None,
    package_id: str | None,
) -> pb.ListDirectoryRequest:
    return pb.ListDirectoryRequest(
        webc_sha256=sha256,
        volume=volume,
        path=path,
        recursive=recursive,
        summary=_summary(url, sha256, package_id),
    )


class ContentSink:
    """Where an atom or file goes as it arrives: kept in memory (`file=None`) or written to an
    open binary file (stdout), counted and hashed; `commit` checks size and sha256 against what
    the server announced. (A named file goes through `AtomicFile`, which does the same.)"""

    def __init__(self, file: BinaryIO | None = None) -> None:
        self._file = file
        self._parts: list[bytes] = []
        self._hash = hashlib.sha256()
        self.received = 0

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            self._parts.append(chunk)
        else:
            self._file.write(chunk)
        self._hash.update(chunk)
        self.received += len(chunk)

    @property
    def in_memory(self) -> bool:
        return self._file is None

    @property
    def data(self) -> bytes:
        return b"".join(self._parts)

    def commit(self, size: int, sha256: str) -> None:
        _check_received(self.received, self._hash.hexdigest(), size, sha256, "content")
        if self._file is not None:
            self._file.flush()

    def discard(self) -> None:
        self._parts.clear()
