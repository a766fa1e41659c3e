"""`pkgloader-client` is a distribution of its own: `python -m build client/` makes a wheel and an
sdist that hold the generated modules, their type stubs, py.typed and the console script."""

from __future__ import annotations

import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.client.conftest import run
from tests.conftest import REPO

VERSION = (REPO / "client" / "VERSION").read_text().strip()
GENERATED = "pkgloader_client/_generated/pkgloader/v1/"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel and sdist of a copy of client/ (building in place would leave build/ and
    egg-info in the shared tree). --no-isolation: the dev extras hold the build backend, so no
    download is needed at build time."""
    root = tmp_path_factory.mktemp("build")
    source = root / "client"
    shutil.copytree(
        REPO / "client",
        source,
        ignore=shutil.ignore_patterns("*.egg-info", "build", "dist", "__pycache__"),
    )
    out = root / "dist"
    result = run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)]
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(out.glob("*.whl"))
    sdists = list(out.glob("*.tar.gz"))
    assert len(wheels) == 1
    assert len(sdists) == 1
    return wheels[0], sdists[0]


def test_wheel_holds_the_generated_modules_stubs_and_py_typed(built: tuple[Path, Path]) -> None:
    """The wheel has the generated modules with their .pyi files, py.typed and the client layer."""
    wheel, _ = built
    assert wheel.name == f"pkgloader_client-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for name in (
        "package_loader_pb2.py",
        "package_loader_pb2.pyi",
        "package_loader_pb2_grpc.py",
        "package_loader_pb2_grpc.pyi",
        "__init__.py",
    ):
        assert GENERATED + name in names
    for name in ("__init__.py", "py.typed", "_client.py", "_aio.py", "_errors.py", "_cli.py"):
        assert f"pkgloader_client/{name}" in names
    assert not any(n.startswith("pkgloader/") for n in names)  # never the server


def test_wheel_metadata_names_the_version_dependencies_and_console_script(
    built: tuple[Path, Path],
) -> None:
    """METADATA carries client/VERSION and the runtime deps; the console script is declared."""
    wheel, _ = built
    with zipfile.ZipFile(wheel) as zf:
        info = f"pkgloader_client-{VERSION}.dist-info/"
        metadata = zf.read(info + "METADATA").decode()
        entry_points = zf.read(info + "entry_points.txt").decode()
    assert "Name: pkgloader-client\n" in metadata
    assert f"Version: {VERSION}\n" in metadata
    for dep in ("grpcio", "protobuf", "grpcio-health-checking", "googleapis-common-protos", "rich"):
        assert f"Requires-Dist: {dep}" in metadata
    assert "pkgloader-client = pkgloader_client._cli:main" in entry_points
    assert "# pkgloader-client" in metadata  # the README is the long description


def test_sdist_is_complete(built: tuple[Path, Path]) -> None:
    """The sdist has what a rebuild needs: pyproject, VERSION, README, the stubs and py.typed."""
    _, sdist = built
    prefix = f"pkgloader_client-{VERSION}/"
    with tarfile.open(sdist) as tf:
        names = set(tf.getnames())
    for name in (
        "pyproject.toml",
        "VERSION",
        "README.md",
        "pkgloader_client/py.typed",
        "pkgloader_client/_generated/pkgloader/v1/package_loader_pb2.pyi",
        "pkgloader_client/_generated/pkgloader/v1/package_loader_pb2_grpc.pyi",
    ):
        assert prefix + name in names
