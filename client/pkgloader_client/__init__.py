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
    AtomNotFound,
    CacheFull,
    Cancelled,
    ContentDecodingError,
    ContentHashMismatch,
    DeadlineExceeded,
    FetchError,
    HashMismatch,
    InternalError,
    InvalidArgument,
    InvalidPackage,
    NoDiskCache,
    NotFound,
    PackageNotCached,
    PackageNotFound,
    PackageTooLarge,
    PathNotFound,
    PermissionDenied,
    PkgloaderError,
    ResourceExhausted,
    ServiceUnavailable,
    TransferError,
    Unauthenticated,
    UpstreamRejected,
    UpstreamUnavailable,
    VolumeNotFound,
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
    Content,
    ContentInfo,
    Dependency,
    DirectoryEntry,
    EntryKind,
    EvictResult,
    InvalidFile,
    Listing,
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
    "AtomNotFound",
    "Binding",
    "CacheEntry",
    "CacheFull",
    "Cancelled",
    "Command",
    "Content",
    "ContentDecodingError",
    "ContentHashMismatch",
    "ContentInfo",
    "DeadlineExceeded",
    "Dependency",
    "DirectoryEntry",
    "EntryKind",
    "EvictResult",
    "FetchError",
    "HashMismatch",
    "HashValidation",
    "InternalError",
    "InvalidArgument",
    "InvalidFile",
    "InvalidPackage",
    "Listing",
    "Manifest",
    "MismatchedFile",
    "NoDiskCache",
    "NotFound",
    "Package",
    "PackageLoaderClient",
    "PackageLoaderServiceServicer",
    "PackageLoaderServiceStub",
    "PackageNotCached",
    "PackageNotFound",
    "PackageTooLarge",
    "PathNotFound",
    "PermissionDenied",
    "PkgloaderError",
    "Progress",
    "ResourceExhausted",
    "RetainResult",
    "ServiceUnavailable",
    "ServingStatus",
    "Source",
    "TransferError",
    "Unauthenticated",
    "UpstreamRejected",
    "UpstreamUnavailable",
    "ValidationReport",
    "Volume",
    "VolumeNotFound",
    "__version__",
    "add_PackageLoaderServiceServicer_to_server",
    "pb",
    "pb_grpc",
]
