"""Writers built from the documented layouts round-trip through the reader, and the crate's
published byte vectors (and the real fixtures) are reproduced byte for byte."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pkgloader.formats import Container, DirEntry, open_package
from pkgloader.formats import writer as w

from ._helpers import HELLO, WEBSERVER

EMPTY = hashlib.sha256(b"").hexdigest()


def files_of(container: Container, name: str) -> dict[str, bytes]:
    volume = container.volumes()[name]
    out = {}
    for path, size in volume.files():
        content = volume.read_file(path)
        assert content is not None
        assert len(content) == size
        out[path] = bytes(content)
    return out


def flatten(tree: w.Tree, prefix: str = "") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}/{name}"))
        else:
            out[f"{prefix}/{name}"] = value
    return out


# --------------------------------------------------------------- published byte vectors


def test_hello_is_rebuilt_byte_for_byte() -> None:
    """Writing hello's manifest and tree with the documented v1 layout gives the same file."""
    original = HELLO.read_bytes()
    with open_package(HELLO) as c:
        index_html = files_of(c, "atom")["/public/index.html"]
        rebuilt = w.write_v1(
            c.manifest.raw, {}, {"atom": {"public": {"index.html": index_html}}, "metadata": {}}
        )
    assert rebuilt == original


def test_hello_atom_header_walkthrough() -> None:
    """The 80-byte `atom` header of hello matches the doc's walk-through (§3.1)."""
    data = HELLO.read_bytes()
    assert data[1452:1455] == b"\x9c\x09\x50"  # volume length 1180, header_len 80
    expected = (
        w.u64(30)
        + (6).to_bytes(7, "little") + b"\x00" + w.u64(38) + w.u64(80) + b"public"
        + w.u64(34)
        + (10).to_bytes(7, "little") + b"\x01" + w.u64(0) + w.u64(1099) + b"index.html"
    )  # fmt: skip
    assert data[1455:1535] == expected
    assert w.v1_volume_parts({"public": {"index.html": data[1535:2634]}})[0] == expected


def test_empty_v3_header_is_65_bytes() -> None:
    """An empty v3 volume header is `1e | len 56 | 24 zero bytes | sha256("")` (65 bytes)."""
    header, data = w.volume_header({}, v3=True)
    assert header == bytes.fromhex("1e" + "3800000000000000" + "00" * 24 + EMPTY)
    assert (len(header), data) == (65, b"")
    fixture = WEBSERVER.read_bytes()
    assert fixture[964 + 41 : 964 + 122] == w.u64(65) + header + w.u64(0)  # the atoms payload
    assert hashlib.sha256(fixture[964 + 41 : 964 + 122]).hexdigest() == (
        "56d2b4739ac75c5005b909ae0a27be586d827b8fb217940726315746f282f0ac"
    )


def test_webserver_sections_are_rebuilt_byte_for_byte() -> None:
    """Every v3 section after the index (manifest, atoms, both volumes) is reproduced exactly."""
    fixture = WEBSERVER.read_bytes()
    with open_package(WEBSERVER) as c:
        config = files_of(c, "/settings")["/config.toml"]
        rebuilt = w.write_indexed(
            c.manifest.raw,
            {},
            {"/settings": {"config.toml": config}, "metadata": {}},
            v3=True,
            modified={"/settings": {"/config.toml": 1725977743}},
        )
    header, _ = w.volume_header(
        {"config.toml": config}, v3=True, modified={"/config.toml": 1725977743}
    )
    assert len(header) == 197
    assert fixture[566:] == rebuilt[-(len(fixture) - 566) :]


def kitchen_sink_tree() -> w.Tree:
    return {
        "a": {
            "b": {"file1.txt": b"\xbb" * 5, "xyz.txt": b"\xaa" * 10},
            "c": {"d": {}, "file2.txt": b"\xcc" * 8},
        },
        "file3.txt": b"\xdd" * 2,
    }


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_v2_kitchen_sink_vector() -> None:
    """The webc crate's 407-byte v2 `read_the_kitchen_sink_volume_section` header reads back."""

    def d(n: int) -> bytes:
        return bytes([30]) + w.u64(n)

    def entry(offset: int, name: bytes) -> bytes:
        return w.u64(offset) + w.u64(len(name)) + name

    def f(start: int, end: int, content: bytes) -> bytes:
        return bytes([31]) + w.u64(start) + w.u64(end) + sha(content)

    header = (
        d(42) + entry(51, b"a") + entry(358, b"file3.txt")
        + d(34) + entry(94, b"b") + entry(249, b"c")
        + d(48) + entry(151, b"file1.txt") + entry(200, b"xyz.txt")
        + f(0, 5, b"\xbb" * 5) + f(5, 15, b"\xaa" * 10)
        + d(42) + entry(300, b"d") + entry(309, b"file2.txt")
        + d(0)
        + f(15, 23, b"\xcc" * 8)
        + f(23, 25, b"\xdd" * 2)
    )  # fmt: skip
    assert len(header) == 407
    assert w.volume_header(kitchen_sink_tree(), v3=False)[0] == header
    data = b"\xbb" * 5 + b"\xaa" * 10 + b"\xcc" * 8 + b"\xdd" * 2
    payload = w.u64(6) + b"volume" + w.u64(len(header)) + header + w.u64(len(data)) + data
    raw = w.assemble(cbor2.dumps({}), w.atoms_payload({}, v3=False), {"volume": payload}, v3=False)
    with open_package(raw) as c:
        assert c.format == "webc-v2"
        volume = c.volumes()["volume"]
        assert [e.name for e in volume.read_dir("/") or []] == ["a", "file3.txt"]
        assert files_of(c, "volume") == flatten(kitchen_sink_tree())
        assert volume.read_dir("/a/c/d") == []
        assert c.validate() == []


def test_v3_kitchen_sink_vector() -> None:
    """The crate's 1039-byte v3 kitchen-sink header (Merkle hashes included) reads back."""
    tree = kitchen_sink_tree()
    b_hash = sha(sha(b"\xbb" * 5) + sha(b"\xaa" * 10))
    c_hash = sha(sha(b"") + sha(b"\xcc" * 8))
    a_hash = sha(b_hash + c_hash)
    root_hash = sha(a_hash + sha(b"\xdd" * 2))
    header, _data = w.volume_header(tree, v3=True)
    assert len(header) == 1039
    # Spot checks against the vector: the root record and the offsets of its two children.
    assert header[:9] == bytes([30]) + w.u64(162)
    assert header[9 + 24 : 9 + 56] == root_hash
    assert header[65:73] == w.u64(171)
    assert header[73:105] == a_hash
    assert header[171:180] == bytes([30]) + w.u64(154)
    raw = w.write_indexed({}, {}, {"volume": tree}, v3=True)
    with open_package(raw) as c:
        volume = c.volumes()["volume"]
        assert volume.read_dir("/") == [
            DirEntry("a", True, 0, a_hash, None),  # 0 stored: no time recorded
            DirEntry("file3.txt", False, 2, sha(b"\xdd" * 2), None),
        ]
        assert files_of(c, "volume") == flatten(tree)
        assert c.validate() == []


# --------------------------------------------------------------- round trips

names = st.text(alphabet="abcdefgh.-_é", min_size=1, max_size=8).filter(
    lambda n: n not in (".", "..")
)
trees: st.SearchStrategy[w.Tree] = st.recursive(
    st.dictionaries(names, st.binary(max_size=40), max_size=4),
    lambda children: st.dictionaries(names, st.binary(max_size=40) | children, max_size=4),
    max_leaves=12,
)
atom_maps = st.dictionaries(names, st.binary(min_size=1, max_size=64), max_size=4)
volume_maps = st.dictionaries(
    st.text(alphabet="abc/", min_size=1, max_size=6), trees, min_size=0, max_size=3
)


def manifest_for(atoms: dict[str, bytes]) -> dict[str, Any]:
    return {
        "package": {"wapm": {"name": "test/pkg", "version": "1.0.0"}},
        "atoms": {
            name: {
                "kind": "https://webc.org/kind/wasm",
                "signature": "sha256:" + base64.b64encode(sha(content)).decode(),
            }
            for name, content in atoms.items()
        },
        "commands": {name: {"runner": "https://webc.org/runner/wasi", "annotations": {}}
                     for name in atoms},
    }  # fmt: skip


def check_roundtrip(raw: bytes, atoms: dict[str, bytes], volumes: dict[str, w.Tree]) -> None:
    with open_package(raw) as c:
        assert {k: bytes(v) for k, v in c.atoms().items()} == atoms
        assert list(c.atoms()) == sorted(atoms)
        assert [a.name for a in c.manifest.atoms] == list(atoms)
        assert all(a.size == len(atoms[a.name]) for a in c.manifest.atoms)
        assert set(c.volumes()) == set(volumes)
        for name, tree in volumes.items():
            assert files_of(c, name) == flatten(tree)
            volume = c.volumes()[name]
            assert volume.file_count == len(flatten(tree))
            assert volume.total_bytes == sum(map(len, flatten(tree).values()))
        assert c.validate() == []


@settings(max_examples=60, deadline=None)
@given(atoms=atom_maps, volumes=volume_maps)
def test_v1_roundtrip(atoms: dict[str, bytes], volumes: dict[str, w.Tree]) -> None:
    """Random atoms and nested volumes written as v1 (with a checksum) read back identically."""
    raw = w.write_v1(manifest_for(atoms), atoms, volumes, checksum=True)
    check_roundtrip(raw, atoms, volumes)
    with open_package(raw) as c:
        assert c.checksum_valid is True


@pytest.mark.parametrize("v3", [False, True], ids=["v2", "v3"])
@settings(max_examples=60, deadline=None)
@given(atoms=atom_maps, volumes=volume_maps)
def test_indexed_roundtrip(v3: bool, atoms: dict[str, bytes], volumes: dict[str, w.Tree]) -> None:
    """Random atoms and nested volumes written as v2/v3 read back identically and validate."""
    raw = w.write_indexed(manifest_for(atoms), atoms, volumes, v3=v3)
    check_roundtrip(raw, atoms, volumes)


@pytest.mark.parametrize("v3", [False, True], ids=["v2", "v3"])
def test_indexed_fixed_packages(v3: bool) -> None:
    """Hand-picked v2/v3 packages: several atoms, deep nesting, an empty volume, empty dirs."""
    atoms = {"python": b"\x00asm" + b"p" * 100, "alpha": b"\x00asm", "zeta": b"\x00asm" + b"z"}
    volumes = {
        "atom": {"lib": {"python3.11": {"os.py": b"import sys\n", "empty": {}}}, "README": b"hi"},
        "metadata": {},
        "/app": {"index.html": b"<html>", "static": {"a.css": b"", "b.js": b"x" * 1000}},
    }
    raw = w.write_indexed(manifest_for(atoms), atoms, volumes, v3=v3)
    check_roundtrip(raw, atoms, volumes)
    with open_package(raw) as c:
        assert c.format == ("webc-v3" if v3 else "webc-v2")
        assert c.version == ("003" if v3 else "002")
        assert c.webc_hash == sha(raw)
        assert c.volumes()["metadata"].read_dir("/") == []
        assert c.volumes()["atom"].read_dir("/lib/python3.11/empty") == []
        assert c.volumes()["atom"].read_file("/lib") is None
        assert c.volumes()["atom"].read_dir("/README") is None
        assert c.volumes()["atom"].metadata("/missing") is None
        entry = (c.volumes()["atom"].read_dir("/") or [])[0]
        assert (entry.hash is not None) == v3  # hashes are exposed for v3 only, like the crate
