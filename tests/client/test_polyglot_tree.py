"""LoadTree from clients nobody on this team wrote: a Node.js @grpc/grpc-js client built from the
same .proto, and grpcurl through reflection only. Both reassemble every atom of a tree and check
that it is wasm and hashes to its atom_sha256."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from tests._trees import STATIC_DEP_ID, STATIC_ROOT_ID, WEBSERVER_ATOM, static_tree
from tests.client.conftest import NODE_DIR, VENV_BIN, node, run, tool
from tests.client.test_polyglot import SERVICE, needs_x86_64
from tests.conftest import DASH, Running

ATOM_SHA = hashlib.sha256(WEBSERVER_ATOM).hexdigest()


def tree_body(files: Path) -> dict[str, Any]:
    """A LoadTreeRequest with include_atoms: the v3 fixture's tree, its resolution as JSON."""
    tree = static_tree(files)
    return {
        "specifier": STATIC_ROOT_ID,
        "resolution": json_format.MessageToDict(tree.resolution, preserving_proto_field_name=True),
        "include_atoms": True,
    }


def test_node_client_reassembles_and_checks_every_atom(server: Running, tmp_path: Path) -> None:
    """Node.js runs LoadTree with include_atoms: the atom starts with \\0asm and its bytes hash,
    computed in Node, to the atom_sha256 the tree announced."""
    tool(NODE_DIR / "node_modules" / "@grpc" / "grpc-js", "make node")
    body = tree_body(tmp_path / "files")
    result = run([node(), str(NODE_DIR / "tree.js"), server.address, json.dumps(body)])
    assert result.returncode == 0, result.stdout + result.stderr
    got = json.loads(result.stdout)
    assert got["id"] == STATIC_ROOT_ID
    assert got["commands"][0] == {
        "name": "script",
        "package": STATIC_DEP_ID,
        "atom_sha256": ATOM_SHA,
    }
    assert got["atoms"] == [
        {
            "atom_sha256": ATOM_SHA,
            "received_bytes": len(WEBSERVER_ATOM),
            "received_sha256": ATOM_SHA,
            "wasm": True,
            "ok": True,
        }
    ]


def test_node_client_checks_a_v1_fixture_atom(server: Running) -> None:
    """The same check on a real package's atom (dash, webc v1, 332 405 bytes)."""
    resolution = {
        "root": f"sha256:{DASH.sha256}",
        "nodes": [
            {
                "id": f"sha256:{DASH.sha256}",
                "dist": {"webc_url": DASH.url, "webc_sha256": DASH.sha256},
            }
        ],
        "commands": [{"name": "dash", "package": f"sha256:{DASH.sha256}", "original_name": "dash"}],
    }
    body = {"specifier": "dash", "resolution": resolution}
    result = run([node(), str(NODE_DIR / "tree.js"), server.address, json.dumps(body)])
    assert result.returncode == 0, result.stdout + result.stderr
    [atom] = json.loads(result.stdout)["atoms"]
    assert atom["received_sha256"] == (
        "ce4d85249665844ea9d882bda5efed67d127605735c7f5b674157804e624c9cc"
    )
    assert (atom["received_bytes"], atom["wasm"], atom["ok"]) == (332405, True, True)


def test_node_client_reports_an_invalid_tree(server: Running) -> None:
    """Node.js sees FAILED_PRECONDITION and the reference's words."""
    body = {
        "specifier": "x",
        "resolution": {
            "root": f"sha256:{DASH.sha256}",
            "nodes": [
                {
                    "id": f"sha256:{DASH.sha256}",
                    "dist": {"webc_url": DASH.url, "webc_sha256": DASH.sha256},
                }
            ],
            "mounts": [{"mount_path": "/", "package": f"sha256:{DASH.sha256}", "volume": "nope"}],
        },
    }
    result = run([node(), str(NODE_DIR / "tree.js"), server.address, json.dumps(body)])
    assert result.returncode == 2
    error = json.loads(result.stderr)
    assert error["code"] == "FAILED_PRECONDITION"
    assert error["message"] == f'The "sha256:{DASH.sha256}" package doesn\'t have a "nope" volume'


def _json_stream(text: str) -> list[dict[str, Any]]:
    """grpcurl prints each streamed message as one JSON document after the other."""
    decoder, items, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        item, i = decoder.raw_decode(text, i)
        items.append(item)
    return items


@pytest.fixture
def grpcurl() -> str:
    return tool(VENV_BIN / "grpcurl", "make test (installs the dev extras)")


@needs_x86_64
def test_grpcurl_load_tree_streams_checked_atoms(
    server: Running, grpcurl: str, tmp_path: Path
) -> None:
    """grpcurl, with the schema from reflection only, runs LoadTree with include_atoms: the first
    message is the tree, then the atom's chunks, which reassemble to wasm with its atom_sha256."""
    body = tree_body(tmp_path / "files")
    result = run(
        [grpcurl, "-plaintext", "-d", json.dumps(body), server.address, f"{SERVICE}/LoadTree"]
    )
    assert result.returncode == 0, result.stderr
    items = _json_stream(result.stdout)
    package = items[0]["package"]
    assert package["id"] == STATIC_ROOT_ID
    assert package["commands"][0]["atomSha256"] == ATOM_SHA
    assert package["mounts"][0]["mountPath"] == "/settings"
    atoms: dict[str, bytes] = {}
    for item in items[1:]:
        chunk = item["atom"]
        data = base64.b64decode(chunk["data"])
        previous = atoms.get(chunk["atomSha256"], b"")
        assert int(chunk.get("offset", "0")) == len(previous)
        atoms[chunk["atomSha256"]] = previous + data
    assert list(atoms) == [ATOM_SHA]
    assert atoms[ATOM_SHA].startswith(b"\0asm")
    assert hashlib.sha256(atoms[ATOM_SHA]).hexdigest() == ATOM_SHA


@needs_x86_64
def test_grpcurl_describes_load_tree(server: Running, grpcurl: str) -> None:
    """Reflection serves the LoadTree RPC and its messages."""
    described = run([grpcurl, "-plaintext", server.address, "describe", SERVICE])
    assert "rpc LoadTree ( .pkgloader.v1.LoadTreeRequest )" in described.stdout
    assert "returns ( stream .pkgloader.v1.LoadTreeResponse )" in described.stdout
    message = run([grpcurl, "-plaintext", server.address, "describe", "pkgloader.v1.AtomChunk"])
    assert "bytes data = 3;" in message.stdout
