"""Load through the real gRPC API: sources, encodings, tokens, file roots, hash policies, errors."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import zstandard
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pkgloader import __version__
from pkgloader_client import pb
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.conftest import (
    ALL,
    COWSAY,
    DASH,
    HELLO,
    STATIC,
    WABT,
    Running,
    Waiters,
    load_request,
    sha256,
)


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None, "the error carries no google.rpc.Status"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def expect_error(call: Callable[[], object], code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def cache_files(server: Running) -> list[str]:
    root = server.app.settings.cache_dir
    assert root is not None
    return sorted(p.name for p in root.iterdir() if p.is_file())


@pytest.mark.parametrize("fixture", ALL, ids=lambda f: f.format + ":" + f.name[:12])
def test_load_each_fixture_from_http_returns_format_and_exact_bytes(
    server: Running, httpserver: HTTPServer, fixture
) -> None:
    """Every real package downloads, parses, is stored under its hash, and streams back intact."""
    httpserver.expect_request("/pkg").respond_with_data(fixture.data)
    package, content = server.load(httpserver.url_for("/pkg"), fixture.sha256, include_content=True)
    assert package.source == pb.SOURCE_DOWNLOAD
    assert package.format == fixture.format
    assert package.size == fixture.size
    assert package.webc_sha256 == fixture.sha256
    assert package.cache_path == f"{fixture.sha256}.bin"
    assert content == fixture.data
    assert cache_files(server) == [f"{fixture.sha256}.bin"]
    assert (server.app.settings.cache_dir / package.cache_path).read_bytes() == fixture.data


def test_request_headers_match_the_reference_loader(
    server: Running, httpserver: HTTPServer
) -> None:
    """Accept, User-Agent and Accept-Encoding are sent as the reference sends them, no token."""
    httpserver.expect_request("/pkg").respond_with_data(HELLO.data)
    server.load(httpserver.url_for("/pkg"), HELLO.sha256)
    request, _ = httpserver.log[0]
    assert request.method == "GET"
    assert request.headers["Accept"] == "application/webc"
    assert request.headers["User-Agent"] == f"pkgloader/{__version__}"
    assert request.headers["Accept-Encoding"] == "zstd;q=1.0, gzip;q=0.8"
    assert "Authorization" not in request.headers


def test_token_is_sent_only_to_its_authority(make_server, httpserver: HTTPServer) -> None:
    """A configured token goes to host:port it is configured for, as a Bearer header."""
    authority = f"127.0.0.1:{httpserver.port}"
    server = make_server(
        tokens={authority: "s3cret-token", "other.example:1": "nope"},
        plaintext_token_authorities=(authority,),  # loopback http: allowed by name
    )
    httpserver.expect_request("/pkg").respond_with_data(HELLO.data)
    server.load(httpserver.url_for("/pkg"), HELLO.sha256)
    assert httpserver.log[0][0].headers["Authorization"] == "Bearer s3cret-token"


def test_token_is_not_sent_after_a_redirect_to_another_authority(
    make_server, httpserver: HTTPServer
) -> None:
    """A redirect to another host:port never carries the first host's token."""
    other = HTTPServer(host="127.0.0.1", port=0)
    other.start()
    try:
        other.expect_request("/pkg").respond_with_data(HELLO.data)
        first = f"127.0.0.1:{httpserver.port}"
        server = make_server(
            tokens={first: "first-host-token"},
            plaintext_token_authorities=(first, f"127.0.0.1:{other.port}"),
        )
        httpserver.expect_request("/start").respond_with_data(
            "", status=302, headers={"Location": other.url_for("/pkg")}
        )
        package, _ = server.load(httpserver.url_for("/start"), HELLO.sha256)
        assert package.size == HELLO.size
        assert httpserver.log[0][0].headers["Authorization"] == "Bearer first-host-token"
        assert "Authorization" not in other.log[0][0].headers
    finally:
        other.clear()
        other.stop()


@pytest.mark.parametrize(
    ("header", "encode"),
    [
        ("gzip", gzip.compress),
        ("zstd", zstandard.ZstdCompressor().compress),
        ("gzip, zstd", lambda d: zstandard.ZstdCompressor().compress(gzip.compress(d))),
        ("identity, gzip", gzip.compress),
        ("identity", lambda d: d),
        (" , , ", lambda d: d),
    ],
)
def test_content_encodings_are_undone(
    server: Running, httpserver: HTTPServer, header, encode
) -> None:
    """Content-Encoding lists are undone in reverse order, as the reference does."""
    httpserver.expect_request("/pkg").respond_with_data(
        encode(DASH.data), headers={"Content-Encoding": header}
    )
    package, content = server.load(httpserver.url_for("/pkg"), DASH.sha256, include_content=True)
    assert content == DASH.data
    assert package.format == "webc-v1"


@pytest.mark.parametrize(
    ("header", "body", "text"),
    [
        ("br", b"weird", "unsupported content-encoding: br"),
        ("gzip", b"not-gzip", "failed to decode response body"),
        ("zstd", b"not-zstd", "failed to decode response body"),
        ("\xff", b"bytes", "non-utf8 content-encoding"),
        ("gzip", gzip.compress(HELLO.data)[:-10], "truncated"),
        ("zstd", zstandard.ZstdCompressor().compress(DASH.data)[:-3], "truncated"),
    ],
)
def test_bad_encodings_fail_clearly_and_store_nothing(
    server: Running, httpserver: HTTPServer, header, body, text
) -> None:
    """Unknown, corrupt, truncated or non-UTF-8 encodings: FAILED_PRECONDITION, nothing cached."""
    httpserver.expect_request("/pkg").respond_with_data(body, headers={"Content-Encoding": header})
    err = expect_error(
        lambda: server.load(httpserver.url_for("/pkg"), HELLO.sha256),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert text in err.details()
    assert "could not decode response body" in err.details()
    assert error_info(err).reason == "CONTENT_DECODING"
    assert cache_files(server) == []


def test_second_load_comes_from_memory_then_disk_after_evict(server: Running) -> None:
    """Lookup order: download, then memory; after Evict(MEMORY), disk (promoted again)."""
    assert server.load(WABT.url, WABT.sha256)[0].source == pb.SOURCE_DOWNLOAD
    assert server.load(WABT.url, WABT.sha256)[0].source == pb.SOURCE_MEMORY
    evicted = server.stub.Evict(pb.EvictRequest(webc_sha256=[WABT.sha256]))
    assert list(evicted.evicted) == [WABT.sha256]
    assert list(evicted.deleted) == []
    package, content = server.load(WABT.url, WABT.sha256, include_content=True)
    assert package.source == pb.SOURCE_DISK
    assert content == WABT.data
    assert server.load(WABT.url, WABT.sha256)[0].source == pb.SOURCE_MEMORY


def test_memory_cache_can_be_disabled(make_server) -> None:
    """With PKGLOADER_MEMORY_CACHE_BYTES=0 every hit is served from disk."""
    server = make_server(memory_cache_bytes=0)
    assert server.load(DASH.url, DASH.sha256)[0].source == pb.SOURCE_DOWNLOAD
    package, content = server.load(DASH.url, DASH.sha256, include_content=True)
    assert package.source == pb.SOURCE_DISK
    assert content == DASH.data
    assert len(server.app.loader.memory) == 0


def test_memory_cache_is_bounded_by_bytes(make_server) -> None:
    """The memory tier never holds more than its budget; the least recently used goes first."""
    server = make_server(memory_cache_bytes=DASH.size + COWSAY.size + 10)
    for fixture in (DASH, COWSAY, HELLO):
        server.load(fixture.url, fixture.sha256)
    memory = server.app.loader.memory
    assert memory.bytes <= memory.budget
    assert DASH.sha256 not in memory
    assert HELLO.sha256 in memory
    assert server.load(WABT.url, WABT.sha256)[0].source == pb.SOURCE_DOWNLOAD
    assert WABT.sha256 not in memory  # larger than the whole budget: served from its file
    assert server.load(WABT.url, WABT.sha256)[0].source == pb.SOURCE_DISK


def test_memory_only_mode_keeps_no_files(make_server, tmp_path: Path) -> None:
    """Without a cache folder, packages are served and kept in memory only."""
    server = make_server(cache_dir=None)
    package, content = server.load(COWSAY.url, COWSAY.sha256, include_content=True)
    assert (package.source, package.cache_path, content) == (pb.SOURCE_DOWNLOAD, "", COWSAY.data)
    assert server.load(COWSAY.url, COWSAY.sha256)[0].source == pb.SOURCE_MEMORY
    assert not (tmp_path / "cache").exists()
    err = expect_error(
        lambda: server.stub.ValidateCache(pb.ValidateCacheRequest()),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "no disk cache configured" in err.details()


def test_include_content_chunks_are_at_most_one_mib(server: Running) -> None:
    """Content arrives in order as chunks of at most 1 MiB after exactly one package item."""
    responses = list(server.stub.Load(load_request(WABT.url, WABT.sha256, include_content=True)))
    kinds = [r.WhichOneof("item") for r in responses]
    assert kinds[0] == "package"
    assert set(kinds[1:]) == {"chunk"}
    assert max(len(r.chunk) for r in responses[1:]) == 1024 * 1024
    assert b"".join(r.chunk for r in responses[1:]) == WABT.data


# -- hash policies --------------------------------------------------------------------------


def test_mismatch_fails_with_data_loss_and_the_reference_message(
    server: Running, httpserver: HTTPServer
) -> None:
    """FAIL (the default): DATA_LOSS with the seed's wording and both hashes; nothing stored."""
    wrong = "aa" * 32
    httpserver.expect_request("/pkg").respond_with_data(HELLO.data)
    url = httpserver.url_for("/pkg")
    err = expect_error(lambda: server.load(url, wrong), grpc.StatusCode.DATA_LOSS)
    assert err.details() == (
        f"image hash mismatch! expected hash '{wrong.upper()}', but the computed hash is "
        f"'{HELLO.sha256.upper()}' (source '{url}')"
    )
    info = error_info(err)
    assert info.reason == "HASH_MISMATCH"
    assert info.metadata["expected_sha256"] == wrong
    assert info.metadata["actual_sha256"] == HELLO.sha256
    assert cache_files(server) == []
    assert len(server.app.loader.memory) == 0


@pytest.mark.parametrize("mode", [pb.HASH_VALIDATION_WARN, pb.HASH_VALIDATION_NONE])
def test_mismatch_under_warn_or_none_is_served_but_never_stored(
    server: Running, httpserver: HTTPServer, mode: int
) -> None:
    """WARN returns the content with a warning, NONE silently; neither caches it anywhere."""
    wrong = "bb" * 32
    httpserver.expect_request("/pkg").respond_with_data(DASH.data)
    package, content = server.load(
        httpserver.url_for("/pkg"), wrong, include_content=True, hash_validation=mode
    )
    assert content == DASH.data
    assert package.cache_path == ""
    assert package.webc_sha256 == wrong  # what was asked for; the warning names the real one
    if mode == pb.HASH_VALIDATION_WARN:
        assert len(package.warnings) == 1
        assert DASH.sha256.upper() in package.warnings[0]
    else:
        assert list(package.warnings) == []
    assert cache_files(server) == []
    assert len(server.app.loader.memory) == 0


def test_server_default_policy_applies_when_unspecified(
    make_server, httpserver: HTTPServer
) -> None:
    """PKGLOADER_HASH_VALIDATION=warn makes an unspecified request warn instead of fail."""
    from pkgloader.policy import HashPolicy

    server = make_server(hash_validation=HashPolicy.WARN)
    httpserver.expect_request("/pkg").respond_with_data(HELLO.data)
    package, _ = server.load(httpserver.url_for("/pkg"), "cc" * 32)
    assert len(package.warnings) == 1


# -- file:// ---------------------------------------------------------------------------------


def test_file_url_inside_roots_is_read(server: Running) -> None:
    """file:// URLs under PKGLOADER_FILE_ROOTS load like downloads."""
    package, content = server.load(STATIC.url, STATIC.sha256, include_content=True)
    assert (package.source, package.format, content) == (pb.SOURCE_DOWNLOAD, "webc-v3", STATIC.data)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "file:///work/../etc/passwd",
        "file://{fixtures}/../../../etc/passwd",
        "file://{fixtures}/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "file:///dev/zero",
    ],
)
def test_file_url_outside_roots_is_permission_denied(server: Running, url: str) -> None:
    """Paths outside the roots (after resolving .., %2e%2e) are PERMISSION_DENIED."""
    from tests.conftest import FIXTURES

    url = url.format(fixtures=FIXTURES)
    err = expect_error(lambda: server.load(url, HELLO.sha256), grpc.StatusCode.PERMISSION_DENIED)
    assert error_info(err).reason == "FILE_OUTSIDE_ROOTS"


def test_file_urls_are_refused_when_no_roots_are_configured(make_server) -> None:
    """No roots (the default): every file:// URL is PERMISSION_DENIED."""
    server = make_server(file_roots=())
    expect_error(lambda: server.load(HELLO.url, HELLO.sha256), grpc.StatusCode.PERMISSION_DENIED)


def test_symlink_out_of_a_root_is_refused(server: Running, tmp_path: Path) -> None:
    """A symlink inside a root that leads outside it is judged by its target."""
    outside = tmp_path / "outside.webc"
    outside.write_bytes(HELLO.data)
    link = tmp_path / "files" / "link.webc"
    link.symlink_to(outside)
    expect_error(
        lambda: server.load(link.as_uri(), HELLO.sha256), grpc.StatusCode.PERMISSION_DENIED
    )


def test_missing_file_is_not_found(server: Running, tmp_path: Path) -> None:
    """A file:// URL under a root that names no file is NOT_FOUND."""
    missing = tmp_path / "files" / "missing.webc"
    expect_error(lambda: server.load(missing.as_uri(), HELLO.sha256), grpc.StatusCode.NOT_FOUND)


def test_fifo_is_refused_without_hanging(server: Running, tmp_path: Path) -> None:
    """A FIFO under a root is not a regular file: refused at once, never opened for reading."""
    import os

    fifo = tmp_path / "files" / "pipe.webc"
    os.mkfifo(fifo)
    expect_error(
        lambda: server.load(fifo.as_uri(), HELLO.sha256), grpc.StatusCode.PERMISSION_DENIED
    )


# -- upstream errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (404, grpc.StatusCode.NOT_FOUND, "UPSTREAM_NOT_FOUND"),
        (410, grpc.StatusCode.NOT_FOUND, "UPSTREAM_NOT_FOUND"),
        (403, grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_REJECTED"),
        (401, grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_REJECTED"),
        (500, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (502, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
    ],
)
def test_upstream_status_maps_to_grpc_code(
    server: Running, httpserver: HTTPServer, status: int, code, reason: str
) -> None:
    """404/410 NOT_FOUND, other 4xx FAILED_PRECONDITION, 5xx UNAVAILABLE; the seed's message."""
    httpserver.expect_request("/pkg").respond_with_data("no", status=status)
    url = httpserver.url_for("/pkg")
    err = expect_error(lambda: server.load(url, HELLO.sha256), code)
    from http import HTTPStatus

    phrase = f"{status} {HTTPStatus(status).phrase}"
    assert err.details() == (
        f'package download failed: GET request to "{url}" failed with status {phrase}: {phrase}'
    )
    info = error_info(err)
    assert (info.reason, info.metadata["status"], info.metadata["url"]) == (
        reason,
        str(status),
        url,
    )


def test_404_is_not_retried(server: Running, httpserver: HTTPServer) -> None:
    """A 404 is final: exactly one request."""
    httpserver.expect_request("/pkg").respond_with_data("no", status=404)
    expect_error(
        lambda: server.load(httpserver.url_for("/pkg"), HELLO.sha256), grpc.StatusCode.NOT_FOUND
    )
    assert len(httpserver.log) == 1


def test_500_then_200_is_retried(server: Running, httpserver: HTTPServer) -> None:
    """A 5xx before any body is retried with backoff; the next 200 succeeds."""
    httpserver.expect_ordered_request("/pkg").respond_with_data("busy", status=500)
    httpserver.expect_ordered_request("/pkg").respond_with_data(HELLO.data)
    package, _ = server.load(httpserver.url_for("/pkg"), HELLO.sha256)
    assert package.source == pb.SOURCE_DOWNLOAD
    assert len(httpserver.log) == 2


def test_503_message_shows_retry_after(server: Running, httpserver: HTTPServer) -> None:
    """A persistent 503 fails UNAVAILABLE with the reference's "(Retry After: N)" text."""
    httpserver.expect_request("/pkg").respond_with_data(
        "later", status=503, headers={"Retry-After": "0"}
    )
    err = expect_error(
        lambda: server.load(httpserver.url_for("/pkg"), HELLO.sha256), grpc.StatusCode.UNAVAILABLE
    )
    assert err.details().endswith("503 Service Unavailable (Retry After: 0)")


def test_connection_refused_is_unavailable(server: Running) -> None:
    """Nothing listening on the port: UNAVAILABLE, after bounded retries."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    err = expect_error(
        lambda: server.load(f"http://127.0.0.1:{port}/x", HELLO.sha256), grpc.StatusCode.UNAVAILABLE
    )
    assert "could not connect" in err.details()


def test_bytes_that_are_not_a_package_are_refused_and_not_cached(
    server: Running, httpserver: HTTPServer
) -> None:
    """Content that hashes right but is neither webc nor gzip: FAILED_PRECONDITION, not stored."""
    body = b"<html>not a package</html>"
    httpserver.expect_request("/pkg").respond_with_data(body)
    err = expect_error(
        lambda: server.load(httpserver.url_for("/pkg"), sha256(body)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(err).reason == "INVALID_PACKAGE"
    assert "<html" in err.details()
    assert cache_files(server) == []


def test_corrupt_package_with_matching_hash_is_invalid_package(
    server: Running, tmp_path: Path
) -> None:
    """A webc whose bytes match the hash but do not parse: FAILED_PRECONDITION INVALID_PACKAGE."""
    data = bytearray(STATIC.data)
    data[20:40] = b"\xff" * 20  # inside the CBOR index
    bad = tmp_path / "files" / "bad.webc"
    bad.write_bytes(bytes(data))
    err = expect_error(
        lambda: server.load(bad.as_uri(), sha256(bytes(data))), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert error_info(err).reason == "INVALID_PACKAGE"
    assert cache_files(server) == []


def test_package_over_the_size_limit_is_resource_exhausted(
    make_server, httpserver: HTTPServer
) -> None:
    """PKGLOADER_MAX_PACKAGE_BYTES counts decoded bytes, so a small gzip bomb stops early."""
    server = make_server(max_package_bytes=1024 * 1024)
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    httpserver.expect_request("/pkg").respond_with_data(bomb, headers={"Content-Encoding": "gzip"})
    err = expect_error(
        lambda: server.load(httpserver.url_for("/pkg"), HELLO.sha256),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert error_info(err).reason == "PACKAGE_TOO_LARGE"
    assert cache_files(server) == []
    assert list((server.app.settings.cache_dir / "__temp__").iterdir()) == []


def test_declared_size_over_the_limit_fails_before_any_download(
    make_server, httpserver: HTTPServer
) -> None:
    """A webc_size beyond the limit is refused without contacting the upstream."""
    server = make_server(max_package_bytes=1000)
    expect_error(
        lambda: server.load(httpserver.url_for("/pkg"), HELLO.sha256, size=10**9),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert httpserver.log == []


@pytest.mark.parametrize(
    ("url", "sha", "text"),
    [
        ("", HELLO.sha256, "webc_url is required"),
        ("not a url", HELLO.sha256, "spaces"),
        ("/relative/path.webc", HELLO.sha256, "absolute URL"),
        ("ftp://127.0.0.1/x.webc", HELLO.sha256, "unsupported URL scheme 'ftp'"),
        ("javascript:alert(1)", HELLO.sha256, "unsupported URL scheme"),
        ("http://user:pw@127.0.0.1/x", HELLO.sha256, "credentials"),
        ("http://127.0.0.1/x", "", "64 hex digits"),
        ("http://127.0.0.1/x", "xyz", "64 hex digits"),
        ("http://127.0.0.1/x", "g" * 64, "64 hex digits"),
        ("http://127.0.0.1/x", "a" * 63, "64 hex digits"),
    ],
)
def test_bad_requests_are_invalid_argument(server: Running, url: str, sha: str, text: str) -> None:
    """Malformed hashes and URLs are INVALID_ARGUMENT with a message naming the problem."""
    err = expect_error(lambda: server.load(url, sha), grpc.StatusCode.INVALID_ARGUMENT)
    assert text in err.details()
    assert cache_files(server) == []


def test_uppercase_hash_is_accepted_and_normalised(server: Running) -> None:
    """Hex digits in either case name the same package; responses use lowercase."""
    package, _ = server.load(HELLO.url, HELLO.sha256.upper())
    assert package.webc_sha256 == HELLO.sha256
    assert package.cache_path == f"{HELLO.sha256}.bin"


def test_unknown_enum_value_is_invalid_argument(server: Running) -> None:
    """An enum number the server does not know is refused, not guessed."""
    request = load_request(HELLO.url, HELLO.sha256)
    request.hash_validation = 42  # type: ignore[assignment]  # no such value, on purpose
    expect_error(lambda: list(server.stub.Load(request)), grpc.StatusCode.INVALID_ARGUMENT)


# -- single flight ------------------------------------------------------------------------------


def test_fifty_concurrent_loads_make_one_upstream_request(
    make_server, httpserver: HTTPServer
) -> None:
    """Concurrent Loads of one package share one download, and all get the right bytes."""
    # All 50 on one connection: allow them (the default is 16 content streams per connection).
    server = make_server(workers=64, max_content_streams_per_connection=64)
    release = threading.Event()

    def slow(request: Request) -> Response:
        release.wait(10)
        return Response(WABT.data)

    httpserver.expect_request("/pkg").respond_with_handler(slow)
    url = httpserver.url_for("/pkg")
    waiters = Waiters.install(server)
    with ThreadPoolExecutor(50) as pool:
        calls = [
            pool.submit(server.load, url, WABT.sha256, include_content=True) for _ in range(50)
        ]
        joined = waiters.wait_for(50)  # every call waits on the one download
        release.set()
        results = [c.result(timeout=30) for c in calls]
    assert joined
    assert len(httpserver.log) == 1
    assert all(content == WABT.data for _, content in results)
    assert {p.source for p, _ in results} == {pb.SOURCE_DOWNLOAD}


def test_concurrent_loads_share_a_failure_too(make_server, httpserver: HTTPServer) -> None:
    """Joined callers of a failing download all get its error; one upstream request."""
    server = make_server(workers=32)
    release = threading.Event()

    def slow(request: Request) -> Response:
        release.wait(10)
        return Response("gone", status=404)

    httpserver.expect_request("/pkg").respond_with_handler(slow)
    url = httpserver.url_for("/pkg")
    waiters = Waiters.install(server)
    with ThreadPoolExecutor(20) as pool:
        calls = [pool.submit(server.load, url, HELLO.sha256) for _ in range(20)]
        assert waiters.wait_for(20)  # a call that came after the failure would fetch again
        release.set()
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call.result(timeout=30)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(httpserver.log) == 1


def test_file_url_errors_show_the_url_as_the_client_wrote_it(
    server: Running, tmp_path: Path
) -> None:
    """The url in a file:// error's ErrorInfo is the client's file:///... text, not file:/..."""
    missing = tmp_path / "files" / "missing.webc"
    err = expect_error(
        lambda: server.load(missing.as_uri(), HELLO.sha256), grpc.StatusCode.NOT_FOUND
    )
    assert error_info(err).metadata["url"] == missing.as_uri()
