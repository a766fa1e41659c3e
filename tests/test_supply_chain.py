"""Supply chain: third-party packages install only from lock files with sha256 hashes."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

LOCKS = {name: REPO / "requirements" / f"{name}.lock" for name in ("dev", "runtime")}
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked(path: Path) -> dict[str, list[str]]:
    """name → hashes, from a uv/pip-tools lock file."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line.startswith(" "):
            name, sep, _ = stripped.partition("==")
            assert sep, f"{path.name}: not pinned with ==: {stripped}"
            current = _norm(name)
            entries[current] = []
        elif stripped.startswith("--hash=sha256:"):
            assert current is not None
            entries[current].append(stripped.split(":", 1)[1].rstrip(" \\"))
    return entries


def _declared(dev: bool) -> set[str]:
    names = set()
    for pyproject in (REPO / "pyproject.toml", REPO / "client" / "pyproject.toml"):
        project = tomllib.loads(pyproject.read_text())["project"]
        requirements = list(project.get("dependencies", []))
        if dev:
            requirements += project.get("optional-dependencies", {}).get("dev", [])
        for requirement in requirements:
            match = _NAME.match(requirement)
            assert match
            names.add(_norm(match.group(1)))
    return names - {"pkgloader", "pkgloader-client"}


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_locked_package_is_pinned_with_hashes(name: str) -> None:
    """Each entry has an exact version and at least one sha256."""
    entries = _locked(LOCKS[name])
    assert entries
    assert [package for package, hashes in entries.items() if not hashes] == []
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for hashes in entries.values() for h in hashes)


@pytest.mark.parametrize(("name", "dev"), [("dev", True), ("runtime", False)])
def test_locks_cover_every_declared_dependency(name: str, dev: bool) -> None:
    """A dependency added to a pyproject.toml without `make lock` fails here."""
    missing = _declared(dev) - set(_locked(LOCKS[name]))
    assert missing == set(), f"run `make lock`: {sorted(missing)} not in {name}.lock"


def test_installs_use_require_hashes() -> None:
    """The Makefile's install step installs third-party packages only with --require-hashes."""
    makefile = (REPO / "Makefile").read_text()
    assert "--require-hashes -r requirements/dev.lock" in makefile
    assert "--no-deps" in makefile


def _wheel(folder: Path, body: bytes) -> Path:
    """A minimal pure-Python wheel, built here so the test needs no index."""
    path = folder / "demo_pkg-1.0-py3-none-any.whl"
    files = {
        "demo_pkg/__init__.py": body,
        "demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
        "demo_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("demo_pkg-1.0.dist-info/RECORD,,")
    files["demo_pkg-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def test_a_tampered_package_fails_the_install(tmp_path: Path) -> None:
    """The same pip mode as the Makefile refuses a package whose bytes changed after locking."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = _wheel(wheels, b"VALUE = 1\n")
    lock = tmp_path / "demo.lock"
    lock.write_text(
        f"demo-pkg==1.0 --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n"
    )

    def install() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--find-links",
                str(wheels),
                "--require-hashes",
                "-r",
                str(lock),
                "--target",
                str(tmp_path / "t"),
                "--no-cache-dir",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert install().returncode == 0
    _wheel(wheels, b"VALUE = 2  # changed after locking\n")
    result = install()
    assert result.returncode != 0
    assert "DO NOT MATCH THE HASHES" in result.stderr
