"""Client side of the pkgloader service.

    from pkgloader_client import PackageLoaderClient, HashMismatch

    with PackageLoaderClient("127.0.0.1:50051") as client:
        package = client.load(url, sha256)
        client.load_to("pkg.webc", url, sha256)

`PackageLoaderClient` / `AsyncPackageLoaderClient` are the hand-written layer: typed results and
one exception tree. The generated modules are here too, under clear names (`pb`, `pb_grpc`,
`PackageLoaderServiceStub`, ...), for callers who want the raw contract.
"""

from pkgloader_client._aio import AsyncPackageLoaderClient
from pkgloader_client._client import PackageLoaderClient, Progress
from pkgloader_client._config import (
    DEFAULT_LOAD_TIMEOUT,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    SERVICE_NAME,
    HashValidation,
)
from pkgloader_client._errors import (
    CacheFull,
    Cancelled,
    ContentDecodingError,
    ContentHashMismatch,
    DeadlineExceeded,
    DependencyCycle,
    DuplicateVersions,
    FetchError,
    HashMismatch,
    InternalError,
    InvalidArgument,
    InvalidPackage,
    InvalidSpecifier,
    InvalidTree,
    NoDiskCache,
    NoMatchingVersion,
    PackageNotFound,
    PackageTooLarge,
    PermissionDenied,
    PkgloaderError,
    RegistryRejected,
    RegistryUnavailable,
    ResolveError,
    ResourceExhausted,
    ServiceUnavailable,
    TransferError,
    Unauthenticated,
    UnknownPackage,
    UpstreamRejected,
    UpstreamUnavailable,
)
from pkgloader_client._generated.pkgloader.v1 import package_loader_pb2 as pb
from pkgloader_client._generated.pkgloader.v1 import package_loader_pb2_grpc as pb_grpc
from pkgloader_client._generated.pkgloader.v1.package_loader_pb2_grpc import (
    PackageLoaderServiceServicer,
    PackageLoaderServiceStub,
    add_PackageLoaderServiceServicer_to_server,
)
from pkgloader_client._models import (
    Atom,
    Binding,
    CacheEntry,
    Command,
    Dependency,
    EvictResult,
    InvalidFile,
    Manifest,
    MismatchedFile,
    Package,
    RetainResult,
    ServingStatus,
    Source,
    ValidationReport,
    Volume,
)
from pkgloader_client._version import __version__

__all__ = [
    "DEFAULT_LOAD_TIMEOUT",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "SERVICE_NAME",
    "AsyncPackageLoaderClient",
    "Atom",
    "Binding",
    "CacheEntry",
    "CacheFull",
    "Cancelled",
    "Command",
    "ContentDecodingError",
    "ContentHashMismatch",
    "DeadlineExceeded",
    "Dependency",
    "DependencyCycle",
    "DuplicateVersions",
    "EvictResult",
    "FetchError",
    "HashMismatch",
    "HashValidation",
    "InternalError",
    "InvalidArgument",
    "InvalidFile",
    "InvalidPackage",
    "InvalidSpecifier",
    "InvalidTree",
    "Manifest",
    "MismatchedFile",
    "NoDiskCache",
    "NoMatchingVersion",
    "Package",
    "PackageLoaderClient",
    "PackageLoaderServiceServicer",
    "PackageLoaderServiceStub",
    "PackageNotFound",
    "PackageTooLarge",
    "PermissionDenied",
    "PkgloaderError",
    "Progress",
    "RegistryRejected",
    "RegistryUnavailable",
    "ResolveError",
    "ResourceExhausted",
    "RetainResult",
    "ServiceUnavailable",
    "ServingStatus",
    "Source",
    "TransferError",
    "Unauthenticated",
    "UnknownPackage",
    "UpstreamRejected",
    "UpstreamUnavailable",
    "ValidationReport",
    "Volume",
    "__version__",
    "add_PackageLoaderServiceServicer_to_server",
    "pb",
    "pb_grpc",
]
