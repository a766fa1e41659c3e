"""Minimal webc writers, built from the layouts in docs/webc-format.md §3, for round trips.

A tree is a dict: ``name -> bytes`` for a file, ``name -> dict`` for a directory. These write
what the reference writer would (entries sorted by name, records in depth-first order), so
the real fixtures can be reproduced byte for byte where the doc gives their layout.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2

MAGIC = b"\x00webc"
EMPTY_SHA256 = hashlib.sha256(b"").digest()
Tree = dict[str, Any]


def uleb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


# ---------------------------------------------------------------------------- v1


def v1_volume_parts(tree: Tree) -> tuple[bytes, bytes]:
    """(header, data) of a v1 volume: levels in breadth-first order after the root."""
    if not tree:
        return b"", b""
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
    data = bytearray()
    for level, size in zip(order, sizes, strict=True):
        header += u64(size - 8)
        for name, value in sorted(level.items()):
            raw = name.encode()
            if isinstance(value, dict):
                start, end = where[id(value)] if value else (0, 0)
                kind = 0
            else:
                start, end = len(data), len(data) + len(value)
                data += value
                kind = 1
            header += len(raw).to_bytes(7, "little") + bytes([kind]) + u64(start) + u64(end) + raw
    return bytes(header), bytes(data)


def v1_blob(tree: Tree) -> bytes:
    header, data = v1_volume_parts(tree)
    return uleb128(len(header)) + header + data


def write_v1(
    manifest: dict[str, Any],
    atoms: dict[str, bytes],
    volumes: dict[str, Tree],
    *,
    checksum: bool = False,
) -> bytes:
    manifest_bytes = cbor2.dumps(manifest)
    body = uleb128(len(manifest_bytes)) + manifest_bytes
    atoms_blob = v1_blob(dict(atoms))
    body += uleb128(len(atoms_blob)) + atoms_blob
    for name, tree in volumes.items():
        blob = v1_blob(tree)
        body += uleb128(len(name.encode())) + name.encode() + uleb128(len(blob)) + blob
    checksum_type = b"sha256----------" if checksum else b"-" * 16
    digest = b""
    if checksum:
        digest = hashlib.sha256(
            MAGIC + b"001" + checksum_type + bytes(256 + 4 + 1024) + body
        ).digest()
    head = MAGIC + b"001" + checksum_type + digest.ljust(256, b"\x00") + u64(0)[:4] + bytes(1024)
    assert len(head) == 1308
    return head + body


# ---------------------------------------------------------------------------- v2 / v3


def tree_hash(node: Any) -> bytes:
    if isinstance(node, dict):
        return hashlib.sha256(b"".join(tree_hash(v) for _, v in sorted(node.items()))).digest()
    return hashlib.sha256(node).digest()


def volume_header(
    tree: Tree, *, v3: bool, modified: dict[str, int] | None = None
) -> tuple[bytes, bytes]:
    """(header, data) of a v2/v3 volume; records in depth-first pre-order, like the crate's."""
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
            start = len(data)
            data += node
            header += bytes([31]) + u64(start) + u64(len(data)) + hashlib.sha256(node).digest()
            header += stamps
    return bytes(header), bytes(data)


def atoms_payload(atoms: dict[str, bytes], *, v3: bool) -> bytes:
    header, data = volume_header(dict(atoms), v3=v3)
    return u64(len(header)) + header + u64(len(data)) + data


def volume_payload(
    name: str, tree: Tree, *, v3: bool, modified: dict[str, int] | None = None
) -> bytes:
    header, data = volume_header(tree, v3=v3, modified=modified)
    raw = name.encode()
    return u64(len(raw)) + raw + u64(len(header)) + header + u64(len(data)) + data


def section(tag: int, payload: bytes, *, v3: bool) -> bytes:
    hash_field = hashlib.sha256(payload).digest() if v3 else b""
    return bytes([tag]) + hash_field + u64(len(payload)) + payload


def write_indexed(
    manifest: dict[str, Any],
    atoms: dict[str, bytes],
    volumes: dict[str, Tree],
    *,
    v3: bool,
    modified: dict[str, dict[str, int]] | None = None,
) -> bytes:
    """A complete v2 (``v3=False``) or v3 file."""
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


def assemble(manifest: bytes, atoms: bytes, volumes: dict[str, bytes], *, v3: bool) -> bytes:
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
