"""The reference loader's own tests (builtin_loader.rs), ported to real parts.

Where the reference used a dummy HTTP client we use a real HTTP server on loopback; where it
used python.webc we use the real fixtures. Where we deliberately differ (a mismatching download is
never stored) the test says so.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
import zstandard
from pkgloader import __version__
from pkgloader.errors import ContentDecodingError
from pkgloader.fetch.decoding import decode, parse_content_encoding
from pkgloader_client import pb
from pytest_httpserver import HTTPServer

from tests.conftest import WABT, Running


def test_cache_misses_will_trigger_a_download(server: Running, httpserver: HTTPServer) -> None:
    """A miss GETs the URL with the reference's headers, saves to disk, and caches in memory."""
    httpserver.expect_request("/python/python").respond_with_data(WABT.data)
    package, _ = server.load(
        httpserver.url_for("/python/python"), WABT.sha256, package_id="python/python@0.1.0"
    )
    request, _ = httpserver.log[0]
    assert request.method == "GET"
    assert request.url == httpserver.url_for("/python/python")
    assert request.headers["Accept-Encoding"] == "zstd;q=1.0, gzip;q=0.8"
    assert request.headers["Accept"] == "application/webc"
    assert request.headers["User-Agent"] == f"pkgloader/{__version__}"
    assert package.manifest.commands[0].name == "wat2wasm"  # the right package came back
    path = server.app.settings.cache_dir / f"{WABT.sha256}.bin"
    assert path.read_bytes() == WABT.data
    assert WABT.sha256 in server.app.loader.memory


def test_can_disable_in_memory_cache(make_server, httpserver: HTTPServer) -> None:
    """With the memory cache off, loads work and nothing is held in memory."""
    server = make_server(memory_cache_bytes=0)
    httpserver.expect_request("/p").respond_with_data(WABT.data)
    server.load(httpserver.url_for("/p"), WABT.sha256)
    assert not server.app.loader.memory.enabled
    assert len(server.app.loader.memory) == 0


def test_evict_cached_removes_in_memory_container(server: Running) -> None:
    """Evict removes the memory entry; evicting again finds nothing."""
    server.load(WABT.url, WABT.sha256)
    assert list(server.stub.Evict(pb.EvictRequest(webc_sha256=[WABT.sha256])).evicted) == [
        WABT.sha256
    ]
    assert WABT.sha256 not in server.app.loader.memory
    assert list(server.stub.Evict(pb.EvictRequest(webc_sha256=[WABT.sha256])).evicted) == []


def _decode(header: bytes | None, body: bytes) -> bytes:
    return b"".join(decode([body], parse_content_encoding(header)))


def test_decode_response_body_passthrough() -> None:
    """No header, or identity, leaves the body unchanged."""
    assert _decode(None, b"plain-bytes") == b"plain-bytes"
    assert _decode(b"identity", b"plain-bytes") == b"plain-bytes"


def test_decode_response_body_empty_encoding_list() -> None:
    """An empty or whitespace-only list means no encoding."""
    assert _decode(b" , , ", b"plain-bytes") == b"plain-bytes"


def test_decode_response_body_non_utf8_encoding_header() -> None:
    """A non-UTF-8 Content-Encoding is an error saying so."""
    with pytest.raises(ContentDecodingError, match="non-utf8 content-encoding"):
        _decode(b"\xff", b"bytes")


def test_decode_response_body_gzip() -> None:
    """gzip bodies are gunzipped."""
    assert _decode(b"gzip", gzip.compress(b"gzip-bytes")) == b"gzip-bytes"


def test_decode_response_body_identity_and_gzip() -> None:
    """identity combined with gzip is skipped."""
    assert _decode(b"identity, gzip", gzip.compress(b"gzip-bytes")) == b"gzip-bytes"


def test_decode_response_body_gzip_invalid_payload() -> None:
    """An invalid gzip payload fails with the reference's text."""
    with pytest.raises(ContentDecodingError, match="failed to decode response body"):
        _decode(b"gzip", b"not-gzip")


def test_decode_response_body_zstd() -> None:
    """zstd bodies are decompressed."""
    assert _decode(b"zstd", zstandard.ZstdCompressor().compress(b"zstd-bytes")) == b"zstd-bytes"


def test_decode_response_body_zstd_invalid_payload() -> None:
    """An invalid zstd payload fails with the reference's text."""
    with pytest.raises(ContentDecodingError, match="failed to decode response body"):
        _decode(b"zstd", b"not-zstd")


def test_decode_response_body_zstd_and_gzip() -> None:
    """`gzip, zstd` is undone in reverse: zstd first, then gzip."""
    body = zstandard.ZstdCompressor().compress(gzip.compress(b"layered-bytes"))
    assert _decode(b"gzip, zstd", body) == b"layered-bytes"


def test_decode_response_body_unknown_encoding() -> None:
    """An unknown coding is named in the error."""
    with pytest.raises(ContentDecodingError, match="unsupported content-encoding: br"):
        _decode(b"br", b"weird")


def test_decoding_streams_with_bounded_chunks() -> None:
    """Unlike the reference (whole body in, whole body out), output comes in chunks ≤ 1 MiB."""
    body = gzip.compress(b"\0" * (20 * 1024 * 1024))
    sizes = [len(c) for c in decode([body], ["gzip"])]
    assert sum(sizes) == 20 * 1024 * 1024
    assert max(sizes) <= 1024 * 1024


def test_builtin_package_downloader_cache_validation(server: Running) -> None:
    """A file named by the wrong hash (upper case, the reference's Display form) is pruned."""
    contents = b"fail"
    used = "0000a28ea38a000f3a3328cb7fabe330638d3258affe1a869e3f92986222d997"
    path: Path = server.app.settings.cache_dir / f"{used.upper()}.bin"
    path.write_bytes(contents)
    response = server.stub.ValidateCache(pb.ValidateCacheRequest(mode=pb.CACHE_VALIDATION_PRUNE))
    assert len(response.mismatches) == 1
    assert response.mismatches[0].actual_sha256 == hashlib.sha256(contents).hexdigest()
    assert response.mismatches[0].expected_sha256 == used
    assert not path.exists()


def test_file_cache_scan_retain(server: Running, tmp_path: Path) -> None:
    """Scan sees 0, then 2 entries; Retain keeping one deletes the other; Scan sees 1."""
    from tests.conftest import DASH, HELLO

    def scanned() -> list[str]:
        return [e.webc_sha256 for r in server.stub.Scan(pb.ScanRequest()) for e in r.entries]

    assert scanned() == []
    server.load(HELLO.url, HELLO.sha256)
    server.load(DASH.url, DASH.sha256)
    assert sorted(scanned()) == sorted([HELLO.sha256, DASH.sha256])
    server.stub.Retain(pb.RetainRequest(keep_sha256=[HELLO.sha256]))
    root = server.app.settings.cache_dir
    assert (root / f"{HELLO.sha256}.bin").exists()
    assert not (root / f"{DASH.sha256}.bin").exists(), "Path 2 should have been deleted"
    assert scanned() == [HELLO.sha256]
