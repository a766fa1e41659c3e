"""LoadTree from the Python clients (blocking and asyncio) and from `pkgloader-client tree`, against
a real server: the tree, its atoms in memory or saved verified, the JSON a Resolve gives sent back,
progress, and INVALID_TREE as a typed error and an exit code."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from pkgloader_client import (
    AsyncPackageLoaderClient,
    InvalidArgument,
    InvalidTree,
    PackageLoaderClient,
    Source,
)

from tests._trees import (
    STATIC_DEP_ID,
    STATIC_ROOT_ID,
    WEBSERVER_ATOM,
    publish,
    resolution,
    static_tree,
    static_webserver_dependency,
    v3_package,
    wasi_command,
)
from tests.client.conftest import VENV_BIN, run
from tests.conftest import STATIC, Running

CLI = str(VENV_BIN / "pkgloader-client")
ATOM_SHA = hashlib.sha256(WEBSERVER_ATOM).hexdigest()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    return tmp_path / "files"


def test_load_tree_returns_commands_mounts_and_atoms(server: Running, files: Path) -> None:
    """The blocking client gets the typed tree, and each atom in memory, checked by hash."""
    tree = static_tree(files)
    seen: list[tuple[int, int]] = []
    with PackageLoaderClient(server.address) as client:
        got = client.load_tree(
            STATIC_ROOT_ID,
            resolution=tree.resolution,
            include_atoms=True,
            progress=lambda done, total: seen.append((done, total)),
        )
    assert got.id == STATIC_ROOT_ID
    assert got.entrypoint == "script"
    script = got.commands[0]
    assert (script.declared_in, script.package, script.atom_name) == (
        STATIC_ROOT_ID,
        STATIC_DEP_ID,
        "webserver",
    )
    assert got.atoms == {ATOM_SHA: WEBSERVER_ATOM}
    assert [(m.mount_path, m.volume) for m in got.mounts] == [("/settings", "/settings")]
    assert [p.source for p in got.packages] == [Source.DOWNLOAD, Source.DOWNLOAD]
    assert seen[0] == (0, len(WEBSERVER_ATOM))
    assert seen[-1] == (len(WEBSERVER_ATOM), len(WEBSERVER_ATOM))
    assert "atoms" not in got.to_dict()  # bytes are not data to print


def test_load_tree_saves_atoms_atomically_into_a_folder(
    server: Running, files: Path, tmp_path: Path
) -> None:
    """With atoms_dir each atom is written as <sha256>.wasm, complete and verified, no temp left."""
    tree = static_tree(files)
    out = tmp_path / "atoms"
    out.mkdir()
    with PackageLoaderClient(server.address) as client:
        got = client.load_tree(STATIC_ROOT_ID, resolution=tree.resolution, atoms_dir=out)
    assert got.atom_files == {ATOM_SHA: str(out / f"{ATOM_SHA}.wasm")}
    assert sorted(p.name for p in out.iterdir()) == [f"{ATOM_SHA}.wasm"]
    assert (out / f"{ATOM_SHA}.wasm").read_bytes() == WEBSERVER_ATOM
    assert got.atoms == {}


def test_a_resolution_as_json_is_accepted(server: Running, files: Path) -> None:
    """The proto3 JSON of a Resolution (what grpcurl prints) goes back as a dict."""
    tree = static_tree(files)
    as_json = json_format.MessageToDict(tree.resolution)
    with PackageLoaderClient(server.address) as client:
        got = client.load_tree(url=STATIC.url, sha256=STATIC.sha256, resolution=as_json)
        assert got.commands[0].atom_sha256 == ATOM_SHA
        with pytest.raises(InvalidArgument):
            client.load_tree("x", resolution={"nodes": "not a list"})
        with pytest.raises(InvalidArgument):
            client.load_tree()  # neither a specifier nor a url


def test_invalid_tree_is_a_typed_error(server: Running, files: Path) -> None:
    """INVALID_TREE becomes InvalidTree, with the reference's words."""
    pkg = publish(
        files,
        "acme/app@1.0.0",
        v3_package("acme/app", "1.0.0", commands={"run": wasi_command("x", "nowhere")}),
    )
    res = resolution(pkg, commands=[("run", pkg.id, "run")])
    with PackageLoaderClient(server.address) as client, pytest.raises(InvalidTree) as caught:
        client.load_tree(pkg.id, resolution=res)
    assert caught.value.reason == "INVALID_TREE"
    assert 'Unable to find the "nowhere" dependency' in caught.value.message


def test_async_load_tree(server: Running, files: Path, tmp_path: Path) -> None:
    """The asyncio client gives the same tree and atoms, in memory and into a folder."""
    tree = static_tree(files)
    out = tmp_path / "aio-atoms"
    out.mkdir()

    async def main() -> None:
        async with AsyncPackageLoaderClient(server.address) as client:
            got = await client.load_tree(
                STATIC_ROOT_ID, resolution=tree.resolution, include_atoms=True
            )
            assert got.atoms == {ATOM_SHA: WEBSERVER_ATOM}
            saved = await client.load_tree(
                STATIC_ROOT_ID, resolution=tree.resolution, atoms_dir=out
            )
            assert saved.atom_files == {ATOM_SHA: str(out / f"{ATOM_SHA}.wasm")}
            with pytest.raises(InvalidArgument):
                await client.load_tree("x", resolution=json.loads('{"root": 5}'))

    asyncio.run(main())
    assert (out / f"{ATOM_SHA}.wasm").read_bytes() == WEBSERVER_ATOM


def _resolution_file(tmp_path: Path, files: Path) -> Path:
    tree = static_tree(files)
    path = tmp_path / "resolution.json"
    # What `grpcurl ... Resolve` prints: a ResolveResponse holding the resolution.
    path.write_text(json.dumps({"resolution": json_format.MessageToDict(tree.resolution)}))
    return path


def test_cli_tree_prints_packages_commands_and_mounts(
    server: Running, files: Path, tmp_path: Path
) -> None:
    """`tree SPEC` shows the packages, each command with the package and atom it runs, and the
    mounts, as a readable tree."""
    path = _resolution_file(tmp_path, files)
    result = run(
        [CLI, "--server", server.address, "tree", STATIC_ROOT_ID, "--resolution", str(path)]
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0] == STATIC_ROOT_ID
    assert "packages" in out
    assert STATIC_DEP_ID in out
    assert f"script (entrypoint) → {STATIC_DEP_ID} (from {STATIC_ROOT_ID}): atom webserver" in out
    assert ATOM_SHA in out
    assert f"/settings ← {STATIC_ROOT_ID} /settings" in out


def test_cli_tree_json_and_atoms_with_a_progress_bar(
    server: Running, files: Path, tmp_path: Path
) -> None:
    """`tree --json --atoms DIR --progress` prints the tree as JSON, saves the atom and draws a
    progress bar on stderr."""
    path = _resolution_file(tmp_path, files)
    out = tmp_path / "atoms"
    out.mkdir()
    result = run(
        [
            CLI,
            "--server",
            server.address,
            "--json",
            "tree",
            STATIC_ROOT_ID,
            "--resolution",
            str(path),
            "--atoms",
            str(out),
            "--progress",
        ]
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["commands"][0]["atom_sha256"] == ATOM_SHA
    assert data["atom_files"] == {ATOM_SHA: str(out / f"{ATOM_SHA}.wasm")}
    assert data["mounts"][0]["mount_path"] == "/settings"
    assert (out / f"{ATOM_SHA}.wasm").read_bytes() == WEBSERVER_ATOM
    assert "atoms" in result.stderr  # the bar's label once the tree arrived
    assert "1.5/1.5 MB" in result.stderr  # its byte count, complete


def test_cli_tree_exit_code_of_an_invalid_tree(
    server: Running, files: Path, tmp_path: Path
) -> None:
    """An INVALID_TREE exits 18 with one line naming the reason."""
    pkg = publish(
        files,
        "acme/app@1.0.0",
        v3_package("acme/app", "1.0.0", commands={"run": wasi_command("ghost")}),
    )
    path = tmp_path / "bad.json"
    path.write_text(json_format.MessageToJson(resolution(pkg, commands=[("run", pkg.id, "run")])))
    result = run([CLI, "--server", server.address, "tree", pkg.id, "--resolution", str(path)])
    assert result.returncode == 18
    assert result.stderr.startswith("pkgloader-client: INVALID_TREE: The 'run' command uses")
    assert len(result.stderr.strip().splitlines()) == 1


def test_resolve_then_load_tree(make_server, tmp_path: Path) -> None:
    """What `resolve()` returns goes straight into `load_tree(resolution=...)`."""
    folder = tmp_path / "files" / "packages"
    folder.mkdir(parents=True)
    (folder / "wasmer--static-web-server@1.2.0.webc").write_bytes(static_webserver_dependency())
    server = make_server(package_dirs=(folder,))
    with PackageLoaderClient(server.address) as client:
        resolved = client.resolve(STATIC.url)
        got = client.load_tree(STATIC.url, resolution=resolved, include_atoms=True)
    assert got.commands[0].package == STATIC_DEP_ID
    assert got.atoms == {ATOM_SHA: WEBSERVER_ATOM}
