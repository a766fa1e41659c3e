"""The one table from domain errors to gRPC status codes, and the `google.rpc.Status` it sends.

Every class of `pkgloader.errors` is listed explicitly (a test fails when one is missing), so a
new error cannot silently fall through to INTERNAL. The detail is a `google.rpc.ErrorInfo` whose
reason is the error's stable `reason` and whose metadata is its data.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from pkgloader import errors

DOMAIN = "pkgloader.wasmer.io"

CODES: dict[type[errors.PkgloaderError], grpc.StatusCode] = {
    errors.PkgloaderError: grpc.StatusCode.INTERNAL,
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidHash: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidUrl: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidPath: grpc.StatusCode.INVALID_ARGUMENT,
    errors.AccessDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.FileOutsideRoots: grpc.StatusCode.PERMISSION_DENIED,
    errors.UpstreamBlocked: grpc.StatusCode.PERMISSION_DENIED,
    errors.AdminRequired: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.NoDiskCache: grpc.StatusCode.FAILED_PRECONDITION,
    errors.FetchError: grpc.StatusCode.UNAVAILABLE,
    errors.UpstreamNotFound: grpc.StatusCode.NOT_FOUND,
    errors.UpstreamRejected: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UpstreamUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ContentDecodingError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.CacheError: grpc.StatusCode.INTERNAL,
    # Retryable: the other replica's download may finish, or its lease go stale and be taken.
    errors.CacheBusy: grpc.StatusCode.UNAVAILABLE,
    errors.PublishRefused: grpc.StatusCode.INTERNAL,
    errors.HashMismatch: grpc.StatusCode.DATA_LOSS,
    errors.ContentHashMismatch: grpc.StatusCode.DATA_LOSS,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.PackageNotCached: grpc.StatusCode.NOT_FOUND,
    errors.AtomNotFound: grpc.StatusCode.NOT_FOUND,
    errors.VolumeNotFound: grpc.StatusCode.NOT_FOUND,
    errors.PathNotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidPackage: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InvalidTree: grpc.StatusCode.FAILED_PRECONDITION,
    # A conflict with a concurrent change, not the caller's fault: retrying reads afresh.
    errors.CacheFileChanged: grpc.StatusCode.ABORTED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.SendStalled: grpc.StatusCode.CANCELLED,
    errors.StreamIdle: grpc.StatusCode.CANCELLED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PackageTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.CacheFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.TooManyStreams: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ResponseTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ResolveError: grpc.StatusCode.INTERNAL,
    errors.InvalidSpecifier: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PackageNotFound: grpc.StatusCode.NOT_FOUND,
    errors.NoMatchingVersion: grpc.StatusCode.NOT_FOUND,
    errors.DependencyCycle: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DuplicateVersions: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RegistryUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.RegistryRejected: grpc.StatusCode.FAILED_PRECONDITION,
}


def code_for(error: errors.PkgloaderError) -> grpc.StatusCode:
    return CODES.get(type(error), grpc.StatusCode.INTERNAL)


def to_status(error: errors.PkgloaderError) -> grpc.Status:
    """The status a client receives for `error`, with its ErrorInfo detail."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=code_for(error).value[0], message=error.message, details=[detail]
    )
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    """What an unexpected exception becomes: no internals leak, the log has the traceback."""
    return to_status(errors.PkgloaderError("internal error; see the server log"))
