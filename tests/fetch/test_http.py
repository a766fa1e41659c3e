"""`HttpFetcher`, `FileFetcher` and the decoders at their own level: a real HTTP server on
loopback (pytest-httpserver), real files, no cache and no gRPC. What an upstream answers maps to
one error of the error tree; redirects, tokens and decoding follow the reference's rules."""

from __future__ import annotations

import gzip
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard
from pkgloader.errors import (
    ContentDecodingError,
    FileOutsideRoots,
    InvalidUrl,
    UpstreamNotFound,
    UpstreamRejected,
    UpstreamUnavailable,
)
from pkgloader.fetch import Fetchers, FetchReport, FileFetcher, HttpFetcher, MinRate, parse_url
from pkgloader.fetch.decoding import MAX_CODINGS, decode, parse_content_encoding
from pkgloader.fetch.guard import UpstreamPolicy
from pkgloader.fetch.transport import GuardedTransport
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

BODY = os.urandom(3 << 20)  # more than one chunk of every stage


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    policy = UpstreamPolicy(("127.0.0.1",))
    with httpx.Client(
        transport=GuardedTransport(policy, httpx.Limits(max_connections=4)),
        timeout=10.0,
        follow_redirects=False,
        trust_env=False,
    ) as http:
        yield http


def fetcher(client: httpx.Client, **kwargs: object) -> HttpFetcher:
    kwargs.setdefault("backoff", 0.0)
    return HttpFetcher(client, user_agent="pkgloader-tests", **kwargs)  # type: ignore[arg-type]


def fetch(http: HttpFetcher, url: str, report: FetchReport | None = None) -> bytes:
    with http.open(parse_url(url), report) as chunks:
        return b"".join(chunks)


def test_a_body_streams_decoded_with_the_reference_headers(
    client: httpx.Client, httpserver: HTTPServer
) -> None:
    """200: the body arrives whole; the request asks for webc, names us, offers zstd and gzip."""
    httpserver.expect_request("/pkg").respond_with_data(BODY)
    assert fetch(fetcher(client), httpserver.url_for("/pkg")) == BODY
    request, _ = httpserver.log[0]
    assert request.headers["Accept"] == "application/webc"
    assert request.headers["User-Agent"] == "pkgloader-tests"
    assert request.headers["Accept-Encoding"] == "zstd;q=1.0, gzip;q=0.8"
    assert "Authorization" not in request.headers


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, UpstreamNotFound),
        (410, UpstreamNotFound),
        (401, UpstreamRejected),
        (403, UpstreamRejected),
        (418, UpstreamRejected),
        (501, UpstreamUnavailable),
    ],
)
def test_an_error_status_maps_to_one_error_without_retries(
    client: httpx.Client, httpserver: HTTPServer, status: int, error: type[Exception]
) -> None:
    """4xx and non-retryable 5xx fail at once, as the error the status means, naming it."""
    httpserver.expect_request("/pkg").respond_with_data("no", status=status)
    with pytest.raises(error) as caught:
        fetch(fetcher(client), httpserver.url_for("/pkg"))
    assert caught.value.metadata["status"] == str(status)  # type: ignore[attr-defined]
    assert len(httpserver.log) == 1


def test_a_retryable_status_is_retried_then_succeeds(
    client: httpx.Client, httpserver: HTTPServer
) -> None:
    """503 and 429 before any body are retried; a later 200 is the answer."""
    httpserver.expect_ordered_request("/pkg").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/pkg").respond_with_data("slow down", status=429)
    httpserver.expect_ordered_request("/pkg").respond_with_data(b"package")
    assert fetch(fetcher(client), httpserver.url_for("/pkg")) == b"package"
    assert len(httpserver.log) == 3


def test_retries_are_bounded(client: httpx.Client, httpserver: HTTPServer) -> None:
    """A 500 that persists fails UNAVAILABLE after the first try and three retries."""
    httpserver.expect_request("/pkg").respond_with_data("down", status=500)
    with pytest.raises(UpstreamUnavailable, match="500 Internal Server Error"):
        fetch(fetcher(client), httpserver.url_for("/pkg"))
    assert len(httpserver.log) == 4


def test_redirects_are_followed_hop_by_hop(client: httpx.Client, httpserver: HTTPServer) -> None:
    """A relative redirect chain is followed by the fetcher itself, each hop checked."""
    seen: list[str] = []
    httpserver.expect_request("/a").respond_with_data("", status=302, headers={"Location": "/b"})
    httpserver.expect_request("/b").respond_with_data("", status=307, headers={"Location": "c"})
    httpserver.expect_request("/c").respond_with_data(b"end")

    def guard(url: httpx.URL) -> None:
        seen.append(url.path)

    assert fetch(fetcher(client, guard=guard), httpserver.url_for("/a")) == b"end"
    assert seen == ["/a", "/b", "/c"]


def test_too_many_redirects_are_refused(client: httpx.Client, httpserver: HTTPServer) -> None:
    """A redirect loop ends after five hops as UpstreamRejected."""
    httpserver.expect_request("/loop").respond_with_data(
        "", status=301, headers={"Location": "/loop"}
    )
    with pytest.raises(UpstreamRejected, match="redirected more than 5 times"):
        fetch(fetcher(client), httpserver.url_for("/loop"))
    assert len(httpserver.log) == 6


def test_a_redirect_to_a_file_url_is_refused(client: httpx.Client, httpserver: HTTPServer) -> None:
    """A redirect must never turn a download into a local read."""
    httpserver.expect_request("/evil").respond_with_data(
        "", status=302, headers={"Location": "file:///etc/passwd"}
    )
    with pytest.raises(InvalidUrl, match="redirected to a file: URL"):
        fetch(fetcher(client), httpserver.url_for("/evil"))


def test_a_token_goes_only_to_its_authority(client: httpx.Client, httpserver: HTTPServer) -> None:
    """Over plain http only for an authority listed as plaintext-allowed; after a redirect to
    another authority, not at all. The report says a token was used."""
    other = HTTPServer(host="127.0.0.1", port=0)
    other.start()
    try:
        other.expect_request("/pkg").respond_with_data(b"moved")
        first = f"127.0.0.1:{httpserver.port}"
        httpserver.expect_request("/pkg").respond_with_data(
            "", status=302, headers={"Location": other.url_for("/pkg")}
        )
        http = fetcher(
            client,
            tokens={first: "secret", f"127.0.0.1:{other.port}": ""},
            plaintext_token_authorities=[first],
        )
        report = FetchReport()
        assert fetch(http, httpserver.url_for("/pkg"), report) == b"moved"
        assert httpserver.log[0][0].headers["Authorization"] == "Bearer secret"
        assert "Authorization" not in other.log[0][0].headers
        assert report.credentialed
    finally:
        other.clear()
        other.stop()


def test_the_token_rule(client: httpx.Client) -> None:
    """token_for: https always; http only for a plaintext authority and never after a
    downgrade; never to another host."""
    http = fetcher(
        client,
        tokens={"registry.example": "t", "plain.example:8080": "p"},
        plaintext_token_authorities=["plain.example:8080"],
    )
    assert http.token_for(httpx.URL("https://registry.example/x")) == "t"
    assert http.token_for(httpx.URL("http://registry.example/x")) is None
    assert http.token_for(httpx.URL("https://other.example/x")) is None
    assert http.token_for(httpx.URL("http://plain.example:8080/x")) == "p"
    assert http.token_for(httpx.URL("http://plain.example:8080/x"), downgraded=True) is None


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("zstd", lambda data: zstandard.ZstdCompressor().compress(data)),
        ("identity", lambda data: data),
        ("gzip, zstd", lambda data: zstandard.ZstdCompressor().compress(gzip.compress(data))),
    ],
)
def test_content_encodings_are_undone(
    client: httpx.Client, httpserver: HTTPServer, encoding: str, encode: object
) -> None:
    """gzip, zstd, identity and a list of them (undone in reverse) yield the original bytes."""
    body = encode(BODY)  # type: ignore[operator]
    httpserver.expect_request("/pkg").respond_with_data(
        body, headers={"Content-Encoding": encoding}
    )
    assert fetch(fetcher(client), httpserver.url_for("/pkg")) == BODY


def test_an_unknown_or_broken_encoding_is_a_decoding_error(
    client: httpx.Client, httpserver: HTTPServer
) -> None:
    """An unsupported coding is named; a body that is not what its coding says fails too."""
    httpserver.expect_request("/br").respond_with_data(b"x", headers={"Content-Encoding": "br"})
    httpserver.expect_request("/bad").respond_with_data(
        b"not gzip at all", headers={"Content-Encoding": "gzip"}
    )
    with pytest.raises(ContentDecodingError, match="unsupported content-encoding: br"):
        fetch(fetcher(client), httpserver.url_for("/br"))
    with pytest.raises(ContentDecodingError):
        fetch(fetcher(client), httpserver.url_for("/bad"))


def test_content_encoding_parsing_rules() -> None:
    """The reference's rules: trimmed, lowercased, empty items dropped, non-UTF-8 refused, and
    our bound on how many layers one response may stack."""
    assert parse_content_encoding(None) == []
    assert parse_content_encoding(b" GZip , ,zstd ") == ["gzip", "zstd"]
    with pytest.raises(ContentDecodingError, match="non-utf8"):
        parse_content_encoding(b"\xff")
    with pytest.raises(ContentDecodingError, match="more than the limit"):
        parse_content_encoding(b", ".join([b"identity"] * (MAX_CODINGS + 1)))
    assert b"".join(decode(iter([b"ab", b"cd"]), [])) == b"abcd"


def test_a_trickling_upstream_is_cut_off_by_the_minimum_rate(
    client: httpx.Client, httpserver: HTTPServer
) -> None:
    """Below MinRate (judged as chunks arrive) the download ends UNAVAILABLE."""

    def trickle(request: Request) -> Response:
        def body() -> Iterator[bytes]:
            for _ in range(50):
                yield b"x"
                time.sleep(0.02)  # the upstream's pace is what is tested, not a test sync

        return Response(body(), direct_passthrough=True)

    httpserver.expect_request("/slow").respond_with_handler(trickle)
    http = fetcher(client, min_rate=MinRate(1 << 20, 0.1))
    with pytest.raises(UpstreamUnavailable, match="minimum transfer rate"):
        fetch(http, httpserver.url_for("/slow"))


def test_a_refused_connection_is_unavailable(client: httpx.Client) -> None:
    """Nobody listening: UNAVAILABLE (after the retries), naming the URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamUnavailable, match="could not connect"):
        fetch(fetcher(client), f"http://127.0.0.1:{port}/pkg")


# -- file:// ---------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "pkg.webc").write_bytes(BODY)
    return root


def read(files: FileFetcher, url: str) -> bytes:
    with files.open(parse_url(url)) as chunks:
        return b"".join(chunks)


def test_a_file_under_a_root_is_read(root: Path) -> None:
    """A regular file beneath a root streams whole; percent-encoding is undone first."""
    files = FileFetcher((root,))
    assert read(files, (root / "pkg.webc").as_uri()) == BODY
    (root / "a b.webc").write_bytes(b"spaced")
    assert read(files, (root / "a b.webc").as_uri()) == b"spaced"


def test_paths_that_leave_the_roots_are_refused(root: Path, tmp_path: Path) -> None:
    """`..`, a symlink out of the root, a host in the URL, and no roots at all are refused
    before anything is opened."""
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    (root / "link.webc").symlink_to(outside)
    files = FileFetcher((root,))
    with pytest.raises(FileOutsideRoots):
        read(files, f"file://{root}/../secret")
    with pytest.raises(FileOutsideRoots):
        read(files, (root / "link.webc").as_uri())
    with pytest.raises(InvalidUrl, match="must not name a host"):
        files.check(parse_url(f"file://otherhost{root}/pkg.webc"))
    with pytest.raises(FileOutsideRoots, match="disabled"):
        FileFetcher(()).check(parse_url((root / "pkg.webc").as_uri()))


def test_what_is_not_a_readable_regular_file_is_refused(root: Path) -> None:
    """A missing file is not found; a folder or a FIFO is not a regular file (and a FIFO does
    not hang the call)."""
    files = FileFetcher((root,))
    with pytest.raises(UpstreamNotFound, match="no such file"):
        read(files, (root / "missing.webc").as_uri())
    (root / "dir").mkdir()
    with pytest.raises(FileOutsideRoots, match="not a regular file"):
        read(files, (root / "dir").as_uri())
    os.mkfifo(root / "fifo")
    with pytest.raises(FileOutsideRoots, match="not a regular file"):
        read(files, (root / "fifo").as_uri())


def test_fetchers_dispatch_by_scheme_and_mark_file_reads_credentialed(
    client: httpx.Client, httpserver: HTTPServer, root: Path
) -> None:
    """file:// goes to the file fetcher and counts as the server's standing; http to HTTP."""
    fetchers = Fetchers(fetcher(client), FileFetcher((root,)))
    httpserver.expect_request("/pkg").respond_with_data(b"over http")
    report = FetchReport()
    with fetchers.open(parse_url(httpserver.url_for("/pkg")), report) as chunks:
        assert b"".join(chunks) == b"over http"
    assert not report.credentialed
    with fetchers.open(parse_url((root / "pkg.webc").as_uri()), report) as chunks:
        assert b"".join(chunks) == BODY
    assert report.credentialed


def test_a_decompression_bomb_decodes_in_bounded_pieces() -> None:
    """64 MiB of zeros in a few KB of gzip or zstd comes out 1 MiB at a time at most, so the
    size limit downstream stops it before memory grows."""
    zeros = bytes(64 << 20)
    for coding, packed in (
        ("gzip", gzip.compress(zeros)),
        ("zstd", zstandard.ZstdCompressor().compress(zeros)),
    ):
        pieces = decode(iter([packed[i : i + 4096] for i in range(0, len(packed), 4096)]), [coding])
        total = 0
        for piece in pieces:
            assert len(piece) <= 1 << 20
            total += len(piece)
            if total >= 8 << 20:
                break  # bounded pieces all the way: enough seen
        assert total >= 8 << 20
