"""The blocking client against a real server: every call, every error class, atomic downloads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from pkgloader import app as app_module
from pkgloader import errors
from pkgloader_client import (
    CacheEntry,
    ContentDecodingError,
    DeadlineExceeded,
    HashMismatch,
    InternalError,
    InvalidArgument,
    InvalidPackage,
    NoDiskCache,
    Package,
    PackageLoaderClient,
    PackageNotFound,
    PackageTooLarge,
    PermissionDenied,
    PkgloaderError,
    ServiceUnavailable,
    ServingStatus,
    Source,
    TransferError,
    Unauthenticated,
    UpstreamRejected,
    UpstreamUnavailable,
)
from pytest_httpserver import HTTPServer

from tests.client.conftest import (
    DropsLastChunk,
    FailsMidStream,
    FlipsAByte,
    Pki,
    RequireToken,
    StallsMidStream,
    custom_server,
    free_port,
)
from tests.client.test_api import SERVER_ERRORS, expected_class
from tests.conftest import COWSAY, DASH, HELLO, STATIC, WABT, Running, sha256


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_load_returns_typed_metadata_and_manifest(server: Running) -> None:
    """load() gives a typed Package: hash, size, format, source, manifest, volumes, no content."""
    with PackageLoaderClient(server.address) as client:
        package = client.load(DASH.url, DASH.sha256, package_id="sharrattj/dash@1.0.18")
        again = client.load(DASH.url, DASH.sha256.upper())
    assert isinstance(package, Package)
    assert package.sha256 == DASH.sha256
    assert package.size == DASH.size
    assert package.format == DASH.format
    assert package.source is Source.DOWNLOAD
    assert again.source is Source.MEMORY
    assert package.package_id == "sharrattj/dash@1.0.18"
    assert package.cache_path == f"{DASH.sha256}.bin"
    assert package.content is None
    assert package.manifest.entrypoint == "dash"
    assert "dash" in [c.name for c in package.manifest.commands]
    assert all(a.kind.startswith("https://webc.org/kind/") for a in package.manifest.atoms)
    assert sum(a.size for a in package.manifest.atoms) > 0
    assert package.volumes
    assert all(v.files >= 0 for v in package.volumes)
    assert package.to_dict()["manifest"]["entrypoint"] == "dash"


@pytest.mark.parametrize("fixture", [HELLO, STATIC, COWSAY], ids=lambda f: f.format)
def test_load_with_content_returns_the_exact_bytes(server: Running, fixture) -> None:
    """include_content=True returns every byte of the package, for each container format."""
    with PackageLoaderClient(server.address) as client:
        package = client.load(fixture.url, fixture.sha256, include_content=True)
    assert package.format == fixture.format
    assert package.content == fixture.data


def test_load_to_streams_a_verified_file_and_reports_progress(
    server: Running, tmp_path: Path
) -> None:
    """load_to() writes the exact bytes, reports progress up to the size, leaves no temp file."""
    out = tmp_path / "out"
    out.mkdir()
    seen: list[tuple[int, int]] = []
    with PackageLoaderClient(server.address) as client:
        package = client.load_to(
            out / "wabt.webc", WABT.url, WABT.sha256, progress=lambda n, t: seen.append((n, t))
        )
    assert (out / "wabt.webc").read_bytes() == WABT.data
    assert package.size == WABT.size
    assert package.content is None
    assert seen[0] == (0, WABT.size)
    assert seen[-1] == (WABT.size, WABT.size)
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)
    assert len(seen) == 1 + -(-WABT.size // (1024 * 1024))  # one call per 1 MiB chunk
    assert leftovers(out) == ["wabt.webc"]


def test_load_to_replaces_an_existing_file_whole(server: Running, tmp_path: Path) -> None:
    """An existing target is replaced by the complete new file."""
    target = tmp_path / "pkg"
    target.write_bytes(b"old")
    with PackageLoaderClient(server.address) as client:
        client.load_to(target, HELLO.url, HELLO.sha256)
    assert target.read_bytes() == HELLO.data


@pytest.mark.parametrize(
    ("servicer", "error", "timeout"),
    [
        (FailsMidStream, InternalError, None),
        (StallsMidStream, DeadlineExceeded, 1.0),
        (DropsLastChunk, TransferError, None),
        (FlipsAByte, TransferError, None),
    ],
    ids=["server-fails", "deadline", "truncated", "corrupted"],
)
def test_load_to_leaves_no_partial_file_when_the_stream_goes_wrong(
    tmp_path: Path, servicer, error, timeout
) -> None:
    """A stream that fails, times out, or delivers wrong bytes after the first chunk leaves the
    target as it was and no temp file behind."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "wabt.webc").write_bytes(b"previous version")
    seen: list[int] = []
    with (
        custom_server(tmp_path / "srv", servicer=servicer) as srv,
        PackageLoaderClient(srv.address) as client,
        pytest.raises(error),
    ):
        client.load_to(
            out / "wabt.webc",
            WABT.url,
            WABT.sha256,
            timeout=timeout,
            progress=lambda n, t: seen.append(n),
        )
    assert max(seen) >= 1024 * 1024  # it failed mid-stream, after real bytes were written
    assert leftovers(out) == ["wabt.webc"]
    assert (out / "wabt.webc").read_bytes() == b"previous version"


def test_transfer_error_names_the_expected_and_received_hash(tmp_path: Path) -> None:
    """A corrupted stream's TransferError carries both hashes as metadata."""
    with (
        custom_server(tmp_path / "srv", servicer=FlipsAByte) as srv,
        PackageLoaderClient(srv.address) as client,
        pytest.raises(TransferError) as caught,
    ):
        client.load_to(tmp_path / "x", WABT.url, WABT.sha256)
    assert caught.value.metadata["expected_sha256"] == WABT.sha256
    assert caught.value.metadata["actual_sha256"] != WABT.sha256


def test_scan_lists_every_cache_file(server: Running) -> None:
    """scan() returns one typed CacheEntry per loaded package, across batches."""
    with PackageLoaderClient(server.address) as client:
        for f in (HELLO, DASH, STATIC):
            client.load(f.url, f.sha256)
        entries = client.scan(batch_size=2)
    assert all(isinstance(e, CacheEntry) for e in entries)
    assert sorted(e.sha256 for e in entries) == sorted(f.sha256 for f in (HELLO, DASH, STATIC))
    hello = next(e for e in entries if e.sha256 == HELLO.sha256)
    assert hello.size == HELLO.size
    assert hello.in_memory
    assert hello.cache_path == f"{HELLO.sha256}.bin"
    assert hello.last_used.tzinfo is not None


def test_retain_dry_run_then_removal(server: Running) -> None:
    """retain() reports without removing on dry_run, then removes what its criteria name."""
    with PackageLoaderClient(server.address) as client:
        for f in (HELLO, DASH):
            client.load(f.url, f.sha256)
        dry = client.retain(keep=[HELLO.sha256], dry_run=True)
        assert [e.sha256 for e in dry.removed] == [DASH.sha256]
        assert len(client.scan()) == 2
        done = client.retain(remove=[HELLO.sha256], unused_for=0)
        remaining = client.scan()
    assert {e.sha256 for e in done.removed} == {HELLO.sha256, DASH.sha256}
    assert done.removed_bytes == HELLO.size + DASH.size
    assert done.kept_files == 0
    assert remaining == []


def test_retain_max_total_bytes_keeps_what_fits(server: Running) -> None:
    """retain(max_total_bytes=...) trims the cache to the budget."""
    with PackageLoaderClient(server.address) as client:
        for f in (HELLO, DASH):
            client.load(f.url, f.sha256)
        result = client.retain(max_total_bytes=DASH.size + HELLO.size - 1)
    assert len(result.removed) == 1
    assert result.kept_files == 1
    assert result.kept_bytes <= DASH.size + HELLO.size - 1


def test_evict_memory_only_then_files(server: Running) -> None:
    """evict() drops from memory and keeps the file; with delete_files the file goes too."""
    with PackageLoaderClient(server.address) as client:
        client.load(HELLO.url, HELLO.sha256)
        first = client.evict(HELLO.sha256)
        assert first.evicted == (HELLO.sha256,)
        assert first.deleted == ()
        assert client.load(HELLO.url, HELLO.sha256).source is Source.DISK
        second = client.evict([HELLO.sha256], delete_files=True)
        assert second.deleted == (HELLO.sha256,)
        assert client.scan() == []


def test_validate_cache_reports_then_prunes_a_damaged_file(server: Running) -> None:
    """validate_cache() finds a file whose content does not match its name; prune deletes it."""
    cache = server.app.settings.cache_dir
    with PackageLoaderClient(server.address) as client:
        client.load(HELLO.url, HELLO.sha256)
        (cache / f"{DASH.sha256}.bin").write_bytes(HELLO.data)
        report = client.validate_cache(deep=True)
        assert not report.ok
        assert report.checked_files == 2
        assert [(m.expected_sha256, m.actual_sha256, m.pruned) for m in report.mismatches] == [
            (DASH.sha256, HELLO.sha256, False)
        ]
        pruned = client.validate_cache(prune=True)
        assert pruned.mismatches[0].pruned
        assert client.validate_cache().ok
    assert not (cache / f"{DASH.sha256}.bin").exists()


def test_health_follows_the_serving_state(server: Running) -> None:
    """health() is SERVING, NOT_SERVING while draining, SERVICE_UNKNOWN for unknown names."""
    with PackageLoaderClient(server.address) as client:
        assert client.health() is ServingStatus.SERVING
        assert client.health("") is ServingStatus.SERVING
        assert client.health("no.such.Service") is ServingStatus.SERVICE_UNKNOWN
        app_module.set_serving(server.app, False)
        assert client.health() is ServingStatus.NOT_SERVING


def test_context_manager_closes_its_channel(server: Running) -> None:
    """Leaving the with block closes the channel the client made."""
    with PackageLoaderClient(server.address) as client:
        client.health()
    with pytest.raises(ValueError, match="closed channel"):
        client.health()


def test_a_given_channel_is_used_and_left_open(server: Running) -> None:
    """A caller's channel is used as is and not closed by the client."""
    with PackageLoaderClient(channel=server.channel) as client:
        assert client.load(HELLO.url, HELLO.sha256).sha256 == HELLO.sha256
    assert PackageLoaderClient(channel=server.channel).health() is ServingStatus.SERVING


def test_token_is_sent_as_bearer_metadata(tmp_path: Path) -> None:
    """With token=..., every call carries `authorization: Bearer <token>`; without, a gateway
    answers UNAUTHENTICATED and the client raises Unauthenticated."""
    gate = RequireToken("s3cret")
    with custom_server(tmp_path, interceptors=(gate,)) as srv:
        with PackageLoaderClient(srv.address, token="s3cret") as client:
            client.load(HELLO.url, HELLO.sha256)
            client.scan()
        with PackageLoaderClient(srv.address) as anonymous, pytest.raises(Unauthenticated) as e:
            anonymous.scan()
    assert gate.seen == ["Bearer s3cret", "Bearer s3cret", None]
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED


class RewritesStatus(aio.ServerInterceptor):
    """A gateway that answers every call itself: UNAVAILABLE, with the given status details."""

    def __init__(self, details: bytes) -> None:
        self.details = details

    async def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)

        async def answer(request: Any, context: Any) -> Any:
            context.set_trailing_metadata((("grpc-status-details-bin", self.details),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is down")

        return grpc.unary_unary_rpc_method_handler(
            answer, handler.request_deserializer, handler.response_serializer
        )


def _status_bytes(code: grpc.StatusCode, message: str, reason: str) -> bytes:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="pkgloader.wasmer.io"))
    return status_pb2.Status(
        code=code.value[0], message=message, details=[detail]
    ).SerializeToString()


@pytest.mark.parametrize(
    "details",
    [
        pytest.param(b"\xff\xffnot a Status", id="undecodable"),
        pytest.param(
            _status_bytes(grpc.StatusCode.DATA_LOSS, "the gateway is down", "HASH_MISMATCH"),
            id="code-disagrees",
        ),
        pytest.param(
            _status_bytes(grpc.StatusCode.UNAVAILABLE, "another message", "HASH_MISMATCH"),
            id="message-disagrees",
        ),
    ],
)
def test_status_details_that_do_not_match_the_call_are_ignored(
    tmp_path: Path, details: bytes
) -> None:
    """grpcio-status decodes the details: ones that do not decode, or whose code or message
    differ from the call's (rewritten by a proxy), are no ErrorInfo; the code classes it."""
    with (
        custom_server(tmp_path, interceptors=(RewritesStatus(details),)) as srv,
        PackageLoaderClient(srv.address) as client,
        pytest.raises(ServiceUnavailable) as caught,
    ):
        client.evict([HELLO.sha256])
    assert caught.value.reason == ""
    assert caught.value.message == "the gateway is down"


def test_tls_with_a_private_ca_and_a_client_certificate(tmp_path: Path, pki: Pki) -> None:
    """tls_ca/tls_cert/tls_key connect to a server that requires mutual TLS; without the client
    certificate the handshake fails and the client raises ServiceUnavailable."""
    creds = pki.server_credentials(require_client_cert=True)
    with custom_server(tmp_path, credentials=creds) as srv:
        with PackageLoaderClient(
            srv.address, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key
        ) as client:
            assert client.load(HELLO.url, HELLO.sha256).sha256 == HELLO.sha256
        with (
            PackageLoaderClient(srv.address, tls_ca=pki.ca.read_bytes(), timeout=5) as no_cert,
            pytest.raises(ServiceUnavailable),
        ):
            no_cert.health()


def test_tls_options_are_checked() -> None:
    """A client certificate without its key, or tls=False with TLS files, is refused early."""
    with pytest.raises(ValueError, match="both"):
        PackageLoaderClient(tls_cert=b"x")
    with pytest.raises(ValueError, match="contradicts"):
        PackageLoaderClient(tls=False, tls_ca=b"x")


# The failures a real server produces for real reasons, one per class of the client's tree.


def _junk_package(server: Running) -> tuple[str, str]:
    junk = b"this is not a package" * 10
    path = server.app.settings.file_roots[1] / "junk.webc"
    path.write_bytes(junk)
    return path.as_uri(), sha256(junk)


def test_error_classes_for_real_failures(server: Running, httpserver: HTTPServer) -> None:
    """Each real failure raises its class, with the server's reason and metadata."""
    httpserver.expect_request("/404").respond_with_data("no", status=404)
    httpserver.expect_request("/403").respond_with_data("no", status=403)
    httpserver.expect_request("/br").respond_with_data(b"weird", headers={"Content-Encoding": "br"})
    junk_url, junk_sha = _junk_package(server)
    missing = server.app.settings.file_roots[1] / "missing.webc"
    cases: list[tuple[str, str, type[PkgloaderError], str]] = [
        (HELLO.url, "abc", InvalidArgument, "INVALID_SHA256"),
        ("ftp://127.0.0.1/x.webc", HELLO.sha256, InvalidArgument, "INVALID_URL"),
        ("file:///etc/hostname", HELLO.sha256, PermissionDenied, "FILE_OUTSIDE_ROOTS"),
        (missing.as_uri(), HELLO.sha256, PackageNotFound, "UPSTREAM_NOT_FOUND"),
        (httpserver.url_for("/404"), HELLO.sha256, PackageNotFound, "UPSTREAM_NOT_FOUND"),
        (httpserver.url_for("/403"), HELLO.sha256, UpstreamRejected, "UPSTREAM_REJECTED"),
        (httpserver.url_for("/br"), HELLO.sha256, ContentDecodingError, "CONTENT_DECODING"),
        (HELLO.url, DASH.sha256, HashMismatch, "HASH_MISMATCH"),
        (junk_url, junk_sha, InvalidPackage, "INVALID_PACKAGE"),
    ]
    with PackageLoaderClient(server.address) as client:
        for url, sha, cls, reason in cases:
            with pytest.raises(PkgloaderError) as caught:
                client.load(url, sha)
            assert type(caught.value) is cls, (url, caught.value)
            assert caught.value.reason == reason
            assert caught.value.message
    with PackageLoaderClient(server.address) as client, pytest.raises(HashMismatch) as mismatch:
        client.load(HELLO.url, DASH.sha256)
    assert mismatch.value.expected_sha256 == DASH.sha256
    assert mismatch.value.actual_sha256 == HELLO.sha256
    assert mismatch.value.code == grpc.StatusCode.DATA_LOSS


def test_upstream_unavailable_after_retries(make_server, httpserver: HTTPServer) -> None:
    """A persistent 503 raises UpstreamUnavailable carrying the URL."""
    server = make_server(download_timeout=0.5)
    httpserver.expect_request("/503").respond_with_data("later", status=503)
    with PackageLoaderClient(server.address) as client, pytest.raises(UpstreamUnavailable) as e:
        client.load(httpserver.url_for("/503"), HELLO.sha256)
    assert e.value.url == httpserver.url_for("/503")


def test_package_too_large(make_server) -> None:
    """A package over the server's limit raises PackageTooLarge (a ResourceExhausted)."""
    server = make_server(max_package_bytes=1000)
    with PackageLoaderClient(server.address) as client, pytest.raises(PackageTooLarge) as e:
        client.load(DASH.url, DASH.sha256)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_no_disk_cache(make_server) -> None:
    """A cache RPC on a memory-only server raises NoDiskCache."""
    server = make_server(cache_dir=None)
    with PackageLoaderClient(server.address) as client, pytest.raises(NoDiskCache):
        client.scan()


def test_internal_error_reveals_nothing(tmp_path: Path) -> None:
    """An unexpected server exception raises InternalError with the server's generic message."""
    with (
        custom_server(tmp_path, servicer=FailsMidStream) as srv,
        PackageLoaderClient(srv.address) as client,
        pytest.raises(InternalError) as caught,
    ):
        client.load(WABT.url, WABT.sha256, include_content=True)
    assert caught.value.reason == "INTERNAL"
    assert "disk" not in caught.value.message


def test_unreachable_server_is_service_unavailable() -> None:
    """Nobody listening raises ServiceUnavailable, within the deadline."""
    with (
        PackageLoaderClient(f"127.0.0.1:{free_port()}", timeout=5) as client,
        pytest.raises(ServiceUnavailable),
    ):
        client.health()


def test_hash_validation_must_be_a_known_mode(server: Running) -> None:
    """An unknown hash_validation is refused before any call."""
    with PackageLoaderClient(server.address) as client, pytest.raises(InvalidArgument):
        client.load(HELLO.url, HELLO.sha256, hash_validation="sometimes")  # type: ignore[arg-type]


def test_hash_validation_warn_returns_the_package_with_a_warning(server: Running) -> None:
    """hash_validation='warn' returns mismatching content with a warning instead of failing."""
    with PackageLoaderClient(server.address) as client:
        package = client.load(HELLO.url, DASH.sha256, hash_validation="warn", include_content=True)
    assert package.content == HELLO.data
    assert package.warnings
    assert "mismatch" in package.warnings[0]


@pytest.mark.parametrize("error", SERVER_ERRORS, ids=lambda e: e.reason)
def test_every_server_error_reaches_the_client_as_its_class(
    tmp_path: Path, error: errors.PkgloaderError
) -> None:
    """Each error class of the server, mapped by the real interceptor, arrives as its client
    class with the reason and metadata intact, on a stream and on a unary-stream scan alike."""
    from tests.client.conftest import raising

    with (
        custom_server(tmp_path, servicer=raising(error)) as srv,
        PackageLoaderClient(srv.address) as client,
    ):
        for call in (lambda: client.load(HELLO.url, HELLO.sha256), client.scan):
            with pytest.raises(PkgloaderError) as caught:
                call()
            assert type(caught.value) is expected_class(error)
            assert caught.value.reason == error.reason
            assert caught.value.metadata == error.metadata
