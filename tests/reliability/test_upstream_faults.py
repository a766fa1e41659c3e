"""Upstream faults from a real HTTP server on 127.0.0.1 that misbehaves on purpose.

Each fault ends in a clear error with the right code (or a correct package), nothing partial in
the cache, and no more requests than the retry rules allow.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import zstandard
from pkgloader.fetch.http import MAX_REDIRECTS, RETRIES
from pkgloader_client import pb

from tests.conftest import DASH, HELLO, WABT, Running
from tests.reliability.conftest import (
    SOAK,
    Conn,
    Upstream,
    assert_cache_sound,
    error_info,
    proc_stats,
    reset_peak_rss,
)

MiB = 1024 * 1024


def fails(server: Running, url: str, sha: str, code: grpc.StatusCode, **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        server.load(url, sha, **kw)
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def cache_of(server: Running) -> Path:
    root = server.app.settings.cache_dir
    assert root is not None
    return root


def ok(data: bytes, headers: dict[str, str] | None = None) -> Callable[[Conn], None]:
    return lambda c: c.respond(200, data, headers)


# -- the body breaks off -----------------------------------------------------------------------


def test_connection_reset_mid_body_is_unavailable_and_not_retried(make_server, upstream) -> None:
    """An RST after half the body: UNAVAILABLE, one request (body bytes came), nothing stored."""

    def behave(c: Conn) -> None:
        c.head(200, {"Content-Length": str(DASH.size)})
        c.send(DASH.data[: DASH.size // 2])
        c.reset()

    up: Upstream = upstream(behave)
    server = make_server()
    err = fails(server, up.url(), DASH.sha256, grpc.StatusCode.UNAVAILABLE)
    assert error_info(err).reason == "UPSTREAM_UNAVAILABLE"
    assert "package download failed" in err.details()
    assert len(up.seen) == 1
    assert assert_cache_sound(cache_of(server)) == []


def test_body_shorter_than_content_length_is_unavailable(make_server, upstream) -> None:
    """A clean close before Content-Length bytes: UNAVAILABLE "broke off", nothing stored."""

    def behave(c: Conn) -> None:
        c.head(200, {"Content-Length": str(DASH.size)})
        c.send(DASH.data[:1000])

    up = upstream(behave)
    server = make_server()
    err = fails(server, up.url(), DASH.sha256, grpc.StatusCode.UNAVAILABLE)
    assert "broke off" in err.details()
    assert len(up.seen) == 1
    assert assert_cache_sound(cache_of(server)) == []


def test_chunked_body_without_its_last_chunk_is_unavailable(make_server, upstream) -> None:
    """Chunked transfer cut before the zero-length chunk is a broken body, not a short package."""

    def behave(c: Conn) -> None:
        c.head(200, {"Transfer-Encoding": "chunked"})
        part = DASH.data[:4096]
        c.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")

    up = upstream(behave)
    server = make_server()
    fails(server, up.url(), DASH.sha256, grpc.StatusCode.UNAVAILABLE)
    assert assert_cache_sound(cache_of(server)) == []


def test_close_delimited_truncated_body_is_a_hash_mismatch(make_server, upstream) -> None:
    """With no length to check, a cut body is caught by the hash: DATA_LOSS, never stored."""

    def behave(c: Conn) -> None:
        c.head(200)
        c.send(DASH.data[: DASH.size - 10])

    up = upstream(behave)
    server = make_server()
    err = fails(server, up.url(), DASH.sha256, grpc.StatusCode.DATA_LOSS)
    assert error_info(err).metadata["expected_sha256"] == DASH.sha256
    assert assert_cache_sound(cache_of(server)) == []


# -- slow upstreams ------------------------------------------------------------------------------


def test_stall_after_headers_hits_the_read_timeout(make_server, upstream) -> None:
    """Headers then silence: UNAVAILABLE "timed out while reading the body" after read_timeout."""

    def behave(c: Conn) -> None:
        c.head(200, {"Content-Length": str(DASH.size)})
        c.send(DASH.data[:100])
        c.stall(15)

    up = upstream(behave)
    server = make_server(read_timeout=0.5)
    err = fails(server, up.url(), DASH.sha256, grpc.StatusCode.UNAVAILABLE)
    assert "timed out while reading the body" in err.details()
    assert len(up.seen) == 1
    assert assert_cache_sound(cache_of(server)) == []


def test_stall_before_headers_is_retried_a_bounded_number_of_times(make_server, upstream) -> None:
    """No response at all: a timeout before any body byte, retried, RETRIES+1 requests in all."""
    up = upstream(lambda c: c.stall(15))
    server = make_server(read_timeout=0.5)
    err = fails(server, up.url(), HELLO.sha256, grpc.StatusCode.UNAVAILABLE)
    assert "timed out" in err.details()
    assert len(up.seen) == RETRIES + 1


def test_trickling_upstream_hits_the_overall_deadline(make_server, upstream) -> None:
    """A byte every few ms never trips the read timeout; the download deadline stops it."""

    def behave(c: Conn) -> None:
        c.head(200, {"Content-Length": str(DASH.size)})
        c.trickle(DASH.data, step=64, pause=0.01, limit=20)

    up = upstream(behave)
    server = make_server(read_timeout=5.0, download_timeout=1.5)
    err = fails(server, up.url(), DASH.sha256, grpc.StatusCode.UNAVAILABLE)
    assert "the download deadline passed" in err.details()
    assert len(up.seen) == 1
    assert assert_cache_sound(cache_of(server)) == []


# -- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_status_then_200_is_retried(make_server, upstream, status: int) -> None:
    """429 and 5xx before any body are retried; the next 200 is the package."""

    def behave(c: Conn) -> None:
        if c.index == 0:
            c.respond(status, b"busy")
        else:
            c.respond(200, HELLO.data)

    up = upstream(behave)
    server = make_server()
    package, content = server.load(up.url(), HELLO.sha256, include_content=True)
    assert (package.source, content) == (pb.SOURCE_DOWNLOAD, HELLO.data)
    assert len(up.seen) == 2


def test_persistent_500_gives_up_after_bounded_backoff(make_server, upstream) -> None:
    """A 500 forever: RETRIES+1 requests, gaps at least the doubling backoff, then UNAVAILABLE."""
    up = upstream(lambda c: c.respond(500, b"down"))
    server = make_server()
    err = fails(server, up.url(), HELLO.sha256, grpc.StatusCode.UNAVAILABLE)
    assert error_info(err).metadata["status"] == "500"
    assert len(up.seen) == RETRIES + 1
    gaps = [b.at - a.at for a, b in zip(up.seen, up.seen[1:], strict=False)]
    # Lower bounds only (a sleep never returns early): 0.25 s, 0.5 s, 1 s.
    assert all(gap >= 0.25 * 2**i * 0.9 for i, gap in enumerate(gaps)), gaps


def test_reset_before_any_byte_is_retried(make_server, upstream) -> None:
    """A connection reset before the status line is an idempotent failure: retried."""

    def behave(c: Conn) -> None:
        if c.index == 0:
            c.reset()
        else:
            c.respond(200, HELLO.data)

    up = upstream(behave)
    server = make_server()
    assert server.load(up.url(), HELLO.sha256)[0].size == HELLO.size
    assert len(up.seen) == 2


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.FAILED_PRECONDITION),
        (401, grpc.StatusCode.FAILED_PRECONDITION),
        (403, grpc.StatusCode.FAILED_PRECONDITION),
        (404, grpc.StatusCode.NOT_FOUND),
        (410, grpc.StatusCode.NOT_FOUND),
        (501, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_final_statuses_are_not_retried(make_server, upstream, status: int, code) -> None:
    """4xx (other than 429) and 501 are answers, not hiccups: exactly one request."""
    up = upstream(lambda c: c.respond(status, b"no"))
    server = make_server()
    fails(server, up.url(), HELLO.sha256, code)
    assert len(up.seen) == 1


def test_hash_mismatch_and_invalid_package_are_not_retried(make_server, upstream) -> None:
    """Wrong bytes are wrong every time: one request each, DATA_LOSS / INVALID_PACKAGE."""
    up = upstream(ok(HELLO.data))
    server = make_server()
    fails(server, up.url("/a"), "ab" * 32, grpc.StatusCode.DATA_LOSS)
    assert len(up.seen) == 1
    junk = upstream(ok(b"<html>maintenance</html>"))
    import hashlib

    err = fails(
        server,
        junk.url("/b"),
        hashlib.sha256(b"<html>maintenance</html>").hexdigest(),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(err).reason == "INVALID_PACKAGE"
    assert len(junk.seen) == 1
    assert assert_cache_sound(cache_of(server)) == []


def test_retry_after_is_honoured_within_the_deadline(make_server, upstream) -> None:
    """503 with Retry-After: 1 then 200: the retry waits at least one second, then succeeds."""

    def behave(c: Conn) -> None:
        if c.index == 0:
            c.respond(503, b"later", {"Retry-After": "1"})
        else:
            c.respond(200, HELLO.data)

    up = upstream(behave)
    server = make_server()
    assert server.load(up.url(), HELLO.sha256)[0].size == HELLO.size
    assert len(up.seen) == 2
    assert up.seen[1].at - up.seen[0].at >= 0.95


def test_retry_after_beyond_the_deadline_fails_at_once_with_the_reference_text(
    make_server, upstream
) -> None:
    """A Retry-After past the download deadline is not slept on: UNAVAILABLE, one request."""
    up = upstream(lambda c: c.respond(503, b"later", {"Retry-After": "3600"}))
    server = make_server(download_timeout=20.0)
    err = fails(server, up.url(), HELLO.sha256, grpc.StatusCode.UNAVAILABLE)
    assert err.details() == (
        f'package download failed: GET request to "{up.url()}" failed with status '
        "503 Service Unavailable: 503 Service Unavailable (Retry After: 3600)"
    )
    assert len(up.seen) == 1


# -- redirects ----------------------------------------------------------------------------------


def redirector(final: bytes, hops: int, status: int = 302) -> Callable[[Conn], None]:
    """/0 → /1 → … → /hops, which serves `final`."""

    def behave(c: Conn) -> None:
        step = int(c.request.path.strip("/"))
        if step < hops:
            c.respond(status, b"", {"Location": f"/{step + 1}"})
        else:
            c.respond(200, final)

    return behave


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_followed_up_to_the_limit(make_server, upstream, status: int) -> None:
    """MAX_REDIRECTS hops of any redirect status are followed; the package arrives."""
    up = upstream(redirector(HELLO.data, MAX_REDIRECTS, status))
    server = make_server()
    assert server.load(up.url("/0"), HELLO.sha256)[0].size == HELLO.size
    assert len(up.seen) == MAX_REDIRECTS + 1


def test_one_redirect_too_many_is_refused(make_server, upstream) -> None:
    """MAX_REDIRECTS+1 hops: FAILED_PRECONDITION naming the limit; a loop ends the same way."""
    up = upstream(redirector(HELLO.data, MAX_REDIRECTS + 1))
    server = make_server()
    err = fails(server, up.url("/0"), HELLO.sha256, grpc.StatusCode.FAILED_PRECONDITION)
    assert f"redirected more than {MAX_REDIRECTS} times" in err.details()
    assert len(up.seen) == MAX_REDIRECTS + 1
    loop = upstream(lambda c: c.respond(302, b"", {"Location": c.request.path}))
    fails(server, loop.url("/self"), HELLO.sha256, grpc.StatusCode.FAILED_PRECONDITION)
    assert len(loop.seen) == MAX_REDIRECTS + 1


def test_authorization_follows_the_authority_not_the_chain(make_server, upstream) -> None:
    """A → B → A: the token goes to A both times and never to B (another port is another host)."""
    box: dict[str, Upstream] = {}

    def first(c: Conn) -> None:
        if c.request.path == "/start":
            c.respond(302, b"", {"Location": box["b"].url("/hop")})
        else:
            c.respond(200, HELLO.data)

    box["a"] = upstream(first)
    box["b"] = upstream(lambda c: c.respond(307, b"", {"Location": box["a"].url("/final")}))
    server = make_server(
        tokens={box["a"].authority: "token-for-a"},
        plaintext_token_authorities=(box["a"].authority, box["b"].authority),
    )
    assert server.load(box["a"].url("/start"), HELLO.sha256)[0].size == HELLO.size
    a_seen, b_seen = box["a"].seen, box["b"].seen
    assert [s.headers.get("authorization") for s in a_seen] == ["Bearer token-for-a"] * 2
    assert [s.headers.get("authorization") for s in b_seen] == [None]


@pytest.mark.parametrize(
    "location",
    ["file://{hello}", "file:///etc/passwd", "ftp://127.0.0.1/pkg", "gopher://127.0.0.1:1/_"],
)
def test_redirect_to_another_scheme_is_refused(make_server, upstream, location: str) -> None:
    """A redirect never turns a download into a local read (even inside the file roots)."""
    target = location.format(hello=HELLO.path)
    up = upstream(lambda c: c.respond(302, b"", {"Location": target}))
    server = make_server()
    err = fails(server, up.url(), HELLO.sha256, grpc.StatusCode.INVALID_ARGUMENT)
    assert "which is refused" in err.details()
    assert error_info(err).reason == "INVALID_URL"
    assert len(up.seen) == 1
    assert assert_cache_sound(cache_of(server)) == []


@pytest.mark.parametrize("location", ["http://[::1", "javascript:alert(1)", "http://[zz]/"])
def test_redirect_to_a_malformed_location_is_refused(make_server, upstream, location) -> None:
    """An unusable Location is FAILED_PRECONDITION naming it: not INTERNAL, not retried."""
    up = upstream(lambda c: c.respond(302, b"", {"Location": location}))
    server = make_server()
    err = fails(server, up.url(), HELLO.sha256, grpc.StatusCode.FAILED_PRECONDITION)
    assert "redirected to an invalid location" in err.details()
    assert error_info(err).reason == "UPSTREAM_REJECTED"
    assert len(up.seen) == 1


# -- encodings ----------------------------------------------------------------------------------


def _damage(rng: random.Random, body: bytes) -> tuple[str, bytes]:
    kind = rng.choice(["truncate", "flip", "splice"])
    at = rng.randrange(len(body))
    if kind == "truncate":
        return f"truncate@{at}", body[:at]
    if kind == "flip":
        damaged = bytearray(body)
        damaged[at] ^= 1 << rng.randrange(8)
        return f"flip@{at}", bytes(damaged)
    return f"splice@{at}", body[:at] + bytes(rng.randrange(256) for _ in range(16)) + body[at:]


ENCODED = {
    "gzip": gzip.compress(DASH.data, mtime=0),
    "zstd": zstandard.ZstdCompressor(write_checksum=True).compress(DASH.data),
    "zstd-nocheck": zstandard.ZstdCompressor(write_checksum=False).compress(DASH.data),
}


@pytest.mark.parametrize("encoding", sorted(ENCODED))
def test_damaged_compressed_streams_never_yield_wrong_bytes(
    make_server, upstream, rng: random.Random, encoding: str
) -> None:
    """Truncated, bit-flipped or spliced gzip/zstd streams: a clear error or the exact package."""
    body = ENCODED[encoding]
    header = encoding.split("-")[0]
    current: dict[str, bytes] = {}
    up = upstream(lambda c: c.respond(200, current["body"], {"Content-Encoding": header}))
    server = make_server()
    trials = 200 if SOAK else 40
    outcomes: dict[str, int] = {}
    for trial in range(trials):
        what, current["body"] = _damage(rng, body)
        url = up.url(f"/{trial}")
        try:
            _, content = server.load(url, DASH.sha256, include_content=True)
        except grpc.RpcError as err:
            failure = (err.code(), error_info(err).reason, what, err.details())
        else:
            failure = None
        if failure is not None:
            assert failure[:2] in {
                (grpc.StatusCode.FAILED_PRECONDITION, "CONTENT_DECODING"),
                (grpc.StatusCode.FAILED_PRECONDITION, "INVALID_PACKAGE"),
                (grpc.StatusCode.DATA_LOSS, "HASH_MISMATCH"),
            }, failure
            outcomes[failure[1]] = outcomes.get(failure[1], 0) + 1
        else:
            assert content == DASH.data, what
            outcomes["OK"] = outcomes.get("OK", 0) + 1
            server.stub.Evict(pb.EvictRequest(webc_sha256=[DASH.sha256], scope=pb.EVICT_SCOPE_ALL))
        assert_cache_sound(cache_of(server))
    print(encoding, outcomes)
    assert outcomes.get("CONTENT_DECODING", 0) > 0


def _bomb(encoding: str, total: int) -> bytes:
    """`total` zero bytes compressed, built from repeated members/frames (cheap to make)."""
    piece = 64 * MiB
    if encoding == "gzip":
        member = gzip.compress(b"\0" * piece, compresslevel=9, mtime=0)
    else:
        member = zstandard.ZstdCompressor(level=19).compress(b"\0" * piece)
    return member * (total // piece)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_decompression_bomb_stops_at_the_size_limit_with_flat_memory(
    served, upstream, encoding: str, record_property
) -> None:
    """1 GiB of zeros in ~1 MiB: RESOURCE_EXHAUSTED at the limit; server peak RSS barely moves."""
    limit = 16 * MiB
    bomb = _bomb(encoding, 1024 * MiB)
    assert len(bomb) < 2 * MiB
    up = upstream(ok(bomb, {"Content-Encoding": encoding}))
    server = served(max_package_bytes=limit, memory_cache_bytes=0)
    # Warm up the paths a download takes (threads, buffers), then measure a fresh peak.
    from tests.conftest import HELLO as hello
    from tests.reliability.conftest import load

    load(server.stub, hello.url, hello.sha256)
    reset_peak_rss(server.pid)
    before = proc_stats(server.pid)
    with pytest.raises(grpc.RpcError) as caught:
        load(server.stub, up.url(), WABT.sha256)
    after = proc_stats(server.pid)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "PACKAGE_TOO_LARGE"
    growth = after.hwm - before.rss
    record_property("rss_before", before.rss)
    record_property("peak_rss", after.hwm)
    print(f"{encoding} bomb: rss before {before.rss >> 20} MiB, peak {after.hwm >> 20} MiB")
    assert growth < 48 * MiB, f"peak RSS grew by {growth >> 20} MiB on a {limit >> 20} MiB limit"
    server.kill()


def tar_gz_bomb(zero_mib: int) -> bytes:
    """A valid tar.gz package: a wasmer.toml and a member of `zero_mib` MiB of zeros, ~1000:1."""
    import tarfile

    manifest = b'[package]\nname = "test/bomb"\nversion = "1.0.0"\n'
    first = tarfile.TarInfo("wasmer.toml")
    first.size = len(manifest)
    raw = first.tobuf(format=tarfile.GNU_FORMAT) + manifest + bytes(512 - len(manifest) % 512)
    big = tarfile.TarInfo("zeros.bin")
    big.size = zero_mib * MiB
    raw += big.tobuf(format=tarfile.GNU_FORMAT)
    piece = gzip.compress(bytes(16 * MiB), compresslevel=9, mtime=0)
    return gzip.compress(raw, mtime=0) + piece * (zero_mib // 16) + gzip.compress(bytes(1024))


def test_tar_gz_package_that_expands_hugely_keeps_server_memory_bounded(
    served, tmp_path: Path
) -> None:
    """A small tar.gz whose member is 256 MiB of zeros must not cost the server 256 MiB."""
    import hashlib

    from tests.conftest import FIXTURES
    from tests.reliability.conftest import load

    files = tmp_path / "files"
    files.mkdir()
    data = tar_gz_bomb(256)
    (files / "bomb.tar.gz").write_bytes(data)
    server = served(file_roots=f"{FIXTURES}:{files}")
    reset_peak_rss(server.pid)
    before = proc_stats(server.pid)
    load(server.stub, (files / "bomb.tar.gz").as_uri(), hashlib.sha256(data).hexdigest())
    after = proc_stats(server.pid)
    print(f"tar.gz bomb of {len(data) >> 10} KiB: rss {before.rss >> 20} -> {after.rss >> 20} MiB,")
    print(f"peak {after.hwm >> 20} MiB")
    server.kill()
    assert after.hwm - before.rss < 128 * MiB
