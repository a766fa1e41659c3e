"""The asyncio client against a real server: the same calls, errors and atomicity as the blocking
one. Each test drives its coroutine with asyncio.run (no event-loop plugin needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from pkgloader import app as app_module
from pkgloader import errors
from pkgloader_client import (
    AsyncPackageLoaderClient,
    DeadlineExceeded,
    HashMismatch,
    InternalError,
    InvalidArgument,
    NoDiskCache,
    PackageNotFound,
    PermissionDenied,
    PkgloaderError,
    ServiceUnavailable,
    ServingStatus,
    Source,
    TransferError,
    Unauthenticated,
)

from tests.client.conftest import (
    DropsLastChunk,
    FailsMidStream,
    FlipsAByte,
    Pki,
    RequireToken,
    StallsMidStream,
    custom_server,
    free_port,
    raising,
)
from tests.client.test_api import SERVER_ERRORS, expected_class
from tests.conftest import DASH, HELLO, STATIC, WABT, Running


def test_every_call(server: Running, tmp_path: Path) -> None:
    """load, load_to, scan, retain, evict, validate_cache and health work through grpc.aio."""

    async def main() -> None:
        async with AsyncPackageLoaderClient(server.address) as client:
            package = await client.load(DASH.url, DASH.sha256, package_id="dash")
            assert package.source is Source.DOWNLOAD
            assert package.manifest.entrypoint == "dash"
            assert package.content is None
            full = await client.load(HELLO.url, HELLO.sha256, include_content=True)
            assert full.content == HELLO.data
            saved = await client.load_to(tmp_path / "wabt.webc", WABT.url, WABT.sha256)
            assert saved.size == WABT.size
            entries = await client.scan(batch_size=1)
            assert sorted(e.sha256 for e in entries) == sorted(
                [DASH.sha256, HELLO.sha256, WABT.sha256]
            )
            dry = await client.retain(keep=[WABT.sha256], dry_run=True)
            assert sorted(e.sha256 for e in dry.removed) == sorted([DASH.sha256, HELLO.sha256])
            evicted = await client.evict([HELLO.sha256], delete_files=True)
            assert evicted.deleted == (HELLO.sha256,)
            report = await client.validate_cache(deep=True)
            assert report.ok
            assert report.checked_files == 2
            removed = await client.retain(remove=[DASH.sha256])
            assert [e.sha256 for e in removed.removed] == [DASH.sha256]
            assert await client.health() is ServingStatus.SERVING
            assert await client.health("no.such.Service") is ServingStatus.SERVICE_UNKNOWN
            app_module.set_serving(server.app, False)
            assert await client.health() is ServingStatus.NOT_SERVING

    asyncio.run(main())
    assert (tmp_path / "wabt.webc").read_bytes() == WABT.data


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
    """A stream that fails, times out, or delivers wrong bytes mid-way leaves no file behind."""
    out = tmp_path / "out"
    out.mkdir()
    seen: list[int] = []

    async def main() -> None:
        async with AsyncPackageLoaderClient(srv.address) as client:
            await client.load_to(
                out / "wabt.webc",
                WABT.url,
                WABT.sha256,
                timeout=timeout,
                progress=lambda n, t: seen.append(n),
            )

    with custom_server(tmp_path / "srv", servicer=servicer) as srv, pytest.raises(error):
        asyncio.run(main())
    assert max(seen) >= 1024 * 1024
    assert list(out.iterdir()) == []


def test_errors_of_real_failures(make_server, server: Running) -> None:
    """Real failures raise their classes through grpc.aio as through the blocking client."""
    missing = server.app.settings.file_roots[1] / "missing.webc"
    memory_only = make_server(cache_dir=None)

    async def main() -> None:
        async with AsyncPackageLoaderClient(server.address) as client:
            for url, sha, cls in [
                (HELLO.url, "abc", InvalidArgument),
                ("file:///etc/hostname", HELLO.sha256, PermissionDenied),
                (missing.as_uri(), HELLO.sha256, PackageNotFound),
            ]:
                with pytest.raises(cls):
                    await client.load(url, sha)
            with pytest.raises(HashMismatch) as caught:
                await client.load(STATIC.url, HELLO.sha256)
            assert caught.value.expected_sha256 == HELLO.sha256
            assert caught.value.actual_sha256 == STATIC.sha256
        async with AsyncPackageLoaderClient(memory_only.address) as client:
            with pytest.raises(NoDiskCache):
                await client.scan()
        async with AsyncPackageLoaderClient(f"127.0.0.1:{free_port()}", timeout=5) as client:
            with pytest.raises(ServiceUnavailable):
                await client.health()

    asyncio.run(main())


@pytest.mark.parametrize("error", SERVER_ERRORS, ids=lambda e: e.reason)
def test_every_server_error_reaches_the_client_as_its_class(
    tmp_path: Path, error: errors.PkgloaderError
) -> None:
    """Each server error class arrives through grpc.aio as its client class with its metadata."""

    async def main() -> PkgloaderError:
        async with AsyncPackageLoaderClient(srv.address) as client:
            with pytest.raises(PkgloaderError) as caught:
                await client.load(HELLO.url, HELLO.sha256)
            return caught.value

    with custom_server(tmp_path, servicer=raising(error)) as srv:
        raised = asyncio.run(main())
    assert type(raised) is expected_class(error)
    assert raised.reason == error.reason
    assert raised.metadata == error.metadata


def test_token_and_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    """The async client sends its bearer token and speaks mutual TLS with a private CA."""
    gate = RequireToken("t0ken")
    creds = pki.server_credentials(require_client_cert=True)

    async def main(address: str) -> None:
        async with AsyncPackageLoaderClient(
            address,
            token="t0ken",
            tls_ca=pki.ca,
            tls_cert=pki.client_cert,
            tls_key=pki.client_key,
        ) as client:
            assert (await client.load(HELLO.url, HELLO.sha256)).sha256 == HELLO.sha256
        async with AsyncPackageLoaderClient(
            address, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key
        ) as anonymous:
            with pytest.raises(Unauthenticated) as caught:
                await anonymous.scan()
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED

    with custom_server(tmp_path, interceptors=(gate,), credentials=creds) as srv:
        asyncio.run(main(srv.address))
    assert gate.seen == ["Bearer t0ken", None]
