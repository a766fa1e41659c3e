"""`pkgloader.formats.writer`: write webc v1, v2 and v3 containers, from the layouts of
`webc-format.md` §3.

The service reads packages and never writes one; this writer is for whoever needs a package
made to measure: the tests (round trips, and malformed files built from correct parts) and
`bench/` (valid packages of any size). It writes what the reference writer would: entries
sorted by name, v1 directory levels breadth first, v2/v3 records depth first, so a real
fixture can be reproduced byte for byte where the doc gives its layout.

A tree is a dict: ``name -> bytes`` (or `Content`) for a file, ``name -> dict`` for a
directory. `Content` is a file given by its size and a function that yields its bytes, so a v1
package of gigabytes streams through `iter_v1` / `write_v1_file` in pieces, never whole in
memory.

    from pkgloader.formats import writer

    data = writer.write_indexed({"package": {}}, {"main": wasm}, {"atom": {"README": b"hi"}},
                                v3=True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

MAGIC = b"\x00webc"
#: A v1 header: magic, version, checksum type, checksum, signature length, signature.
V1_HEADER_SIZE = 1308


@dataclass(frozen=True)
class Content:
    """A file's bytes given lazily: `size` bytes, yielded by `chunks()` (callable again for a
    second pass, e.g. a v1 checksum)."""

    size: int
    chunks: Callable[[], Iterable[bytes]]


Leaf = bytes | Content
Tree = dict[str, Any]  # name -> Leaf | Tree


def uleb128(n: int) -> bytes:
    """Unsigned LEB128, the v1 length prefix; the same encoding as a protobuf varint."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def u64(n: int) -> bytes:
    """A little-endian u64, the v2/v3 length and offset field."""
    return n.to_bytes(8, "little")


def _size(leaf: Leaf) -> int:
    return leaf.size if isinstance(leaf, Content) else len(leaf)


def _pieces(leaf: Leaf) -> Iterable[bytes]:
    return leaf.chunks() if isinstance(leaf, Content) else (leaf,)


def _bytes(leaf: Leaf) -> bytes:
    return b"".join(_pieces(leaf))


# ---------------------------------------------------------------------------- v1


def _v1_layout(tree: Tree) -> tuple[bytes, list[Leaf]]:
    """(header, the files' contents in data order) of a v1 volume: the root level, then every
    directory level breadth first; each level's entries sorted by name."""
    if not tree:
        return b"", []
    order: list[Tree] = [tree]
    i = 0
    while i < len(order):
        order.extend(v for _, v in sorted(order[i].items()) if isinstance(v, dict) and v)
        i += 1
    sizes = [8 + sum(24 + len(n.encode()) for n in level) for level in order]
    offsets = [sum(sizes[:k]) for k in range(len(order))]
    where = {
        id(level): (off, off + size) for level, off, size in zip(order, offsets, sizes, strict=True)
    }
    header = bytearray()
    data: list[Leaf] = []
    pos = 0
    for level, size in zip(order, sizes, strict=True):
        header += u64(size - 8)
        for name, value in sorted(level.items()):
            raw = name.encode()
            if isinstance(value, dict):
                start, end = where[id(value)] if value else (0, 0)
                kind = 0
            else:
                start, end = pos, pos + _size(value)
                pos = end
                data.append(value)
                kind = 1
            header += len(raw).to_bytes(7, "little") + bytes([kind]) + u64(start) + u64(end) + raw
    return bytes(header), data


def v1_volume_parts(tree: Tree) -> tuple[bytes, bytes]:
    """(header, data) of a v1 volume, in memory."""
    header, data = _v1_layout(tree)
    return header, b"".join(_bytes(leaf) for leaf in data)


def _v1_blob(tree: Tree | bytes) -> tuple[int, Iterator[bytes]]:
    """(length, pieces) of a v1 volume blob: ULEB128 header length, header, data. A `bytes`
    value is an encoded blob already (a volume copied from another file), passed through."""
    if isinstance(tree, bytes):
        return len(tree), iter((tree,))
    header, data = _v1_layout(tree)
    prefix = uleb128(len(header)) + header

    def pieces() -> Iterator[bytes]:
        yield prefix
        for leaf in data:
            yield from _pieces(leaf)

    return len(prefix) + sum(_size(leaf) for leaf in data), pieces()


def v1_blob(tree: Tree) -> bytes:
    """A v1 volume blob (the atoms section or one volume), in memory."""
    return b"".join(_v1_blob(tree)[1])


def _v1_body(
    manifest: Mapping[str, Any], atoms: Mapping[str, Leaf], volumes: Mapping[str, Tree | bytes]
) -> Iterator[bytes]:
    manifest_bytes = cbor2.dumps(manifest)
    yield uleb128(len(manifest_bytes)) + manifest_bytes
    size, pieces = _v1_blob(dict(atoms))
    yield uleb128(size)
    yield from pieces
    for name, tree in volumes.items():
        size, pieces = _v1_blob(tree)
        yield uleb128(len(name.encode())) + name.encode() + uleb128(size)
        yield from pieces


def iter_v1(
    manifest: Mapping[str, Any],
    atoms: Mapping[str, Leaf],
    volumes: Mapping[str, Tree | bytes],
    *,
    checksum: bool = False,
) -> Iterator[bytes]:
    """A webc v1 file, in pieces: header, CBOR manifest, atoms, then the volumes in the order
    given. With `checksum`, the header carries the sha256 of the file with a zeroed checksum
    and signature (the body is generated twice). A `bytes` volume is an encoded blob."""
    checksum_type = b"sha256----------" if checksum else b"-" * 16
    digest = b""
    if checksum:
        hasher = hashlib.sha256(MAGIC + b"001" + checksum_type + bytes(256 + 4 + 1024))
        for piece in _v1_body(manifest, atoms, volumes):
            hasher.update(piece)
        digest = hasher.digest()
    head = MAGIC + b"001" + checksum_type + digest.ljust(256, b"\x00") + bytes(4) + bytes(1024)
    assert len(head) == V1_HEADER_SIZE
    yield head
    yield from _v1_body(manifest, atoms, volumes)


def write_v1(
    manifest: Mapping[str, Any],
    atoms: Mapping[str, Leaf],
    volumes: Mapping[str, Tree | bytes],
    *,
    checksum: bool = False,
) -> bytes:
    """A complete webc v1 file, in memory (see `iter_v1`)."""
    return b"".join(iter_v1(manifest, atoms, volumes, checksum=checksum))


@dataclass(frozen=True)
class Written:
    """A package written to a file: where, its sha256 (hex) and its size."""

    path: Path
    sha256: str
    size: int


def write_file(path: Path, pieces: Iterable[bytes]) -> Written:
    """Write `pieces` (from `iter_v1`, or one `bytes`) to `path`, hashing as it goes."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "wb") as f:
        for piece in pieces:
            f.write(piece)
            digest.update(piece)
            size += len(piece)
    return Written(path, digest.hexdigest(), size)


# ---------------------------------------------------------------------------- v2 / v3


def tree_hash(node: Any) -> bytes:
    """The v3 hash of a file (sha256 of its bytes) or directory (of its children's hashes)."""
    if isinstance(node, dict):
        return hashlib.sha256(b"".join(tree_hash(v) for _, v in sorted(node.items()))).digest()
    return hashlib.sha256(_bytes(node)).digest()


def volume_header(
    tree: Tree, *, v3: bool, modified: dict[str, int] | None = None
) -> tuple[bytes, bytes]:
    """(header, data) of a v2/v3 volume; records in depth-first pre-order, like the crate's.
    `modified` gives v3 modification times by absolute path."""
    modified = modified or {}
    records: list[tuple[str, Any]] = []

    def visit(path: str, node: Any) -> None:
        records.append((path, node))
        if isinstance(node, dict):
            for name, child in sorted(node.items()):
                visit(path.rstrip("/") + "/" + name, child)

    visit("/", tree)

    def size(node: Any) -> int:
        if isinstance(node, dict):
            per_entry = (8 + 32 + 8) if v3 else (8 + 8)
            fixed = 1 + 8 + (24 + 32 if v3 else 0)
            return fixed + sum(per_entry + len(n.encode()) for n in node)
        return 1 + 8 + 8 + 32 + (24 if v3 else 0)

    offsets: dict[str, int] = {}
    pos = 0
    for path, node in records:
        offsets[path] = pos
        pos += size(node)
    header = bytearray()
    data = bytearray()
    for path, node in records:
        stamps = u64(0) + u64(modified.get(path, 0)) + u64(0) if v3 else b""
        if isinstance(node, dict):
            body = bytearray(stamps + (tree_hash(node) if v3 else b""))
            for name, child in sorted(node.items()):
                child_path = path.rstrip("/") + "/" + name
                body += u64(offsets[child_path])
                if v3:
                    body += tree_hash(child)
                body += u64(len(name.encode())) + name.encode()
            header += bytes([30]) + u64(len(body)) + body
        else:
            content = _bytes(node)
            start = len(data)
            data += content
            header += bytes([31]) + u64(start) + u64(len(data)) + hashlib.sha256(content).digest()
            header += stamps
    return bytes(header), bytes(data)


def atoms_payload(atoms: Mapping[str, Leaf], *, v3: bool) -> bytes:
    """The payload of a v2/v3 atoms section: a volume of the atoms, by name."""
    header, data = volume_header(dict(atoms), v3=v3)
    return u64(len(header)) + header + u64(len(data)) + data


def volume_payload(
    name: str, tree: Tree, *, v3: bool, modified: dict[str, int] | None = None
) -> bytes:
    """The payload of a v2/v3 volume section: its name, header and data."""
    header, data = volume_header(tree, v3=v3, modified=modified)
    raw = name.encode()
    return u64(len(raw)) + raw + u64(len(header)) + header + u64(len(data)) + data


def section(tag: int, payload: bytes, *, v3: bool) -> bytes:
    """A tagged section; v3 puts the payload's sha256 before its length."""
    hash_field = hashlib.sha256(payload).digest() if v3 else b""
    return bytes([tag]) + hash_field + u64(len(payload)) + payload


def write_indexed(
    manifest: Mapping[str, Any],
    atoms: Mapping[str, Leaf],
    volumes: Mapping[str, Tree],
    *,
    v3: bool,
    modified: dict[str, dict[str, int]] | None = None,
) -> bytes:
    """A complete v2 (``v3=False``) or v3 file, in memory. `modified`: volume → path → time."""
    modified = modified or {}
    return assemble(
        cbor2.dumps(manifest),
        atoms_payload(atoms, v3=v3),
        {
            name: volume_payload(name, tree, v3=v3, modified=modified.get(name))
            for name, tree in volumes.items()
        },
        v3=v3,
    )


def assemble(manifest: bytes, atoms: bytes, volumes: Mapping[str, bytes], *, v3: bool) -> bytes:
    """A v2/v3 file from ready-made section payloads: index first, then sections in order."""
    payloads = [("manifest", 1, manifest), ("atoms", 3, atoms)]
    payloads += [(name, 4, payload) for name, payload in sorted(volumes.items())]
    sections = [section(tag, payload, v3=v3) for _, tag, payload in payloads]

    def index(base: int) -> bytes:
        entries = {}
        pos = base
        for (name, _, payload), raw in zip(payloads, sections, strict=True):
            entries[name] = {
                "span": {"start": pos, "len": len(raw)},
                "checksum": {"tag": "checksum-sha256", "value": hashlib.sha256(payload).digest()},
            }
            pos += len(raw)
        return cbor2.dumps(
            {
                "manifest": entries["manifest"],
                "atoms": entries["atoms"],
                "volumes": {name: entries[name] for name, _, _ in payloads[2:]},
                "signature": {"tag": "signature-none", "value": b""},
            }
        )

    # The index's size depends on the spans it holds; size it with huge offsets, then pad.
    room = len(index(2**40)) + 8
    encoded = index(17 + room)
    assert len(encoded) <= room
    version = b"003" if v3 else b"002"
    return (
        MAGIC + version + bytes([2]) + u64(room) + encoded.ljust(room, b"\x00") + b"".join(sections)
    )


__all__ = [
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
