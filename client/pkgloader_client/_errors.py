"""The client's exception tree, built from the status code and the server's `ErrorInfo` reason.

    PkgloaderError                     base: .code, .reason, .message, .metadata
    ├── InvalidArgument                INVALID_ARGUMENT, INVALID_SHA256, INVALID_URL, INVALID_PATH
    ├── PermissionDenied               ACCESS_DENIED, FILE_OUTSIDE_ROOTS
    ├── Unauthenticated                no or a bad token (said by a gateway in front of the service)
    ├── NoDiskCache                    a cache RPC on a server without a disk cache
    ├── FetchError                     FETCH_FAILED: getting the bytes from upstream failed
    │   ├── PackageNotFound            UPSTREAM_NOT_FOUND (404/410, or a missing file:// file)
    │   ├── UpstreamRejected           UPSTREAM_REJECTED (any other 4xx)
    │   ├── UpstreamUnavailable        UPSTREAM_UNAVAILABLE (5xx, connection failure, timeout)
    │   └── ContentDecodingError       CONTENT_DECODING
    ├── HashMismatch                   HASH_MISMATCH: .expected_sha256, .actual_sha256
    │   └── ContentHashMismatch        CONTENT_HASH_MISMATCH: an atom or file is corrupt
    ├── NotFound                       NOT_FOUND: a content of a package is not there
    │   ├── PackageNotCached           PACKAGE_NOT_CACHED (and no summary to load it from)
    │   ├── AtomNotFound               ATOM_NOT_FOUND
    │   ├── VolumeNotFound             VOLUME_NOT_FOUND
    │   └── PathNotFound               PATH_NOT_FOUND
    ├── InvalidPackage                 INVALID_PACKAGE: the bytes are not a package that parses
    ├── ResourceExhausted              RESOURCE_EXHAUSTED, TOO_MANY_STREAMS, RESPONSE_TOO_LARGE
    │   ├── PackageTooLarge            PACKAGE_TOO_LARGE
    │   └── CacheFull                  CACHE_FULL
    ├── Cancelled                      the call was cancelled (SEND_STALLED, STREAM_IDLE: by
    │                                  the server)
    ├── DeadlineExceeded               the call's deadline passed
    ├── ServiceUnavailable             the server cannot be reached (UNAVAILABLE, no ErrorInfo),
    │                                  or CACHE_BUSY: another replica is still downloading it,
    │                                  or CACHE_FILE_CHANGED: a cached file changed under the read
    ├── InternalError                  INTERNAL, CACHE_ERROR, PUBLISH_REFUSED, UNKNOWN and any
    │                                  code without a better class
    ├── ResolveError                   RESOLVE_FAILED: a specifier did not resolve
    │   ├── InvalidSpecifier           INVALID_SPECIFIER (also an InvalidArgument)
    │   ├── UnknownPackage             PACKAGE_NOT_FOUND: no source knows the name
    │   ├── NoMatchingVersion          NO_MATCHING_VERSION
    │   ├── DependencyCycle            DEPENDENCY_CYCLE
    │   ├── DuplicateVersions          DUPLICATE_VERSIONS
    │   ├── RegistryUnavailable        REGISTRY_UNAVAILABLE: down, nothing cached; retryable
    │   └── RegistryRejected           REGISTRY_REJECTED
    ├── InvalidTree                    INVALID_TREE: a resolved tree cannot be assembled (LoadTree)
    └── TransferError                  what arrived does not match the package's size or sha256

Errors of the service carry a `google.rpc.ErrorInfo` (domain `pkgloader.wasmer.io`) whose reason
is stable; it decides the class. Errors without one (from grpc itself, a proxy, a gateway) are
classed by status code. `from_rpc_error` is the only place a `grpc.RpcError` is translated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

DOMAIN = "pkgloader.wasmer.io"


class PkgloaderError(Exception):
    """Base of every error the client raises for a failed call."""

    #: The server's reason this class stands for ("" for classes that only a status code makes).
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: The gRPC status code of the failed call.
        self.code = code
        #: The server's machine-readable reason (ErrorInfo.reason), or "" when it sent none.
        self.reason = reason
        #: The server's structured details (url, status, expected_sha256, ...).
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        return self.message


class InvalidArgument(PkgloaderError):
    """The request is malformed: a bad sha256, a bad URL, an unknown enum value."""

    default_reason = "INVALID_ARGUMENT"


class PermissionDenied(PkgloaderError):
    """The request names something the server may not reach (e.g. file:// outside its roots)."""

    default_reason = "ACCESS_DENIED"


class Unauthenticated(PkgloaderError):
    """The call carried no valid credentials."""

    default_reason = "UNAUTHENTICATED"


class NoDiskCache(PkgloaderError):
    """A cache operation was sent to a server that runs without a disk cache."""

    default_reason = "NO_DISK_CACHE"


class FetchError(PkgloaderError):
    """The server could not get the package bytes from upstream."""

    default_reason = "FETCH_FAILED"

    @property
    def url(self) -> str:
        return self.metadata.get("url", "")


class PackageNotFound(FetchError):
    """Upstream has no such package (404/410, or a missing file:// file)."""

    default_reason = "UPSTREAM_NOT_FOUND"


class UpstreamRejected(FetchError):
    """Upstream refused the request (a 4xx other than 404/410)."""

    default_reason = "UPSTREAM_REJECTED"


class UpstreamUnavailable(FetchError):
    """Upstream failed or could not be reached (5xx, connection failure, timeout); retryable."""

    default_reason = "UPSTREAM_UNAVAILABLE"


class ContentDecodingError(FetchError):
    """Upstream sent a Content-Encoding that is missing, unknown or corrupt."""

    default_reason = "CONTENT_DECODING"


class HashMismatch(PkgloaderError):
    """The package bytes do not hash to the expected sha256."""

    default_reason = "HASH_MISMATCH"

    @property
    def expected_sha256(self) -> str:
        return self.metadata.get("expected_sha256", "")

    @property
    def actual_sha256(self) -> str:
        return self.metadata.get("actual_sha256", "")


class ContentHashMismatch(HashMismatch):
    """An atom or volume file does not hash to the sha256 its package records; never served."""

    default_reason = "CONTENT_HASH_MISMATCH"


class NotFound(PkgloaderError):
    """Something a contents call names (package, atom, volume, path) is not there."""

    default_reason = "NOT_FOUND"


class PackageNotCached(NotFound):
    """The package is not in the server's cache, and the call gave no summary to load it from."""

    default_reason = "PACKAGE_NOT_CACHED"


class AtomNotFound(NotFound):
    """The package has no atom of that name."""

    default_reason = "ATOM_NOT_FOUND"


class VolumeNotFound(NotFound):
    """The package has no volume of that name."""

    default_reason = "VOLUME_NOT_FOUND"


class PathNotFound(NotFound):
    """The volume has no file (or directory) at that path."""

    default_reason = "PATH_NOT_FOUND"


class InvalidPackage(PkgloaderError):
    """The bytes are not a package the server can parse."""

    default_reason = "INVALID_PACKAGE"


class ResourceExhausted(PkgloaderError):
    """A server limit was reached."""

    default_reason = "RESOURCE_EXHAUSTED"


class PackageTooLarge(ResourceExhausted):
    """The package is larger than the server accepts."""

    default_reason = "PACKAGE_TOO_LARGE"


class CacheFull(ResourceExhausted):
    """The server's cache volume has no space left."""

    default_reason = "CACHE_FULL"


class Cancelled(PkgloaderError):
    """The call was cancelled."""

    default_reason = "CANCELLED"


class DeadlineExceeded(PkgloaderError):
    """The call did not finish before its deadline."""

    default_reason = "DEADLINE_EXCEEDED"


class ServiceUnavailable(PkgloaderError):
    """The server could not be reached, or is shutting down; retryable."""

    default_reason = ""


class InternalError(PkgloaderError):
    """The server failed unexpectedly, or answered with a status the client has no class for."""

    default_reason = "INTERNAL"


class TransferError(PkgloaderError):
    """The content that arrived does not match the package's announced size or sha256."""

    default_reason = ""


class InvalidTree(PkgloaderError):
    """The packages of a resolution do not make a runnable tree (LoadTree): a missing dependency,
    a shadowed command, a missing atom or volume, webc v2 and v3 packages mixed in the mounts."""

    default_reason = "INVALID_TREE"


class ResolveError(PkgloaderError):
    """A specifier could not be resolved into a dependency graph."""

    default_reason = "RESOLVE_FAILED"


class InvalidSpecifier(ResolveError, InvalidArgument):
    """The specifier is not "namespace/name@requirement", a URL or "sha256:<hex>"."""

    default_reason = "INVALID_SPECIFIER"


class UnknownPackage(ResolveError):
    """No source (registry, package folders, URL) knows the package."""

    default_reason = "PACKAGE_NOT_FOUND"


class NoMatchingVersion(ResolveError):
    """The package exists, but no unarchived version matches the requirement."""

    default_reason = "NO_MATCHING_VERSION"


class DependencyCycle(ResolveError):
    """The dependencies form a cycle (the message names it: a → b → a)."""

    default_reason = "DEPENDENCY_CYCLE"


class DuplicateVersions(ResolveError):
    """Two versions of one package ended up in one dependency graph."""

    default_reason = "DUPLICATE_VERSIONS"


class RegistryUnavailable(ResolveError):
    """The registry is down and the server has no cached answer; retryable."""

    default_reason = "REGISTRY_UNAVAILABLE"


class RegistryRejected(ResolveError):
    """The registry refused the query (a 4xx, or GraphQL errors)."""

    default_reason = "REGISTRY_REJECTED"


#: The service's reasons (pkgloader/errors.py) → class. A reason not listed falls back to the code.
REASONS: dict[str, type[PkgloaderError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "INVALID_SHA256": InvalidArgument,
    "INVALID_URL": InvalidArgument,
    "INVALID_PATH": InvalidArgument,
    "ACCESS_DENIED": PermissionDenied,
    "FILE_OUTSIDE_ROOTS": PermissionDenied,
    "UPSTREAM_BLOCKED": PermissionDenied,
    "ADMIN_REQUIRED": PermissionDenied,
    "UNAUTHENTICATED": Unauthenticated,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "NO_DISK_CACHE": NoDiskCache,
    "FETCH_FAILED": FetchError,
    "UPSTREAM_NOT_FOUND": PackageNotFound,
    "UPSTREAM_REJECTED": UpstreamRejected,
    "UPSTREAM_UNAVAILABLE": UpstreamUnavailable,
    "CONTENT_DECODING": ContentDecodingError,
    "HASH_MISMATCH": HashMismatch,
    "CONTENT_HASH_MISMATCH": ContentHashMismatch,
    "NOT_FOUND": NotFound,
    "PACKAGE_NOT_CACHED": PackageNotCached,
    "ATOM_NOT_FOUND": AtomNotFound,
    "VOLUME_NOT_FOUND": VolumeNotFound,
    "PATH_NOT_FOUND": PathNotFound,
    "INVALID_PACKAGE": InvalidPackage,
    "CANCELLED": Cancelled,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "PACKAGE_TOO_LARGE": PackageTooLarge,
    "CACHE_FULL": CacheFull,
    # Another replica is downloading the package and has not finished: retry, as for UNAVAILABLE.
    "CACHE_BUSY": ServiceUnavailable,
    "CACHE_ERROR": InternalError,
    "PUBLISH_REFUSED": InternalError,
    "TOO_MANY_STREAMS": ResourceExhausted,
    "SEND_STALLED": Cancelled,
    "STREAM_IDLE": Cancelled,
    "RESPONSE_TOO_LARGE": ResourceExhausted,
    # A cache file truncated under a Load (ABORTED): a new call reads it afresh.
    "CACHE_FILE_CHANGED": ServiceUnavailable,
    "INTERNAL": InternalError,
    "RESOLVE_FAILED": ResolveError,
    "INVALID_SPECIFIER": InvalidSpecifier,
    "PACKAGE_NOT_FOUND": UnknownPackage,
    "NO_MATCHING_VERSION": NoMatchingVersion,
    "DEPENDENCY_CYCLE": DependencyCycle,
    "DUPLICATE_VERSIONS": DuplicateVersions,
    "REGISTRY_UNAVAILABLE": RegistryUnavailable,
    "REGISTRY_REJECTED": RegistryRejected,
    "INVALID_TREE": InvalidTree,
}

#: Status code → class, for errors without a pkgloader ErrorInfo (grpc itself, proxies, gateways).
CODES: dict[grpc.StatusCode, type[PkgloaderError]] = {
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: PackageNotFound,
    grpc.StatusCode.ALREADY_EXISTS: InternalError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: InternalError,
    grpc.StatusCode.ABORTED: InternalError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNIMPLEMENTED: InternalError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.DATA_LOSS: HashMismatch,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def error_info(call: grpc.Call) -> error_details_pb2.ErrorInfo | None:
    """The pkgloader ErrorInfo among a failed call's `google.rpc.Status` details, if any."""
    try:
        status = rpc_status.from_call(call)
    except (ValueError, DecodeError):
        # Undecodable, or its code/message differ from the call's: a proxy rewrote the status,
        # so its details are not the server's. Class the error by its code alone.
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == DOMAIN:
            return info
    return None


def from_rpc_error(error: grpc.RpcError) -> PkgloaderError:
    """The client exception for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    # Both error kinds are also `grpc.Call`s; these accessors are synchronous on both.
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    info = error_info(cast(grpc.Call, error))
    cls: type[PkgloaderError] | None = None
    if info is not None:
        cls = REASONS.get(info.reason)
    if cls is None:
        cls = CODES.get(code, InternalError)
    return cls(
        message,
        code=code,
        reason=info.reason if info is not None else "",
        metadata=dict(info.metadata) if info is not None else None,
    )
