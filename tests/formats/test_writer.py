"""`pkgloader.formats.writer`, the one webc writer of the tests and the benchmarks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pkgloader.formats import open_package, writer
from pkgloader_client import pb


def test_the_writer_api_is_pinned() -> None:
    """The public names are exactly these, sorted (constants and types first)."""
    assert writer.__all__ == [
        "MAGIC",
        "V1_HEADER_SIZE",
        "Content",
        "Leaf",
        "Tree",
        "Written",
        "assemble",
        "atoms_payload",
        "iter_v1",
        "section",
        "tree_hash",
        "u64",
        "uleb128",
        "v1_blob",
        "v1_volume_parts",
        "volume_header",
        "volume_payload",
        "write_file",
        "write_indexed",
        "write_v1",
    ]
    assert all(hasattr(writer, name) for name in writer.__all__)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**32, 2**63 - 1])
def test_uleb128_is_the_protobuf_varint(n: int) -> None:
    """One encoder serves webc v1 lengths and protobuf framing: it matches protobuf's own."""
    encoded = pb.Volume(files=n).SerializeToString()  # field 2, varint: tag 0x10, then n
    assert encoded == (b"\x10" + writer.uleb128(n) if n else b"")


def test_a_big_v1_package_streams_in_pieces_and_opens(tmp_path: Path) -> None:
    """A `Content` atom is written piece by piece (no piece larger than its chunks), and the
    file opens with the atom's bytes intact; `write_file` reports its sha256 and size."""
    chunk = b"\x00asm" + bytes(64 * 1024 - 4)
    atom = writer.Content(len(chunk) * 40, lambda: (chunk for _ in range(40)))
    manifest = {"package": {"wapm": {"name": "t/big", "version": "1.0.0"}}, "atoms": {}}
    pieces = list(writer.iter_v1(manifest, {"big": atom}, {"atom": {"README": b"hi"}}))
    assert max(len(p) for p in pieces) <= max(len(chunk), writer.V1_HEADER_SIZE)
    written = writer.write_file(tmp_path / "big.webc", iter(pieces))
    data = (tmp_path / "big.webc").read_bytes()
    assert written.size == len(data)
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    with open_package(written.path) as package:
        assert bytes(package.get_atom("big")) == chunk * 40
        assert bytes(package.get_volume("atom").read_file("/README")) == b"hi"


def test_a_v1_checksum_covers_lazy_content_too(tmp_path: Path) -> None:
    """With checksum=True the body is generated twice; the reader finds the checksum valid."""
    atom = writer.Content(3, lambda: iter((b"a", b"bc")))
    data = writer.write_v1({"package": {}}, {"x": atom}, {}, checksum=True)
    with open_package(data) as package:
        assert package.checksum_valid is True
        assert bytes(package.get_atom("x")) == b"abc"
