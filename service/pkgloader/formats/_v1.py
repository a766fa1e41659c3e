"""webc v1 (doc §3.1): fixed 1308-byte header, ULEB128-framed manifest and volumes.

Volume headers are "levels" (``u64 N`` + N bytes of entries); a directory entry's range points
at its child level inside the header, so a forged range can point backwards (a cycle) or share a
level; every level offset is therefore visited at most once.
"""

from __future__ import annotations

import hashlib

from ._binary import Cursor
from ._cbor import decode_cbor
from ._errors import FormatError
from ._parsed import Parsed
from ._source import Content, Region
from ._volume import MAX_DEPTH, DirNode, FileNode, Volume, is_valid_name

_CHECKSUM_TYPES = {
    b"----------------": None,
    b"sha256----------": "sha256",
    b"sha256-signed---": "sha256-signed",
}
_MANIFEST_OFFSET = 1308
_SIGNATURE_MAX = 1024
_ENTRY_FIXED = 24  # 7-byte name length, 1-byte type, u64 start, u64 end


def parse_v1(data: Region) -> Parsed:
    head = Cursor(data, "webc v1 header")
    head.take(8, "magic and version")
    checksum_type = bytes(head.take(16, "checksum type"))
    if checksum_type not in _CHECKSUM_TYPES:
        raise FormatError(f"webc v1: unknown checksum type {checksum_type!r}")
    checksum = bytes(head.take(256, "checksum"))
    # The reference clamps rather than rejects; the signature is not verified here anyway.
    min(int.from_bytes(head.take(4, "signature length"), "little"), _SIGNATURE_MAX)
    head.take(_SIGNATURE_MAX, "signature")

    body = Cursor(data, "webc v1", pos=_MANIFEST_OFFSET)
    manifest_len = body.uleb128("manifest length")
    manifest = decode_cbor(body.take(manifest_len, "manifest"), "webc v1 manifest")

    atoms_len = body.uleb128("atoms volume length")
    atoms_root = _parse_blob(body.skip(atoms_len, "atoms volume"), "atoms volume")
    atoms: dict[str, Content] = {}
    for name, node in atoms_root.children.items():
        if isinstance(node, FileNode):
            if not node.in_bounds:
                raise FormatError(
                    f"webc v1: atom {name!r} spans bytes [{node.start}, {node.end}), outside "
                    f"the atoms volume's {len(node.data)} data bytes"
                )
            atoms[name] = node.content()

    volumes: dict[str, Volume] = {}
    while body.remaining:
        name_len = body.uleb128("volume name length")
        raw_name = bytes(body.take(name_len, "volume name"))
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"webc v1: volume name {raw_name!r} is not UTF-8") from None
        if name in volumes:
            raise FormatError(f"webc v1: volume {name!r} appears twice")
        volume_len = body.uleb128(f"volume {name!r} length")
        root = _parse_blob(body.skip(volume_len, f"volume {name!r}"), f"volume {name!r}")
        volumes[name] = Volume(name, root, expose_hashes=False)

    def checksum_valid() -> bool | None:
        if _CHECKSUM_TYPES[checksum_type] is None:
            return None
        digest = hashlib.sha256()
        digest.update(data.read_range(0, 8))
        digest.update(checksum_type)
        digest.update(bytes(256 + 4 + _SIGNATURE_MAX))
        for piece in data.sub(_MANIFEST_OFFSET, len(data) - _MANIFEST_OFFSET).views():
            digest.update(piece)
        return digest.digest().ljust(256, b"\x00") == checksum

    def problems() -> list[str]:
        found = [
            problem
            for volume in volumes.values()
            for problem in volume.problems(file_hashes=False, merkle=False)
        ]
        if checksum_valid() is False:
            found.insert(0, "webc v1: the sha256 checksum in the header does not match the file")
        return found

    return Parsed(
        format="webc-v1",
        version="001",
        manifest=manifest,
        atoms=dict(sorted(atoms.items())),
        volumes=volumes,
        problems=problems,
        checksum_valid=checksum_valid,
    )


def _parse_blob(blob: Region, what: str) -> DirNode:
    """A volume blob: ULEB128 header length, header, and the rest is file data."""
    cursor = Cursor(blob, f"webc v1 {what}")
    header = cursor.take(cursor.uleb128("header length"), "header")
    data = cursor.rest()
    return _parse_header(header, data, what)


def _parse_header(header: bytes | memoryview, data: Region, what: str) -> DirNode:
    root = DirNode()
    if len(header) < 8:  # the reference treats a header this short as an empty root
        return root
    visited = {0}
    # (directory node, level offset, limit of the level's range, depth)
    pending: list[tuple[DirNode, int, int, int]] = [(root, 0, len(header), 0)]
    while pending:
        node, offset, limit, depth = pending.pop()
        level = Cursor(header, f"webc v1 {what} header", pos=offset, end=limit)
        size = level.u64("level length")
        level.take(size, "level entries")  # only a bounds check: the level must fit its range
        entries = Cursor(header, f"webc v1 {what} header", pos=offset + 8, end=offset + 8 + size)
        while entries.remaining:
            name_len = int.from_bytes(entries.take(7, "entry name length"), "little")
            kind = entries.u8("entry type")
            start = entries.u64("entry start")
            end = entries.u64("entry end")
            raw_name = bytes(entries.take(name_len, "entry name"))
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                continue  # the reference skips entries whose name is not UTF-8
            if kind not in (0, 1):
                continue  # … and entries of an unknown type
            if not is_valid_name(name) or name in node.children:
                raise FormatError(f"webc v1 {what}: invalid or duplicate entry name {name!r}")
            if kind == 1:
                node.children[name] = FileNode(data, start, end)
                continue
            child = DirNode()
            node.children[name] = child
            if start == end:
                continue  # an empty directory
            if depth + 1 >= MAX_DEPTH:
                raise FormatError(f"webc v1 {what}: directories nested deeper than {MAX_DEPTH}")
            if start in visited:
                raise FormatError(
                    f"webc v1 {what}: directory {name!r} points at level {start}, which is "
                    f"already in use (a cycle or a shared directory)"
                )
            if not 0 <= start < end <= len(header) or end - start < 8:
                raise FormatError(
                    f"webc v1 {what}: directory {name!r} spans header bytes [{start}, {end}), "
                    f"not a level inside the {len(header)}-byte header"
                )
            visited.add(start)
            pending.append((child, start, end, depth + 1))
    return root
