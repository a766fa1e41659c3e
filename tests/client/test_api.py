"""The client's public surface: what it exports, its version, its error tables."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import grpc
import pkgloader
import pkgloader_client
import pytest
from pkgloader import errors
from pkgloader_client import _cli, _errors

from tests.conftest import REPO

CLIENT = REPO / "client" / "pkgloader_client"


def _sample(cls: type[errors.PkgloaderError]) -> errors.PkgloaderError:
    if cls is errors.HashMismatch:
        return cls(expected="a" * 64, actual="b" * 64, source="file:/x")
    if cls is errors.ContentHashMismatch:
        return cls(what="atom 'a'", expected="a" * 64, actual="b" * 64)
    return cls(f"{cls.__name__} happened", url="http://127.0.0.1:1/x", status="418")


#: One instance of every error class of the server.
SERVER_ERRORS = [_sample(cls) for cls in errors.leaves()]

#: What each server reason must become in the client, written out here so that a change to the
#: client's table has to be made twice, deliberately.
EXPECTED = {
    "INTERNAL": pkgloader_client.InternalError,
    "INVALID_ARGUMENT": pkgloader_client.InvalidArgument,
    "INVALID_SHA256": pkgloader_client.InvalidArgument,
    "INVALID_URL": pkgloader_client.InvalidArgument,
    "ACCESS_DENIED": pkgloader_client.PermissionDenied,
    "FILE_OUTSIDE_ROOTS": pkgloader_client.PermissionDenied,
    "UPSTREAM_BLOCKED": pkgloader_client.PermissionDenied,
    "ADMIN_REQUIRED": pkgloader_client.PermissionDenied,
    "UNAUTHENTICATED": pkgloader_client.Unauthenticated,
    "DEADLINE_EXCEEDED": pkgloader_client.DeadlineExceeded,
    "NO_DISK_CACHE": pkgloader_client.NoDiskCache,
    "FETCH_FAILED": pkgloader_client.FetchError,
    "UPSTREAM_NOT_FOUND": pkgloader_client.PackageNotFound,
    "UPSTREAM_REJECTED": pkgloader_client.UpstreamRejected,
    "UPSTREAM_UNAVAILABLE": pkgloader_client.UpstreamUnavailable,
    "CONTENT_DECODING": pkgloader_client.ContentDecodingError,
    "HASH_MISMATCH": pkgloader_client.HashMismatch,
    "INVALID_PACKAGE": pkgloader_client.InvalidPackage,
    "CANCELLED": pkgloader_client.Cancelled,
    "RESOURCE_EXHAUSTED": pkgloader_client.ResourceExhausted,
    "PACKAGE_TOO_LARGE": pkgloader_client.PackageTooLarge,
    "CACHE_FULL": pkgloader_client.CacheFull,
    "CACHE_BUSY": pkgloader_client.ServiceUnavailable,
    "CACHE_ERROR": pkgloader_client.InternalError,
    "PUBLISH_REFUSED": pkgloader_client.InternalError,
    "TOO_MANY_STREAMS": pkgloader_client.ResourceExhausted,
    "SEND_STALLED": pkgloader_client.Cancelled,
    "STREAM_IDLE": pkgloader_client.Cancelled,
    "RESPONSE_TOO_LARGE": pkgloader_client.ResourceExhausted,
    "RESOLVE_FAILED": pkgloader_client.ResolveError,
    "INVALID_SPECIFIER": pkgloader_client.InvalidSpecifier,
    "PACKAGE_NOT_FOUND": pkgloader_client.UnknownPackage,
    "NO_MATCHING_VERSION": pkgloader_client.NoMatchingVersion,
    "DEPENDENCY_CYCLE": pkgloader_client.DependencyCycle,
    "DUPLICATE_VERSIONS": pkgloader_client.DuplicateVersions,
    "REGISTRY_UNAVAILABLE": pkgloader_client.RegistryUnavailable,
    "REGISTRY_REJECTED": pkgloader_client.RegistryRejected,
    "INVALID_PATH": pkgloader_client.InvalidArgument,
    "CONTENT_HASH_MISMATCH": pkgloader_client.ContentHashMismatch,
    "NOT_FOUND": pkgloader_client.NotFound,
    "PACKAGE_NOT_CACHED": pkgloader_client.PackageNotCached,
    "ATOM_NOT_FOUND": pkgloader_client.AtomNotFound,
    "VOLUME_NOT_FOUND": pkgloader_client.VolumeNotFound,
    "PATH_NOT_FOUND": pkgloader_client.PathNotFound,
    "INVALID_TREE": pkgloader_client.InvalidTree,
    "CACHE_FILE_CHANGED": pkgloader_client.ServiceUnavailable,
}


def expected_class(error: errors.PkgloaderError) -> type[pkgloader_client.PkgloaderError]:
    return EXPECTED[error.reason]


def test_all_is_pinned() -> None:
    """The public names are exactly these; adding or removing one is a deliberate change."""
    assert pkgloader_client.__all__ == [
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
        "DependencyCycle",
        "DirectoryEntry",
        "DuplicateVersions",
        "EntryKind",
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
        "Listing",
        "Manifest",
        "MismatchedFile",
        "NoDiskCache",
        "NoMatchingVersion",
        "NotFound",
        "Package",
        "PackageLoaderClient",
        "PackageLoaderServiceStub",
        "PackageNotCached",
        "PackageNotFound",
        "PackageTooLarge",
        "PackageTree",
        "PathNotFound",
        "PermissionDenied",
        "PkgloaderError",
        "Progress",
        "RegistryRejected",
        "RegistryUnavailable",
        "Resolution",
        "ResolveError",
        "ResolvedCommand",
        "ResolvedEdge",
        "ResolvedMount",
        "ResolvedNode",
        "ResourceExhausted",
        "RetainResult",
        "ServiceUnavailable",
        "ServingStatus",
        "Source",
        "TransferError",
        "TreeCommand",
        "TreeMount",
        "TreePackage",
        "TreeProgress",
        "Unauthenticated",
        "UnknownPackage",
        "UpstreamRejected",
        "UpstreamUnavailable",
        "ValidationReport",
        "Volume",
        "VolumeNotFound",
        "__version__",
        "parse_size",
        "pb",
        "pb_grpc",
    ]
    assert all(hasattr(pkgloader_client, name) for name in pkgloader_client.__all__)


def test_server_symbols_have_their_own_import_path() -> None:
    """The servicer base and its registration are in `pkgloader_client.server`, pinned there,
    and are not client API: `pkgloader_client` neither lists nor has them."""
    from pkgloader_client import server

    assert server.__all__ == [
        "SERVICE_NAME",
        "PackageLoaderServiceServicer",
        "add_PackageLoaderServiceServicer_to_server",
        "pb",
    ]
    assert all(hasattr(server, name) for name in server.__all__)
    for name in ("PackageLoaderServiceServicer", "add_PackageLoaderServiceServicer_to_server"):
        assert name not in pkgloader_client.__all__
        assert not hasattr(pkgloader_client, name)


def test_both_distributions_carry_the_version_in_client_version() -> None:
    """pkgloader and pkgloader-client, as installed, both report the version of client/VERSION."""
    written = (REPO / "client" / "VERSION").read_text().strip()
    assert importlib.metadata.version("pkgloader") == written
    assert importlib.metadata.version("pkgloader-client") == written
    assert pkgloader.__version__ == pkgloader_client.__version__ == written


def test_the_client_never_imports_the_server() -> None:
    """No module of pkgloader_client imports the server package `pkgloader`."""
    offenders = []
    for path in CLIENT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(CLIENT)}: {n}"
                for n in names
                if n == "pkgloader" or n.startswith("pkgloader.")
            ]
    assert offenders == []


@pytest.mark.parametrize("reason", sorted(e.reason for e in SERVER_ERRORS))
def test_every_server_reason_has_its_client_class(reason: str) -> None:
    """The client's reason table covers every reason of the server, as EXPECTED says."""
    assert _errors.REASONS[reason] is EXPECTED[reason]


def test_every_status_code_has_a_client_class() -> None:
    """Errors without ErrorInfo (proxies, grpc itself) are classed by code; none is missing."""
    missing = [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK and c not in _errors.CODES]
    assert missing == []


def _client_error_classes() -> list[type[pkgloader_client.PkgloaderError]]:
    found, pending = [], [pkgloader_client.PkgloaderError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_client_error_class_is_exported_and_has_an_exit_code() -> None:
    """Each class of the tree is public and has its own row in the CLI's exit-code table."""
    classes = _client_error_classes()
    assert len(set(classes)) == 35
    assert all(cls.__name__ in pkgloader_client.__all__ for cls in classes)
    assert set(classes) == set(_cli.EXIT_CODES)


def test_exit_codes_are_documented_in_the_readme() -> None:
    """The README's exit-code table lists every code the CLI can return."""
    readme = (REPO / "client" / "README.md").read_text()
    codes = {*_cli.EXIT_CODES.values(), _cli.OK, _cli.USAGE, _cli.NOT_SERVING, _cli.CACHE_DAMAGED}
    for code in sorted(codes):
        assert f"\n| {code} |" in readme, f"exit code {code} is not in client/README.md"


def test_the_hand_written_modules_are_private() -> None:
    """Everything but the package itself, __main__, the generated stubs and `server` (the
    contract's server side, a deliberate second import path) is a _module."""
    public = [
        p.name
        for p in Path(CLIENT).glob("*.py")
        if not p.name.startswith("_") and p.name not in ("__init__.py", "server.py")
    ]
    assert public == []
