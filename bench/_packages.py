"""Packages the benchmarks need, built on the fly: valid webc v1 files of any size.

A big package is a webc v1 container (doc §3.1) whose one atom holds the bulk: the loader parses
every package, and a v1 file parses from its headers alone, whatever its atom sizes. The atom
bytes are random over a 16-letter alphabet, so zstd shrinks them about 2:1, as it does real wasm.
Files are written in 1 MiB pieces, never held whole in memory.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import cbor2
import zstandard
from pkgloader.formats import writer
from pkgloader.formats.writer import Content
from pkgloader.formats.writer import Written as Built

from bench._common import WABT, MiB

_ALPHABET = bytes.maketrans(
    bytes(range(256)), bytes(b"abcdefghijklmnop"[i % 16] for i in range(256))
)


def _random_pieces(size: int, seed: int) -> Callable[[], Iterator[bytes]]:
    def pieces() -> Iterator[bytes]:
        rng = random.Random(seed)
        left = size
        while left:
            n = min(MiB, left)
            yield rng.randbytes(n).translate(_ALPHABET)
            left -= n

    return pieces


def _signature(pieces: Callable[[], Iterator[bytes]]) -> str:
    digest = hashlib.sha256()
    for piece in pieces():
        digest.update(piece)
    return "sha256:" + base64.b64encode(digest.digest()).decode()


def big_webc(directory: Path, size: int, *, seed: int = 1) -> Built:
    """A valid webc v1 package of about `size` bytes: one command, one atom, one small volume."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"big-{size}-{seed}.webc"
    atom_size = size - 4096
    pieces = _random_pieces(atom_size, seed)
    manifest = {
        "package": {"wapm": {"name": "bench/big", "version": "1.0.0"}},
        "atoms": {"big": {"kind": "https://webc.org/kind/wasm", "signature": _signature(pieces)}},
        "commands": {
            "big": {
                "runner": "https://webc.org/runner/wasi",
                "annotations": {"wasi": {"atom": "big"}},
            }
        },
    }
    readme = b"a synthetic package for pkgloader's benchmarks\n"
    pieces_of = writer.iter_v1(
        manifest, {"big": Content(atom_size, pieces)}, {"atom": {"README": readme}}
    )
    return writer.write_file(path, pieces_of)


def scaled_wabt(directory: Path, factor: int) -> Built:
    """wabt-1.0.37 with every atom `factor` times larger (its bytes repeated): the same shape —
    manifest, atom names, commands, volumes — with only the atom sizes changed."""
    data = WABT.read_bytes()
    pos = writer.V1_HEADER_SIZE
    manifest_len, pos = _read_uleb(data, pos)
    manifest = cbor2.loads(data[pos : pos + manifest_len])
    pos += manifest_len
    blob_len, pos = _read_uleb(data, pos)
    blob = data[pos : pos + blob_len]
    # The volumes are copied as they are: (name, encoded blob) pairs.
    volumes: dict[str, bytes] = {}
    vpos = pos + blob_len
    while vpos < len(data):
        name_len, vpos = _read_uleb(data, vpos)
        name = data[vpos : vpos + name_len].decode()
        size, vpos = _read_uleb(data, vpos + name_len)
        volumes[name] = data[vpos : vpos + size]
        vpos += size
    header_len, hpos = _read_uleb(blob, 0)
    header, atom_data = blob[hpos : hpos + header_len], blob[hpos + header_len :]
    level = int.from_bytes(header[:8], "little")
    entries, i = [], 8
    while i < 8 + level:
        name_len = int.from_bytes(header[i : i + 7], "little")
        start = int.from_bytes(header[i + 8 : i + 16], "little")
        end = int.from_bytes(header[i + 16 : i + 24], "little")
        name = header[i + 24 : i + 24 + name_len].decode()
        entries.append((name, atom_data[start:end]))
        i += 24 + name_len
    atoms = {}
    for name, content in entries:
        grown = content * factor

        def pieces(grown: bytes = grown) -> Iterator[bytes]:
            for k in range(0, len(grown), MiB):
                yield grown[k : k + MiB]

        atoms[name] = Content(len(grown), pieces)
        manifest["atoms"][name]["signature"] = _signature(pieces)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"wabt-x{factor}.webc"
    return writer.write_file(path, writer.iter_v1(manifest, atoms, volumes))


def _read_uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def zstd_copy(built: Built) -> Path:
    """`<file>.zst`, compressed with zstd level 3 on every core (once per file)."""
    target = built.path.with_name(built.path.name + ".zst")
    if not target.exists():
        compressor = zstandard.ZstdCompressor(level=3, threads=-1)
        with open(built.path, "rb") as src, open(target, "wb") as dst:
            compressor.copy_stream(src, dst, read_size=4 * MiB, write_size=4 * MiB)
    return target
