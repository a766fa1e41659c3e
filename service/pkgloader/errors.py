"""The one error tree of the service. Every failure a caller can see is one of these.

    PkgloaderError
    ├── InvalidRequest               bad input from the caller
    │   ├── InvalidHash              not 64 hex digits
    │   ├── InvalidUrl               missing, malformed, or a scheme we do not fetch
    │   └── InvalidPath              a content path with `..`, NUL or a backslash
    ├── Unauthenticated              no valid client token (when auth is on)
    ├── AccessDenied                 the request names something it may not reach
    │   ├── FileOutsideRoots         file:// outside the configured roots
    │   ├── UpstreamBlocked          an upstream address outside PKGLOADER_UPSTREAM_ALLOW
    │   └── AdminRequired            a cache-changing call with a reader token
    ├── NoDiskCache                  a cache operation with no disk cache configured
    ├── FetchError                   getting the bytes failed
    │   ├── UpstreamNotFound         404 / 410, or a missing file:// file
    │   ├── UpstreamRejected         any other 4xx
    │   ├── UpstreamUnavailable      5xx, connection failure, timeout
    │   └── ContentDecodingError     Content-Encoding missing, unknown, or corrupt
    ├── CacheError                   the disk cache could not store or hand over a package
    │   ├── CacheBusy                another replica held the package's download lease too long
    │   └── PublishRefused           a temp file whose size or sha256 is not its name's (a bug)
    ├── HashMismatch                 the bytes do not hash to the expected sha256
    ├── ContentHashMismatch          an atom or file does not hash to its manifest/header sha256
    ├── NotFound                     a content the request names is not there
    │   ├── PackageNotCached         not in memory or on disk, and no summary to load it from
    │   ├── AtomNotFound             no such atom in the package
    │   ├── VolumeNotFound           no such volume in the package
    │   └── PathNotFound             no such file or directory in the volume
    ├── InvalidPackage               the bytes are not a package that parses
    ├── InvalidTree                  a resolved tree cannot be assembled (LoadTree)
    ├── CacheFileChanged             a cached file was truncated or replaced while being read
    ├── Cancelled                    the caller went away (nobody reads it; logged only)
    │   └── SendStalled              the client stopped reading; the server cancelled the call
    ├── DeadlineExceeded             the call's deadline (the client's or the server's) passed
    ├── ResourceExhausted            a limit was reached
    │   ├── PackageTooLarge          over PKGLOADER_MAX_PACKAGE_BYTES (decoded bytes)
    │   ├── CacheFull                no space left on the cache volume
    │   └── TooManyStreams           a connection's content streams, or reflection streams
    └── ResolveError                 a specifier could not be turned into a dependency graph
        ├── InvalidSpecifier         not "namespace/name@requirement", a URL or "sha256:<hex>"
        ├── PackageNotFound          no source knows the name (or the hash)
        ├── NoMatchingVersion        the name is known, no (unarchived) version matches
        ├── DependencyCycle          the graph has a cycle: a → b → a
        ├── DuplicateVersions        two versions of one name in one graph
        ├── RegistryUnavailable      the registry is down (or answers nonsense), nothing cached
        └── RegistryRejected         the registry refused the query (4xx, GraphQL errors)

Each leaf carries data (url, status, hashes), never a transport status code: the gRPC layer maps
them once (`pkgloader.rpc.status`). `reason` is the stable machine-readable name clients switch on.
"""

from __future__ import annotations

from typing import ClassVar


class PkgloaderError(Exception):
    """Base of every error the service reports to its callers."""

    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        #: Structured details for clients (string values only: they travel as ErrorInfo metadata).
        self.metadata = {key: value for key, value in metadata.items() if value}


class InvalidRequest(PkgloaderError):
    reason = "INVALID_ARGUMENT"


class InvalidHash(InvalidRequest):
    reason = "INVALID_SHA256"


class InvalidUrl(InvalidRequest):
    reason = "INVALID_URL"


class InvalidPath(InvalidRequest):
    reason = "INVALID_PATH"


class AccessDenied(PkgloaderError):
    reason = "ACCESS_DENIED"


class FileOutsideRoots(AccessDenied):
    reason = "FILE_OUTSIDE_ROOTS"


class UpstreamBlocked(AccessDenied):
    reason = "UPSTREAM_BLOCKED"


class AdminRequired(AccessDenied):
    reason = "ADMIN_REQUIRED"


class Unauthenticated(PkgloaderError):
    reason = "UNAUTHENTICATED"


class NoDiskCache(PkgloaderError):
    reason = "NO_DISK_CACHE"


class FetchError(PkgloaderError):
    reason = "FETCH_FAILED"


class UpstreamNotFound(FetchError):
    reason = "UPSTREAM_NOT_FOUND"


class UpstreamRejected(FetchError):
    reason = "UPSTREAM_REJECTED"


class UpstreamUnavailable(FetchError):
    reason = "UPSTREAM_UNAVAILABLE"


class ContentDecodingError(FetchError):
    reason = "CONTENT_DECODING"


class CacheError(PkgloaderError):
    reason = "CACHE_ERROR"


class CacheBusy(CacheError):
    reason = "CACHE_BUSY"


class PublishRefused(CacheError):
    reason = "PUBLISH_REFUSED"


class HashMismatch(PkgloaderError):
    reason = "HASH_MISMATCH"

    def __init__(self, *, expected: str, actual: str | None, source: str) -> None:
        if actual is None:
            # Withheld (see PackageLoader.load): the caller may not learn what the server's
            # credentials or file roots fetched, not even its hash.
            super().__init__(
                f"image hash mismatch! expected hash '{expected.upper()}', but the computed hash "
                f"differs (source '{source}'); the computed hash is withheld from non-admin "
                "callers for sources the server reads with its own credentials or file roots",
                expected_sha256=expected,
                source=source,
            )
        else:
            # The reference's wording, hashes in its uppercase Display form.
            super().__init__(
                f"image hash mismatch! expected hash '{expected.upper()}', but the computed hash "
                f"is '{actual.upper()}' (source '{source}')",
                expected_sha256=expected,
                actual_sha256=actual,
                source=source,
            )
        self.expected = expected
        self.actual = actual
        self.source = source


class ContentHashMismatch(PkgloaderError):
    """An atom or volume file whose bytes do not hash to what the package itself records."""

    reason = "CONTENT_HASH_MISMATCH"

    def __init__(self, *, what: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{what}: the bytes hash to sha256 {actual}, but the package records {expected}; "
            "refusing to serve corrupt content",
            expected_sha256=expected,
            actual_sha256=actual,
        )
        self.expected = expected
        self.actual = actual


class NotFound(PkgloaderError):
    reason = "NOT_FOUND"


class PackageNotCached(NotFound):
    reason = "PACKAGE_NOT_CACHED"


class AtomNotFound(NotFound):
    reason = "ATOM_NOT_FOUND"


class VolumeNotFound(NotFound):
    reason = "VOLUME_NOT_FOUND"


class PathNotFound(NotFound):
    reason = "PATH_NOT_FOUND"


class InvalidPackage(PkgloaderError):
    reason = "INVALID_PACKAGE"


class InvalidTree(PkgloaderError):
    """The packages of a resolution do not make a runnable tree; the message is the reference's
    (`load_package_tree`) words."""

    reason = "INVALID_TREE"


class CacheFileChanged(PkgloaderError):
    """A disk cache file shrank under a read in progress (another replica, an operator, NFS).
    What was sent so far cannot be completed; a new call reads (or fetches) the package again."""

    reason = "CACHE_FILE_CHANGED"


class Cancelled(PkgloaderError):
    reason = "CANCELLED"


class SendStalled(Cancelled):
    reason = "SEND_STALLED"


class StreamIdle(Cancelled):
    """A reflection stream that sent no request for the idle timeout: the server ended it."""

    reason = "STREAM_IDLE"


class DeadlineExceeded(PkgloaderError):
    reason = "DEADLINE_EXCEEDED"


class ResourceExhausted(PkgloaderError):
    reason = "RESOURCE_EXHAUSTED"


class PackageTooLarge(ResourceExhausted):
    reason = "PACKAGE_TOO_LARGE"


class CacheFull(ResourceExhausted):
    reason = "CACHE_FULL"


class TooManyStreams(ResourceExhausted):
    reason = "TOO_MANY_STREAMS"


class ResponseTooLarge(ResourceExhausted):
    """A response (a unary one, or a stream's first item) larger than every client may take."""

    reason = "RESPONSE_TOO_LARGE"


class ResolveError(PkgloaderError):
    reason = "RESOLVE_FAILED"


class InvalidSpecifier(ResolveError):
    reason = "INVALID_SPECIFIER"


class PackageNotFound(ResolveError):
    reason = "PACKAGE_NOT_FOUND"


class NoMatchingVersion(ResolveError):
    reason = "NO_MATCHING_VERSION"


class DependencyCycle(ResolveError):
    reason = "DEPENDENCY_CYCLE"


class DuplicateVersions(ResolveError):
    reason = "DUPLICATE_VERSIONS"


class RegistryUnavailable(ResolveError):
    reason = "REGISTRY_UNAVAILABLE"


class RegistryRejected(ResolveError):
    reason = "REGISTRY_REJECTED"


def leaves() -> list[type[PkgloaderError]]:
    """Every concrete error class (the status table is checked against this)."""
    found: list[type[PkgloaderError]] = []
    pending: list[type[PkgloaderError]] = [PkgloaderError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
