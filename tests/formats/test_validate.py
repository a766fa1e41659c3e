"""validate() names each integrity failure precisely."""

from __future__ import annotations

import base64
import hashlib

import cbor2
from pkgloader.formats import open_package
from pkgloader.formats import writer as w

from ._helpers import DASH, WABT, WEBSERVER


def test_flipped_byte_in_an_atom_breaks_its_signature() -> None:
    """One flipped byte inside dash's atom is reported as a signature mismatch for 'dash'."""
    data = bytearray(DASH.read_bytes())
    data[1730 + 1000] ^= 0x01
    with open_package(bytes(data)) as c:
        (problem,) = c.validate()
        assert problem.startswith("atom 'dash': signature sha256:zk2FJJZlhE6p2IK9pe/tZ9EnYFc1")
        assert "does not match the atom's bytes" in problem


def test_flipped_byte_in_v3_file_data_breaks_file_and_merkle_hashes() -> None:
    """A flipped byte in config.toml: section hash, index checksum, file hash and Merkle root."""
    data = bytearray(WEBSERVER.read_bytes())
    # /settings payload starts at 1086 + 41; data follows name (8+9), header (8+197), length (8).
    data_start = 1086 + 41 + 8 + 9 + 8 + 197 + 8
    data[data_start + 10] ^= 0x01
    with open_package(bytes(data)) as c:
        problems = c.validate()
    assert len(problems) == 4, problems
    assert any("section volume '/settings': section hash" in p for p in problems)
    assert any("section volume '/settings': index checksum" in p for p in problems)
    assert any("file '/config.toml' has sha256" in p for p in problems)
    assert any("directory '/' has Merkle hash" in p and "ff71c7fab8382dce" in p for p in problems)


def test_wrong_v1_checksum() -> None:
    """A wrong v1 checksum makes checksum_valid False and is the one validate() problem."""
    data = bytearray(WABT.read_bytes())
    data[24] ^= 0x01
    with open_package(bytes(data)) as c:
        assert c.checksum_valid is False
        assert c.validate() == [
            "webc v1: the sha256 checksum in the header does not match the file"
        ]


def test_v1_checksum_covers_the_body() -> None:
    """Changing a byte after the header (here a volume file) invalidates the v1 checksum."""
    data = bytearray(WABT.read_bytes())
    data[-10] ^= 0x01
    with open_package(bytes(data)) as c:
        assert c.checksum_valid is False


def test_v3_entry_hash_disagreeing_with_the_child() -> None:
    """A parent entry whose recorded child hash differs from the child's own is reported."""
    header, data = w.volume_header({"f": b"abc"}, v3=True)
    good = hashlib.sha256(b"abc").digest()
    forged = header.replace(good, b"\x00" * 32, 1)  # the first occurrence: the entry's copy
    payload = w.u64(1) + b"v" + w.u64(len(forged)) + forged + w.u64(len(data)) + data
    raw = w.assemble(cbor2.dumps({}), w.atoms_payload({}, v3=True), {"v": payload}, v3=True)
    with open_package(raw) as c:
        problems = c.validate()
    assert any("the parent entry of file '/f' records hash 0000" in p for p in problems)


def test_v2_file_hash_mismatch() -> None:
    """A v2 file whose header sha256 does not match its bytes is reported."""
    raw = bytearray(w.write_indexed({}, {}, {"v": {"f": b"abc"}}, v3=False))
    at = raw.rindex(b"abc")
    raw[at] = ord("x")
    with open_package(bytes(raw)) as c:
        problems = c.validate()
    assert any("file '/f' has sha256" in p for p in problems)
    assert any("index checksum" in p for p in problems)


def test_atom_in_manifest_but_missing_and_bad_signature_format() -> None:
    """A declared atom without bytes, and a signature that is not sha256:<base64>, are named."""
    digest = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    manifest = {
        "atoms": {
            "ghost": {"kind": "k", "signature": "sha256:" + digest},
            "odd": {"kind": "k", "signature": "md5:abc"},
        }
    }
    raw = w.write_v1(manifest, {"odd": b"x"}, {})
    with open_package(raw) as c:
        assert c.validate() == [
            "atom 'ghost' is in the manifest but not in the package",
            "atom 'odd': unsupported signature 'md5:abc' (expected 'sha256:' and 32 bytes "
            "in base64)",
        ]
        assert [(a.name, a.size) for a in c.manifest.atoms] == [("ghost", 0), ("odd", 1)]
