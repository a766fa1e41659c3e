"""Issue 10, items 6, 7, 10, 11, 12: zstd windows, tokens only over https, long Content-Encoding
lists, malformed IDNA hosts, IPv4 addresses hidden in 6to4/Teredo. Real server, real loopback
HTTP(S) upstreams."""

from __future__ import annotations

import gzip
import ipaddress
import ssl

import grpc
import httpx
import pytest
import zstandard
from pkgloader.errors import UpstreamBlocked
from pkgloader.fetch import HttpFetcher
from pkgloader.fetch.decoding import MAX_CODINGS
from pkgloader.fetch.guard import UpstreamPolicy
from pytest_httpserver import HTTPServer

from tests.conftest import DASH, HELLO, Running
from tests.test_load import error_info, expect_error
from tests.test_security import pki  # noqa: F401 - the fixture, reused

# -- 12: IPv6 addresses that carry an IPv4 address --------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254 (cloud metadata)
        "2002:0a01:0203::1",  # 6to4 of 10.1.2.3
        "2001:0:7f00:1::80ff:fffe",  # Teredo, server 127.0.0.1
        "2001:0:0a01:0203::f7f7:f7f7",  # Teredo, server 10.1.2.3, client 8.8.8.8
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    ],
)
def test_ipv6_addresses_embedding_a_non_public_ipv4_are_refused(address: str) -> None:
    """6to4, Teredo and NAT64 addresses are judged by the IPv4 address a relay forwards to.
    (On the policy alone, as the connect-time check runs it: no traffic goes to them.)"""
    with pytest.raises(UpstreamBlocked, match="non-public"):
        UpstreamPolicy(()).check_address("example.org", ipaddress.ip_address(address))


def test_six_to_four_of_a_public_ipv4_stays_allowed() -> None:
    """The embedded check refuses only what it must: 6to4 of 8.8.8.8 is public."""
    UpstreamPolicy(()).check_address("example.org", ipaddress.ip_address("2002:808:808::1"))


# -- 11: malformed IDNA hosts -------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://xn--:80/pkg", "https://xn--/pkg", "http://xn--a-/p"])
def test_malformed_idna_host_is_invalid_url(server: Running, url: str) -> None:
    """A host that is not a valid A-label is INVALID_ARGUMENT / INVALID_URL, not INTERNAL."""
    err = expect_error(lambda: server.load(url, HELLO.sha256), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_info(err).reason == "INVALID_URL"
    assert "A-label" in err.details()


def test_redirect_to_a_malformed_idna_host_is_the_upstreams_fault(
    server: Running, httpserver: HTTPServer
) -> None:
    """A Location naming `xn--` is an invalid redirect (FAILED_PRECONDITION), not INTERNAL."""
    httpserver.expect_request("/r").respond_with_data(
        "", status=302, headers={"Location": "http://xn--:80/pkg"}
    )
    err = expect_error(
        lambda: server.load(httpserver.url_for("/r"), HELLO.sha256),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(err).reason == "UPSTREAM_REJECTED"
    assert "invalid location" in err.details()


# -- 10: long Content-Encoding lists -----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "body"),
    [
        (", ".join(["identity"] * 1500), HELLO.data),
        (", ".join(["gzip"] * 2500), gzip.compress(HELLO.data)),
        (", ".join(["identity"] * (MAX_CODINGS + 1)), HELLO.data),
    ],
    ids=["1500-identity", "2500-gzip", "one-past-the-limit"],
)
def test_content_encoding_lists_past_the_limit_are_refused(
    server: Running, httpserver: HTTPServer, header: str, body: bytes
) -> None:
    """Past MAX_CODINGS codings: FAILED_PRECONDITION / CONTENT_DECODING naming the limit (was
    RecursionError -> INTERNAL)."""
    httpserver.expect_request("/pkg").respond_with_data(body, headers={"Content-Encoding": header})
    err = expect_error(
        lambda: server.load(httpserver.url_for("/pkg"), HELLO.sha256),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(err).reason == "CONTENT_DECODING"
    assert f"the limit of {MAX_CODINGS}" in err.details()


def test_content_encoding_lists_up_to_the_limit_are_undone(
    server: Running, httpserver: HTTPServer
) -> None:
    """MAX_CODINGS codings (gzip twice, identity around) still decode to the exact package."""
    header = ", ".join(["identity"] * (MAX_CODINGS - 2) + ["gzip", "gzip"])
    body = gzip.compress(gzip.compress(DASH.data))
    httpserver.expect_request("/pkg").respond_with_data(body, headers={"Content-Encoding": header})
    _, content = server.load(httpserver.url_for("/pkg"), DASH.sha256, include_content=True)
    assert content == DASH.data


# -- 6: zstd window limit -----------------------------------------------------------------------


def _zstd_streamed(data: bytes, window_log: int) -> bytes:
    """A zstd frame without a content size, so the decoder must allocate the declared window."""
    params = zstandard.ZstdCompressionParameters(window_log=window_log, compression_level=3)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return compressor.compress(data) + compressor.flush()


def test_zstd_window_over_8_mib_is_refused(server: Running, httpserver: HTTPServer) -> None:
    """window_log 27 (128 MiB) is refused before the window is allocated: FAILED_PRECONDITION /
    CONTENT_DECODING naming the 8 MiB limit; nothing is stored."""
    body = _zstd_streamed(DASH.data, 27)
    assert zstandard.get_frame_parameters(body).window_size == 128 << 20
    httpserver.expect_request("/pkg").respond_with_data(body, headers={"Content-Encoding": "zstd"})
    err = expect_error(
        lambda: server.load(httpserver.url_for("/pkg"), DASH.sha256),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error_info(err).reason == "CONTENT_DECODING"
    assert "8 MiB" in err.details()
    cache = server.app.settings.cache_dir
    assert cache is not None
    assert not list(cache.glob("*.bin"))


def test_zstd_window_of_8_mib_decodes(server: Running, httpserver: HTTPServer) -> None:
    """window_log 23 (8 MiB, RFC 9659's limit) still decodes to the exact package."""
    body = _zstd_streamed(DASH.data, 23)
    httpserver.expect_request("/pkg").respond_with_data(body, headers={"Content-Encoding": "zstd"})
    _, content = server.load(httpserver.url_for("/pkg"), DASH.sha256, include_content=True)
    assert content == DASH.data


# -- 7: upstream tokens only over https ---------------------------------------------------------


def test_token_is_not_sent_over_plain_http(make_server, httpserver: HTTPServer) -> None:
    """A token configured for host:port is not sent to http://host:port (keys carry no scheme)
    unless PKGLOADER_PLAINTEXT_TOKEN_AUTHORITIES names that authority."""
    authority = f"127.0.0.1:{httpserver.port}"
    server = make_server(tokens={authority: "https-only-token"})
    httpserver.expect_request("/pkg").respond_with_data(HELLO.data)
    package, _ = server.load(httpserver.url_for("/pkg"), HELLO.sha256)
    assert package.size == HELLO.size
    assert "Authorization" not in httpserver.log[0][0].headers


def test_plaintext_token_authorities_setting_parses_host_port_only() -> None:
    """PKGLOADER_PLAINTEXT_TOKEN_AUTHORITIES: comma-separated host:port, empty by default."""
    from pkgloader.settings import Settings, SettingsError

    assert Settings.load({}).plaintext_token_authorities == ()
    loaded = Settings.load({"PKGLOADER_PLAINTEXT_TOKEN_AUTHORITIES": "127.0.0.1:80, A.b:8080"})
    assert loaded.plaintext_token_authorities == ("127.0.0.1:80", "a.b:8080")
    with pytest.raises(SettingsError, match="PLAINTEXT_TOKEN_AUTHORITIES"):
        Settings.load({"PKGLOADER_PLAINTEXT_TOKEN_AUTHORITIES": "registry.example"})


@pytest.fixture
def https_server(pki) -> HTTPServer:  # noqa: F811 - pki is the fixture imported above
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["server.pem"], pki["server.key"])
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.start()
    yield server
    server.clear()
    server.stop()


def test_https_to_http_redirect_drops_the_token(
    pki,  # noqa: F811
    https_server: HTTPServer,
    httpserver: HTTPServer,
) -> None:
    """The https hop carries its token; the http hop it redirects to does not, even when that
    authority has a token and is named in the plaintext exception."""
    secure = f"127.0.0.1:{https_server.port}"
    plain = f"127.0.0.1:{httpserver.port}"
    https_server.expect_request("/start").respond_with_data(
        "", status=302, headers={"Location": httpserver.url_for("/pkg")}
    )
    httpserver.expect_request("/pkg").respond_with_data(HELLO.data)
    verify = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    with httpx.Client(verify=verify, trust_env=False) as client:
        fetcher = HttpFetcher(
            client,
            user_agent="test",
            tokens={secure: "tls-token", plain: "plain-token"},
            plaintext_token_authorities=(plain,),
        )
        start = httpx.URL(https_server.url_for("/start"))
        assert start.scheme == "https"
        with fetcher.open(start) as chunks:
            assert b"".join(chunks) == HELLO.data
        assert fetcher.token_for(httpx.URL(httpserver.url_for("/pkg"))) == "plain-token"
        assert fetcher.token_for(httpx.URL(httpserver.url_for("/pkg")), downgraded=True) is None
    assert https_server.log[0][0].headers["Authorization"] == "Bearer tls-token"
    assert "Authorization" not in httpserver.log[0][0].headers


def test_token_goes_over_https(pki, https_server: HTTPServer) -> None:  # noqa: F811
    """Over https the authority's token is sent as before (the rule narrows, not removes)."""
    https_server.expect_request("/pkg").respond_with_data(HELLO.data)
    verify = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    with httpx.Client(verify=verify, trust_env=False) as client:
        fetcher = HttpFetcher(
            client, user_agent="test", tokens={f"127.0.0.1:{https_server.port}": "tls-token"}
        )
        with fetcher.open(httpx.URL(https_server.url_for("/pkg"))) as chunks:
            assert b"".join(chunks) == HELLO.data
    assert https_server.log[0][0].headers["Authorization"] == "Bearer tls-token"
