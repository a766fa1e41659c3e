"""The clients' get_atom, read_file, list_directory (blocking and asyncio) and the CLI's `atom`,
`cat` and `ls`, against a real server: bytes, checks, atomic files, error classes, exit codes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pkgloader import formats
from pkgloader.rpc.servicer import PackageLoaderServicer
from pkgloader_client import (
    AsyncPackageLoaderClient,
    AtomNotFound,
    ContentHashMismatch,
    EntryKind,
    InvalidArgument,
    PackageLoaderClient,
    PackageNotCached,
    PathNotFound,
    TransferError,
    VolumeNotFound,
    pb,
)

from tests.client.conftest import VENV_BIN, custom_server, run, tool
from tests.client.test_polyglot import needs_x86_64
from tests.conftest import DASH, STATIC, Running, sha256

CLI = str(VENV_BIN / "pkgloader-client")


def _dash_atom() -> bytes:
    with formats.open_package(DASH.path) as container:
        return bytes(container.get_atom("dash") or b"")


def _dash_file() -> tuple[str, bytes]:
    """The first file of dash's `atom` volume: (path, bytes), as the reader sees them."""
    with formats.open_package(DASH.path) as container:
        volume = container.volumes()["atom"]
        path = next(p for p, _ in volume.files())
        return path, bytes(volume.read_file(path) or b"")


def _corrupt_dash(folder: Path) -> tuple[Path, str]:
    """A copy of dash with one byte of its signed atom flipped, under its own sha256."""
    data = bytearray(DASH.data)
    atom = _dash_atom()
    data[data.find(atom[:4096]) + len(atom) // 2] ^= 0xFF
    folder.mkdir(exist_ok=True)
    path = folder / "dash-corrupt.webc"
    path.write_bytes(bytes(data))
    return path, sha256(bytes(data))


def test_blocking_client_reads_atoms_files_and_listings(server: Running, tmp_path: Path) -> None:
    """get_atom / read_file return the reader's bytes with their info; list_directory gives typed
    entries; get_atom_to writes the file whole; a url loads an uncached package."""
    atom = _dash_atom()
    path, data = _dash_file()
    with PackageLoaderClient(server.address) as client:
        got = client.get_atom(DASH.sha256, "dash", url=DASH.url)  # not cached yet: loaded
        assert got.data == atom
        assert got.info.sha256 == hashlib.sha256(atom).hexdigest()
        assert got.info.signature.startswith("sha256:")
        assert got.info.kind == "https://webc.org/kind/wasm"
        seen: list[tuple[int, int]] = []
        info = client.get_atom_to(
            tmp_path / "dash.wasm", DASH.sha256, "dash", progress=lambda a, b: seen.append((a, b))
        )
        assert (tmp_path / "dash.wasm").read_bytes() == atom
        assert info.size == len(atom)
        assert seen[-1] == (len(atom), len(atom))
        read = client.read_file(DASH.sha256, "atom", path)
        assert read.data == data
        assert read.info.name == path
        listing = client.list_directory(DASH.sha256, "atom", recursive=True)
        assert not listing.truncated
        files = {e.path: e for e in listing.entries if e.kind is EntryKind.FILE}
        assert files[path].size == len(data)
        assert listing.to_dict()["entries"][0]["kind"] in ("file", "directory")


def test_blocking_client_raises_the_contents_errors_as_classes(
    server: Running, tmp_path: Path
) -> None:
    """Each server reason becomes its client class; a corrupt atom is ContentHashMismatch and
    get_atom_to leaves no file behind."""
    with PackageLoaderClient(server.address) as client:
        with pytest.raises(PackageNotCached):
            client.get_atom(DASH.sha256, "dash")
        client.load(DASH.url, DASH.sha256)
        with pytest.raises(AtomNotFound):
            client.get_atom(DASH.sha256, "nope")
        with pytest.raises(VolumeNotFound):
            client.list_directory(DASH.sha256, "nope")
        with pytest.raises(PathNotFound):
            client.read_file(DASH.sha256, "atom", "/nope")
        with pytest.raises(InvalidArgument) as bad:
            client.read_file(DASH.sha256, "atom", "/../etc/passwd")
        assert bad.value.reason == "INVALID_PATH"
        corrupt, corrupt_sha = _corrupt_dash(tmp_path / "files")
        client.load(corrupt.as_uri(), corrupt_sha)
        with pytest.raises(ContentHashMismatch) as caught:
            client.get_atom_to(tmp_path / "out.wasm", corrupt_sha, "dash")
        assert caught.value.code == grpc.StatusCode.DATA_LOSS
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "files"]


class _FlipsAtomByte(PackageLoaderServicer):
    """Sends the atom with one byte changed: only the client's own check can notice."""

    def GetAtom(self, request: Any, context: Any) -> Iterator[Any]:
        for n, response in enumerate(super().GetAtom(request, context)):
            if n == 1:
                data = bytearray(pb.GetAtomResponse.FromString(response).chunk)
                data[100] ^= 0xFF
                response = pb.GetAtomResponse(chunk=bytes(data))
            yield response


def test_a_changed_byte_in_transit_is_a_transfer_error(tmp_path: Path) -> None:
    """The client checks the bytes against the announced sha256: TransferError, no file."""
    with (
        custom_server(tmp_path / "srv", servicer=_FlipsAtomByte) as srv,
        PackageLoaderClient(srv.address) as client,
    ):
        client.load(DASH.url, DASH.sha256)
        with pytest.raises(TransferError):
            client.get_atom(DASH.sha256, "dash")
        with pytest.raises(TransferError):
            client.get_atom_to(tmp_path / "out.wasm", DASH.sha256, "dash")
    assert not (tmp_path / "out.wasm").exists()
    assert not list(tmp_path.glob(".out.wasm.*"))


def test_async_client_reads_atoms_files_and_listings(server: Running, tmp_path: Path) -> None:
    """The asyncio client has the same three calls, with the same results and errors."""
    atom = _dash_atom()
    path, data = _dash_file()

    async def main() -> None:
        async with AsyncPackageLoaderClient(server.address) as client:
            with pytest.raises(PackageNotCached):
                await client.get_atom(DASH.sha256, "dash")
            got = await client.get_atom(DASH.sha256, "dash", url=DASH.url)
            assert got.data == atom
            await client.get_atom_to(tmp_path / "dash.wasm", DASH.sha256, "dash")
            assert (tmp_path / "dash.wasm").read_bytes() == atom
            assert (await client.read_file(DASH.sha256, "atom", path)).data == data
            await client.read_file_to(tmp_path / "file", DASH.sha256, "atom", path)
            assert (tmp_path / "file").read_bytes() == data
            listing = await client.list_directory(DASH.sha256, "atom", recursive=True)
            assert path in {e.path for e in listing.entries}
            with pytest.raises(PathNotFound):
                await client.list_directory(DASH.sha256, "atom", "/nope")

    asyncio.run(main())


def cli(*args: str, server: Running) -> Any:
    return run([CLI, *args, "--server", server.address])


def test_cli_atom_cat_and_ls(server: Running, tmp_path: Path) -> None:
    """`atom -o FILE` saves the atom, `atom -o -` and `cat` write the bytes to stdout, `ls` lists
    paths (and --json the listing)."""
    atom = _dash_atom()
    path, data = _dash_file()
    out = tmp_path / "dash.wasm"
    result = cli("atom", DASH.sha256, "dash", "-o", str(out), "--url", DASH.url, server=server)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == atom
    assert hashlib.sha256(atom).hexdigest() in result.stdout
    raw = run_bytes([CLI, "atom", DASH.sha256, "dash", "-o", "-", "--server", server.address])
    assert raw == atom
    raw = run_bytes([CLI, "cat", DASH.sha256, "atom", path, "--server", server.address])
    assert raw == data
    result = cli("ls", DASH.sha256, "atom", "-r", server=server)
    assert result.returncode == 0, result.stderr
    assert path in result.stdout.split()
    result = cli("ls", DASH.sha256, "atom", "/", "--json", server=server)
    listing = json.loads(result.stdout)
    assert listing["truncated"] is False
    assert {e["path"] for e in listing["entries"]} >= {"/" + path.strip("/").split("/")[0]}


def run_bytes(argv: list[str]) -> bytes:
    """Run the CLI and return its stdout as bytes (what `cat`/`atom -o -` write)."""
    result = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_contents_errors_have_their_exit_codes(server: Running, tmp_path: Path) -> None:
    """Not cached / not found exit 4 with the reason on one line; a bad path exits 3; a corrupt
    atom exits 5 and writes no file."""
    result = cli("ls", STATIC.sha256, "/settings", server=server)
    assert result.returncode == 4
    assert result.stderr.startswith("pkgloader-client: PACKAGE_NOT_CACHED: ")
    server.load(STATIC.url, STATIC.sha256)
    result = cli("cat", STATIC.sha256, "/settings", "/nope", server=server)
    assert result.returncode == 4
    assert "PATH_NOT_FOUND" in result.stderr
    result = cli("cat", STATIC.sha256, "/settings", "/a/../b", server=server)
    assert result.returncode == 3
    assert "INVALID_PATH" in result.stderr
    corrupt, corrupt_sha = _corrupt_dash(tmp_path / "files")
    out = tmp_path / "x.wasm"
    args = ("atom", corrupt_sha, "dash", "-o", str(out), "--url", corrupt.as_uri())
    result = cli(*args, server=server)
    assert result.returncode == 5
    assert "CONTENT_HASH_MISMATCH" in result.stderr
    assert not out.exists()


def _json_stream(text: str) -> list[Any]:
    """The JSON objects grpcurl prints one after the other for a server stream."""
    decoder, items, pos = json.JSONDecoder(), [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        item, pos = decoder.raw_decode(text, pos)
        items.append(item)
    return items


@needs_x86_64
def test_grpcurl_lists_a_volume_and_gets_an_atom(server: Running) -> None:
    """The README's grpcurl calls work through reflection alone: ListDirectory returns paths,
    GetAtom the info then base64 chunks that join to a wasm module hashing to info.sha256."""
    grpcurl = tool(VENV_BIN / "grpcurl", "make test (installs the dev extras)")
    server.load(DASH.url, DASH.sha256)
    service = "pkgloader.v1.PackageLoaderService"
    body = json.dumps(
        {"webc_sha256": DASH.sha256, "volume": "atom", "path": "/", "recursive": True}
    )
    listed = run([grpcurl, "-plaintext", "-d", body, server.address, f"{service}/ListDirectory"])
    assert listed.returncode == 0, listed.stderr
    path, _ = _dash_file()
    assert path in {e["path"] for e in json.loads(listed.stdout)["entries"]}
    body = json.dumps({"webc_sha256": DASH.sha256, "atom_name": "dash"})
    got = run([grpcurl, "-plaintext", "-d", body, server.address, f"{service}/GetAtom"])
    assert got.returncode == 0, got.stderr
    items = _json_stream(got.stdout)
    info = items[0]["info"]
    data = b"".join(base64.b64decode(i["chunk"]) for i in items[1:])
    assert data.startswith(b"\0asm")
    assert hashlib.sha256(data).hexdigest() == info["sha256"]
    assert int(info["size"]) == len(data)
