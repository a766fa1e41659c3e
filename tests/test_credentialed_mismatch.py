"""Issue 10 item 13: the server's upstream tokens and file roots are not every reader's. A reader
never receives content whose hash mismatches when the server's own standing fetched it, nor
learns its hash; admins, and sources fetched without it, keep the reference behaviour."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from pkgloader_client import pb
from pytest_httpserver import HTTPServer

from tests.conftest import DASH, HELLO, Running, load_request, sha256
from tests.test_load import error_info
from tests.test_security import ADMIN, READER, bearer

WRONG = "ab" * 32


@pytest.fixture
def guarded(make_server, httpserver: HTTPServer) -> Running:
    """Client auth on, and an upstream token for the loopback upstream (allowed over http)."""
    authority = f"127.0.0.1:{httpserver.port}"
    return make_server(
        auth_tokens={READER: "reader", ADMIN: "admin"},
        tokens={authority: "upstream-secret"},
        plaintext_token_authorities=(authority,),
    )


def call(server: Running, url: str, token: str, mode: int) -> tuple[pb.Package, bytes]:
    responses = list(
        server.stub.Load(
            load_request(url, WRONG, include_content=True, hash_validation=mode),
            metadata=bearer(token),
            timeout=30,
        )
    )
    return responses[0].package, b"".join(r.chunk for r in responses[1:])


def refused(server: Running, url: str, token: str, mode: int) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(server, url, token, mode)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS, caught.value.details()
    return caught.value


@pytest.mark.parametrize(
    "mode", [pb.HASH_VALIDATION_NONE, pb.HASH_VALIDATION_WARN, pb.HASH_VALIDATION_FAIL]
)
def test_reader_gets_neither_content_nor_hash_from_a_token_authority(
    guarded: Running, httpserver: HTTPServer, mode: int
) -> None:
    """Whatever the policy, a reader's mismatching Load from an authority with a token is
    HASH_MISMATCH without the computed hash (before: NONE/WARN served the body, FAIL named its
    sha256)."""
    httpserver.expect_request("/private").respond_with_data(DASH.data)
    err = refused(guarded, httpserver.url_for("/private"), READER, mode)
    info = error_info(err)
    assert info.reason == "HASH_MISMATCH"
    assert "actual_sha256" not in info.metadata
    assert info.metadata["expected_sha256"] == WRONG
    assert DASH.sha256 not in err.details().lower()
    assert "withheld" in err.details()
    assert httpserver.log[0][0].headers["Authorization"] == "Bearer upstream-secret"


def test_admin_keeps_the_reference_behaviour_on_a_token_authority(
    guarded: Running, httpserver: HTTPServer
) -> None:
    """An admin's NONE Load gets the body; its FAIL Load the reference message with the hash."""
    httpserver.expect_request("/private").respond_with_data(DASH.data)
    _, content = call(guarded, httpserver.url_for("/private"), ADMIN, pb.HASH_VALIDATION_NONE)
    assert content == DASH.data
    err = refused(guarded, httpserver.url_for("/private"), ADMIN, pb.HASH_VALIDATION_FAIL)
    assert err.details().startswith(
        f"image hash mismatch! expected hash '{WRONG.upper()}', but the computed hash is "
        f"'{DASH.sha256.upper()}'"
    )


def test_reader_keeps_the_reference_behaviour_without_credentials(make_server) -> None:
    """No token for the authority: a reader's WARN Load is served with the reference warning."""
    other = HTTPServer(host="127.0.0.1", port=0)
    other.start()
    try:
        server = make_server(
            auth_tokens={READER: "reader"}, tokens={"registry.example:443": "elsewhere"}
        )
        other.expect_request("/public").respond_with_data(HELLO.data)
        package, content = call(server, other.url_for("/public"), READER, pb.HASH_VALIDATION_WARN)
    finally:
        other.clear()
        other.stop()
    assert content == HELLO.data
    assert package.warnings[0].startswith("image hash mismatch! expected hash")
    assert HELLO.sha256.upper() in package.warnings[0]


def test_a_redirect_into_a_token_authority_counts_as_credentialed(
    guarded: Running, httpserver: HTTPServer
) -> None:
    """A reader's URL on a host without a token that redirects to the token authority is
    judged by the chain: the token went along, so nothing is revealed."""
    other = HTTPServer(host="127.0.0.1", port=0)
    other.start()
    try:
        other.expect_request("/hop").respond_with_data(
            "", status=302, headers={"Location": httpserver.url_for("/private")}
        )
        httpserver.expect_request("/private").respond_with_data(DASH.data)
        err = refused(guarded, other.url_for("/hop"), READER, pb.HASH_VALIDATION_NONE)
    finally:
        other.clear()
        other.stop()
    assert "actual_sha256" not in error_info(err).metadata


def test_a_hard_link_in_a_file_root_does_not_reveal_an_outside_files_hash(
    make_server, tmp_path: Path
) -> None:
    """files/peek is a hard link to a file outside the roots: a reader learns no hash and gets no
    bytes (file roots are the server's standing too); an admin still sees the computed hash."""
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_bytes(b"not for readers " * 64)
    server = make_server(auth_tokens={READER: "reader", ADMIN: "admin"})
    link = tmp_path / "files" / "peek"
    os.link(secret, link)
    url = f"file://{link}"
    for mode in (pb.HASH_VALIDATION_FAIL, pb.HASH_VALIDATION_NONE):
        err = refused(server, url, READER, mode)
        assert "actual_sha256" not in error_info(err).metadata
        assert sha256(secret.read_bytes()) not in err.details().lower()
    err = refused(server, url, ADMIN, pb.HASH_VALIDATION_FAIL)
    assert error_info(err).metadata["actual_sha256"] == sha256(secret.read_bytes())
