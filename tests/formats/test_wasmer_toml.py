"""wasmer.toml → manifest conversion rules (doc §5) beyond what cowsay exercises."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile

import pytest
from pkgloader.formats import Binding, Command, Dependency, open_package
from pkgloader.formats._wasmer_toml import sanitize_path

WASM = b"\x00asm\x01\x00\x00\x00"


def tarball(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue(), mtime=0)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("README.md", "/README.md"),
        ("./a/./b", "/a/b"),
        ("a/../b", "/b"),
        ("../../x", "/x"),
        ("", "/"),
        (".", "/"),
        ("/abs//path/", "/abs/path"),
    ],
)
def test_sanitize_path(path: str, expected: str) -> None:
    """sanitize_path drops '.', lets '..' pop and always returns an absolute path."""
    assert sanitize_path(path) == expected


def test_full_wasmer_toml() -> None:
    """Dependencies, fs volumes, runners, annotations, entrypoint and bindings are converted."""
    toml = b"""
[package]
name = "ns/app"
version = "1.2.3"
description = "dropped"
license = "MIT"
license-file = "./LICENSE"
readme = "docs/../README.md"
homepage = "https://example.com"
entrypoint = "serve"

[dependencies]
"sharrattj/coreutils" = "1.0.16"
"wasmer/python" = "^3.12"
"a/b" = ">=1.2, <2"
"c/d" = "*"
"e/f" = "=1.0.0"

[[module]]
name = "app"
source = "build/app.wasm"
abi = "wasi"
bindings = { wit-bindgen = "0.1.0", wit-exports = "app.wit" }

[[module]]
name = "lib"
source = "lib.wasm"
bindings = { wai-version = "0.2.0", exports = "lib.wai", imports = ["dep.wai"] }

[[command]]
name = "serve"
module = "app"
runner = "wcgi"
annotations = { wasi = { env = ["A=1"] }, custom = { x = 1 } }

[[command]]
name = "run"
module = "app"
main_args = "-v --flag"
package = "ns/app"

[[command]]
name = "py"
module = "wasmer/python:python"
runner = "https://example.com/my-runner"

[[command]]
name = "four"
module = "lib"
runner = "wasm4"

[fs]
"/data" = "./public"
"/cfg" = "config"
"""
    files = {
        "wasmer.toml": toml,
        "build/app.wasm": WASM + b"app",
        "lib.wasm": WASM + b"lib",
        "LICENSE": b"MIT",
        "README.md": b"# readme",
        "public/index.html": b"<html>",
        "public/css/site.css": b"body{}",
        "config/app.toml": b"x = 1",
    }
    with open_package(tarball(files, dirs=("public/empty",))) as c:
        m = c.manifest
        assert m.entrypoint == "serve"
        assert m.dependencies == (
            Dependency("sharrattj/coreutils", "sharrattj/coreutils@^1.0.16"),
            Dependency("wasmer/python", "wasmer/python@^3.12"),
            Dependency("a/b", "a/b@>=1.2, <2"),
            Dependency("c/d", "c/d@*"),
            Dependency("e/f", "e/f@=1.0.0"),
        )
        assert m.package["wapm"] == {
            "license": "MIT",
            "license-file": {"volume": "metadata", "path": "/LICENSE"},
            "readme": {"volume": "metadata", "path": "/README.md"},
            "homepage": "https://example.com",
        }
        assert m.package["fs"] == [
            {"from": None, "volume_name": "/public", "mount_path": "/data"},
            {"from": None, "volume_name": "/config", "mount_path": "/cfg"},
        ]
        assert m.commands == (
            Command(
                "serve",
                "https://webc.org/runner/wcgi",
                {
                    "atom": {"name": "app"},
                    "wasi": {"atom": "app", "env": ["A=1"]},
                    "custom": {"x": 1},
                },
            ),
            Command(
                "run",
                "https://webc.org/runner/wasi",
                {
                    "atom": {"name": "app"},
                    "wasi": {"atom": "app", "main-args": ["-v", "--flag"], "package": "ns/app"},
                },
            ),
            Command(
                "py",
                "https://example.com/my-runner",
                {"atom": {"name": "python", "dependency": "wasmer/python"}},
            ),
            Command("four", "https://webc.org/runner/wasm4", {"atom": {"name": "lib"}}),
        )
        digest = base64.b64encode(hashlib.sha256(WASM + b"app").digest()).decode()
        assert [(a.name, a.signature, a.size) for a in m.atoms] == [
            ("app", "sha256:" + digest, 11),
            ("lib", m.atoms[1].signature, 11),
        ]
        assert m.bindings == (
            Binding(
                "library-bindings",
                "wit@0.1.0",
                {"wit": {"exports": "metadata://app.wit", "module": "atoms://app"}},
            ),
            Binding(
                "library-bindings",
                "wai@0.2.0",
                {
                    "wai": {
                        "module": "atoms://lib",
                        "exports": "metadata://lib.wai",
                        "imports": ["metadata://dep.wai"],
                    }
                },
            ),
        )
        assert list(c.volumes()) == ["metadata", "/public", "/config"]
        public = c.get_volume("/public")
        assert public is not None
        assert list(public.files()) == [("/css/site.css", 6), ("/index.html", 6)]
        assert public.read_dir("/empty") == []
        assert [e.name for e in public.read_dir("/") or []] == ["css", "empty", "index.html"]
        config = c.volumes()["/config"]
        assert bytes(config.read_file("/app.toml") or b"") == b"x = 1"
        assert c.validate() == []


def test_wasmer_toml_wins_over_wapm_toml() -> None:
    """When both exist, wasmer.toml is the manifest."""
    files = {
        "wapm.toml": b'[package]\nname = "old/x"\nversion = "0.1.0"\nrepository = "old"\n',
        "wasmer.toml": b'[package]\nname = "new/x"\nversion = "0.1.0"\nrepository = "new"\n',
    }
    with open_package(tarball(files)) as c:
        assert c.manifest.package["wapm"] == {"repository": "new"}


def test_single_command_becomes_the_entrypoint() -> None:
    """Without package.entrypoint, a lone command is the entrypoint; a v1 abi picks the runner."""
    toml = b"""
[[module]]
name = "m"
source = "m.wasm"
abi = "emscripten"

[[command]]
name = "only"
module = "m"
"""
    with open_package(tarball({"wasmer.toml": toml, "m.wasm": WASM})) as c:
        assert c.manifest.entrypoint == "only"
        assert c.manifest.commands == (
            Command("only", "https://webc.org/runner/emscripten", {"atom": {"name": "m"}}),
        )
        assert "package" not in c.manifest.raw
