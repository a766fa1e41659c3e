"""The five real packages: everything the fixtures README lists is read back exactly."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from pkgloader.formats import (
    Binding,
    Command,
    Content,
    Dependency,
    DirEntry,
    Metadata,
    detect,
    open_package,
)

from ._helpers import ALL_SAMPLES, COWSAY, DASH, HELLO, WABT, WEBSERVER, exercise

WASM_KIND = "https://webc.org/kind/wasm"


def sha256(data: object) -> str:
    if isinstance(data, Content):
        return data.sha256().hex()
    return hashlib.sha256(data).hexdigest()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "fmt", "version", "file_sha256"),
    [
        (
            HELLO,
            "webc-v1",
            "001",
            "da74f27c90ad4af24a6d69a1cdc521313fa64176abd3f3c200c730048e0fa94e",
        ),
        (
            DASH,
            "webc-v1",
            "001",
            "8f65a4da88e86935c3a0214bde050bb59b774cbf700f4d68a87948170385b323",
        ),
        (
            WABT,
            "webc-v1",
            "001",
            "0f41d38dcfb5abc1fadb5e9acbc5c645e53fe4d0dd86270b72a09bfeee04d055",
        ),
        (
            WEBSERVER,
            "webc-v3",
            "003",
            "dea35a11ab6e49af2496534c50b064df7deab8d21cbf4355c9ae1f105dd0b427",
        ),
        (COWSAY, "tarball", "003", None),
    ],
    ids=["hello", "dash", "wabt", "webserver", "cowsay"],
)
def test_format_version_and_webc_hash(
    path: Path, fmt: str, version: str, file_sha256: str | None
) -> None:
    """Each sample detects as the README says; webc_hash is the file's sha256 (None for tar.gz)."""
    assert detect(path.read_bytes()) == fmt
    with open_package(path) as container:
        assert (container.format, container.version) == (fmt, version)
        expected = bytes.fromhex(file_sha256) if file_sha256 else None
        assert container.webc_hash == expected


@pytest.mark.parametrize("path", ALL_SAMPLES, ids=lambda p: p.name.split("-")[0])
def test_every_sample_validates_clean(path: Path) -> None:
    """validate() finds nothing wrong in any real package, and every API call works on it."""
    with open_package(path) as container:
        assert container.validate() == []
        exercise(container)


@pytest.mark.parametrize("path", ALL_SAMPLES, ids=lambda p: p.name.split("-")[0])
def test_bytes_and_path_give_the_same_container(path: Path) -> None:
    """open_package(bytes) and open_package(path) read the same manifest, atoms and files."""
    with open_package(path) as from_path:
        from_bytes = open_package(path.read_bytes())
        assert from_bytes.manifest == from_path.manifest
        assert {k: bytes(v) for k, v in from_bytes.atoms().items()} == {
            k: bytes(v) for k, v in from_path.atoms().items()
        }
        for name, volume in from_path.volumes().items():
            assert list(volume.files()) == list(from_bytes.volumes()[name].files())


def test_hello() -> None:
    """hello: v1 without checksum, a dependency, wapm annotation, /public/index.html."""
    with open_package(HELLO) as c:
        m = c.manifest
        assert m.entrypoint is None
        assert m.commands == ()
        assert m.atoms == ()
        assert c.atoms() == {}
        assert m.dependencies == (Dependency("static-web-server", "sharrattj/static-web-server@1"),)
        assert m.package == {
            "wapm": {
                "name": "wasmer/hello",
                "version": "0.1.0",
                "description": "wasmer/hello website",
            }
        }
        assert m.raw == {
            "use": {"static-web-server": "sharrattj/static-web-server@1"},
            "package": m.package,
        }
        assert c.checksum_valid is None
        assert list(c.volumes()) == ["atom", "metadata"]
        atom = c.volumes()["atom"]
        assert atom.read_dir("/") == [DirEntry("public", True, 0, None, None)]
        assert atom.read_dir("/public") == [DirEntry("index.html", False, 1099, None, None)]
        assert atom.metadata("/public/index.html") == Metadata(False, 1099, None)
        assert atom.metadata("/public") == Metadata(True, 0, None)
        content = atom.read_file("/public/index.html")
        assert content is not None
        assert len(content) == 1099
        assert bytes(content).lstrip().lower().startswith(b"<!doctype html") or b"<html" in bytes(
            content
        )
        assert (atom.file_count, atom.total_bytes) == (1, 1099)
        assert c.volumes()["metadata"].read_dir("/") == []
        assert c.volumes()["metadata"].file_count == 0


def test_dash() -> None:
    """dash: one atom with its signature and sha256, one command, a dependency, /usr/coreutils."""
    with open_package(DASH) as c:
        m = c.manifest
        assert m.entrypoint == "dash"
        assert m.commands == (Command("dash", "https://webc.org/runner/wasi@unstable_", {}),)
        (atom,) = m.atoms
        assert (atom.name, atom.kind, atom.size, atom.annotations) == (
            "dash",
            WASM_KIND,
            332405,
            {},
        )
        assert atom.signature == "sha256:zk2FJJZlhE6p2IK9pe/tZ9EnYFc1x/W2dBV4BOYkycw="
        assert list(c.atoms()) == ["dash"]
        dash = c.get_atom("dash")
        assert dash is not None
        assert sha256(dash) == "ce4d85249665844ea9d882bda5efed67d127605735c7f5b674157804e624c9cc"
        assert bytes(dash[:4]) == b"\x00asm"
        assert m.dependencies == (Dependency("coreutils", "sharrattj/coreutils@1.0.16"),)
        assert m.package["wapm"] == {
            "name": "sharrattj/dash",
            "license": "GNU",
            "version": "1.0.18",
            "description": "Dash is a modern POSIX-compliant implementation of /bin/sh.",
        }
        assert "fs" not in m.package
        atom_volume = c.volumes()["atom"]
        assert list(atom_volume.files()) == [("/usr/coreutils/README.md", 1675)]
        assert [e.name for e in atom_volume.read_dir("/usr") or []] == ["coreutils"]
        assert c.volumes()["metadata"].file_count == 0
        assert c.checksum_valid is None


WABT_ATOMS = [
    ("wabt", 567898, "k3A45ZOekgicUWgZCYsjpNGoJaQFLs88ghVpmW+dACg=",
     "937038e5939e92089c516819098b23a4d1a825a4052ecf3c821569996f9d0028"),
    ("wat2wasm", 628364, "cMyDFe4yCuYpnKJ6j3ZnpIgzdY5DzWl0IBYZ1jXxmS0=",
     "70cc8315ee320ae6299ca27a8f7667a48833758e43cd6974201619d635f1992d"),
    ("wast2json", 655677, "cKQ9HKT6j/ojJkZw5110pONld7AJzBe6PmLVvG2UraA=",
     "70a43d1ca4fa8ffa23264670e75d74a4e36577b009cc17ba3e62d5bc6d94ada0"),
    ("wasm2wat", 441659, "OTJlKbzd7cNYtdqKtt6cmQu7Wi5OGGwCHg4UhOrnX0w=",
     "39326529bcddedc358b5da8ab6de9c990bbb5a2e4e186c021e0e1484eae75f4c"),
    ("wasm-interp", 522234, "OL9xxHpwDoasl6q/VzzlkzoRjM7tIGxzzVH++/6vprY=",
     "38bf71c47a700e86ac97aabf573ce5933a118cceed206c73cd51fefbfeafa6b6"),
    ("wasm-validate", 382968, "zQRGr5+Iyolh1IkThLoMXjomTjPZqNhmGqvK4p4GVGg=",
     "cd0446af9f88ca8961d4891384ba0c5e3a264e33d9a8d8661aabcae29e065468"),
    ("wasm-strip", 216171, "GP/yolEp7g8GDoTrAumMEocRSlDpEp8E71awbivBSWw=",
     "18fff2a25129ee0f060e84eb02e98c1287114a50e9129f04ef56b06e2bc1496c"),
]  # fmt: skip


def test_wabt() -> None:
    """wabt: valid v1 checksum, 7 atoms, 6 commands with the snake_case quirk, a binding."""
    with open_package(WABT) as c:
        m = c.manifest
        assert c.checksum_valid is True
        assert m.entrypoint is None
        assert [cmd.name for cmd in m.commands] == [
            "wat2wasm", "wast2json", "wasm2wat", "wasm-interp", "wasm-validate", "wasm-strip",
        ]  # fmt: skip
        for cmd in m.commands:
            assert cmd.runner == "https://webc.org/runner/wasi/command@unstable_"
            assert cmd.annotations == {
                "wasi": {"atom": cmd.name, "package": None, "main_args": None}
            }
        assert [(a.name, a.size, a.signature) for a in m.atoms] == [
            (name, size, "sha256:" + sig) for name, size, sig, _ in WABT_ATOMS
        ]
        assert {a.kind for a in m.atoms} == {WASM_KIND}
        assert all(a.annotations == {} for a in m.atoms)
        atoms = c.atoms()
        assert list(atoms) == sorted(name for name, *_ in WABT_ATOMS)
        for name, size, sig, digest in WABT_ATOMS:
            assert len(atoms[name]) == size
            assert sha256(atoms[name]) == digest
            assert base64.b64decode(sig).hex() == digest
        assert m.bindings == (
            Binding(
                "library-bindings",
                "wit@0.1.0",
                {"wit": {"module": "atoms://wabt", "exports": "metadata://src/embedding/wabt.wai"}},
            ),
        )
        assert m.package["wapm"] == {
            "name": "wasmer/wabt",
            "readme": {"path": "README-wapm.md", "volume": "metadata"},
            "version": "1.0.37",
            "repository": "https://github.com/wapm-packages/wabt",
            "description": "The WebAssembly Binary Toolkit",
        }
        assert m.dependencies == ()
        assert list(c.volumes()["atom"].files()) == [("/README-wapm.md", 1707)]
        metadata = c.volumes()["metadata"]
        assert list(metadata.files()) == [("/LICENSE", 11358), ("/src/embedding/wabt.wai", 741)]
        assert [(e.name, e.is_dir) for e in metadata.read_dir("/") or []] == [
            ("LICENSE", False),
            ("src", True),
        ]
        assert metadata.metadata("/src/embedding") == Metadata(True, 0, None)


def test_webserver_v3() -> None:
    """volume-static-webserver: v3 command annotations, fs mapping, hashes and timestamps."""
    with open_package(WEBSERVER) as c:
        m = c.manifest
        assert m.entrypoint == "script"
        assert m.commands == (
            Command(
                "script",
                "https://webc.org/runner/wasi",
                {
                    "atom": {"name": "webserver", "dependency": "wasmer/static-web-server"},
                    "wasi": {
                        "atom": "wasmer/static-web-server:webserver",
                        "main-args": ["-w", "/settings/config.toml"],
                    },
                },
            ),
        )
        assert m.atoms == ()
        assert c.atoms() == {}
        assert m.package == {
            "wapm": {},
            "fs": [{"from": None, "volume_name": "/settings", "mount_path": "/settings"}],
        }
        assert m.dependencies == (
            Dependency("wasmer/static-web-server", "wasmer/static-web-server@^1"),
        )
        assert list(c.volumes()) == ["/settings", "metadata"]
        settings = c.get_volume("/settings")
        assert settings is not None
        config_hash = "7cd69f571dbe8d741d7c08859325acad97c417d599544e6d16be72423862889b"
        assert settings.read_dir("/") == [
            DirEntry("config.toml", False, 3139, bytes.fromhex(config_hash), 1725977743)
        ]
        assert settings.metadata("/") == Metadata(True, 0, None)  # its stored time is 0: none
        assert settings.metadata("/config.toml") == Metadata(False, 3139, 1725977743)
        content = settings.read_file("/config.toml")
        assert content is not None
        assert sha256(content) == config_hash
        # The root's Merkle hash is sha256 of its single child's hash.
        assert sha256(bytes.fromhex(config_hash)) == (
            "ff71c7fab8382dceed8cbb0f19a3dfc34d3042c07590ae3cd0203c65501837f5"
        )
        assert c.volumes()["metadata"].read_dir("/") == []
        assert c.checksum_valid is None


def test_cowsay_tarball() -> None:
    """cowsay: wapm.toml is converted exactly like wasmer's expectation (minus wasm.features)."""
    with open_package(COWSAY) as c:
        m = c.manifest
        assert (c.format, c.version, c.webc_hash, c.checksum_valid) == (
            "tarball",
            "003",
            None,
            None,
        )
        assert m.entrypoint is None
        annotations = {"atom": {"name": "cowsay"}, "wasi": {"atom": "cowsay"}}
        assert m.commands == (
            Command("cowsay", "https://webc.org/runner/wasi", annotations),
            Command("cowthink", "https://webc.org/runner/wasi", annotations),
        )
        (atom,) = m.atoms
        assert (atom.name, atom.kind, atom.size) == ("cowsay", WASM_KIND, 1058629)
        assert atom.signature == "sha256:DPmhiSNXCg5261eTUi3BIvAc/aJttGj+nD+bGhQkVQo="
        cowsay = c.get_atom("cowsay")
        assert cowsay is not None
        assert sha256(cowsay) == "0cf9a18923570a0e76eb5793522dc122f01cfda26db468fe9c3f9b1a1424550a"
        assert m.package == {
            "wapm": {
                "readme": {"volume": "metadata", "path": "/README.md"},
                "repository": "https://github.com/wapm-packages/cowsay",
            }
        }
        assert m.dependencies == ()
        assert "use" not in m.raw
        assert "fs" not in m.package
        assert m.raw == {
            "package": m.package,
            "atoms": {
                "cowsay": {
                    "kind": WASM_KIND,
                    "signature": "sha256:DPmhiSNXCg5261eTUi3BIvAc/aJttGj+nD+bGhQkVQo=",
                }
            },
            "commands": {
                "cowsay": {"runner": "https://webc.org/runner/wasi", "annotations": annotations},
                "cowthink": {"runner": "https://webc.org/runner/wasi", "annotations": annotations},
            },
        }
        assert list(c.volumes()) == ["metadata"]
        assert list(c.volumes()["metadata"].files()) == [
            ("/LICENSE", 1070),
            ("/README.md", 2542),
            ("/target/wasm32-wasi/release/cowsay.wasm", 1058629),
            ("/wapm.toml", 441),
        ]


def test_v1_get_volume_accepts_raw_names() -> None:
    """For v1, get_volume finds the root package's volumes by their plain names."""
    with open_package(HELLO) as c:
        assert c.get_volume("atom") is c.volumes()["atom"]
        assert c.get_volume("nope") is None


def test_atoms_are_views_not_copies() -> None:
    """Atoms and file contents are handles on the package bytes: nothing is copied at open,
    each read sees the bytes as they are then."""
    data = bytearray(DASH.read_bytes())
    c = open_package(data)
    atom = c.get_atom("dash")
    assert isinstance(atom, Content)
    offset = 1693 + 1 + 36  # atoms blob start, its 1-byte ULEB128 header length, its header
    data[offset] ^= 0xFF
    assert atom[:1][0] == data[offset]
    data[offset] ^= 0xFF
    del atom
    c.close()


def test_close_is_idempotent_and_tolerates_held_views() -> None:
    """close() may be called twice, even while the caller still holds an atom view."""
    c = open_package(DASH)
    atom = c.get_atom("dash")
    c.close()
    c.close()
    assert atom is not None
    assert bytes(atom[:4]) == b"\x00asm"  # the mapping lives on until the view goes
    with pytest.raises(ValueError, match="closed"):
        c.atoms()
