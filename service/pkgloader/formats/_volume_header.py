"""webc v2/v3 volume headers (doc §3.2, §3.3): tagged directory and file records.

Directory entries hold header offsets of their children, so a forged offset can point back at
an ancestor or share a subtree; every directory offset is parsed at most once, which bounds the
work by the header size and makes cycles an error instead of a hang.
"""

from __future__ import annotations

from ._binary import Cursor
from ._errors import FormatError
from ._source import Region
from ._volume import MAX_DEPTH, DirNode, FileNode, is_valid_name

TAG_DIRECTORY = 30
TAG_FILE = 31


def parse_volume_header(
    header: bytes | memoryview, data: Region, *, v3: bool, what: str
) -> DirNode:
    """Build the tree of a v2 (``v3=False``) or v3 header; file bytes are ranges of ``data``."""
    label = f"webc {'v3' if v3 else 'v2'} {what} header"
    root = DirNode()
    visited = {0}
    # (node to fill, header offset of its record, depth, path for messages)
    pending: list[tuple[DirNode, int, int, str]] = [(root, 0, 0, "/")]
    while pending:
        node, offset, depth, path = pending.pop()
        cursor = Cursor(header, label, pos=offset)
        tag = cursor.u8(f"tag of {path!r}")
        if tag != TAG_DIRECTORY:
            raise FormatError(f"{label}: {path!r} should be a directory (tag 30), found tag {tag}")
        length = cursor.u64(f"length of {path!r}")
        body = Cursor(header, label, pos=cursor.pos, end=cursor.pos + length)
        cursor.take(length, f"entries of {path!r}")  # only a bounds check
        if v3:
            body.u64("accessed")
            # 0 is what writers put where they record no time (the issue: a time only "where
            # the format stores one"); 1970-01-01 would be a made-up time.
            node.modified = body.u64("modified") or None
            body.u64("created")
            node.hash = bytes(body.take(32, f"hash of {path!r}"))
        while body.remaining:
            child_offset = body.u64("entry offset")
            entry_hash = bytes(body.take(32, "entry hash")) if v3 else None
            name_len = body.u64("entry name length")
            raw_name = bytes(body.take(name_len, "entry name"))
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError(f"{label}: entry name {raw_name!r} is not UTF-8") from None
            if not is_valid_name(name) or name in node.children:
                raise FormatError(f"{label}: invalid or duplicate entry name {name!r} in {path!r}")
            child_path = path.rstrip("/") + "/" + name
            child_cursor = Cursor(header, label, pos=child_offset)
            child_tag = child_cursor.u8(f"tag of {child_path!r}")
            if child_tag == TAG_FILE:
                start = child_cursor.u64("file start")
                end = child_cursor.u64("file end")
                file_hash = bytes(child_cursor.take(32, "file hash"))
                modified = None
                if v3:
                    child_cursor.u64("accessed")
                    modified = child_cursor.u64("modified") or None  # 0: none recorded
                    child_cursor.u64("created")
                node.children[name] = FileNode(
                    data, start, end, hash=file_hash, modified=modified, entry_hash=entry_hash
                )
            elif child_tag == TAG_DIRECTORY:
                if depth + 1 >= MAX_DEPTH:
                    raise FormatError(f"{label}: directories nested deeper than {MAX_DEPTH}")
                if child_offset in visited:
                    raise FormatError(
                        f"{label}: directory {child_path!r} points at offset {child_offset}, "
                        f"which is already in use (a cycle or a shared directory)"
                    )
                visited.add(child_offset)
                child = DirNode(entry_hash=entry_hash)
                node.children[name] = child
                pending.append((child, child_offset, depth + 1, child_path))
            else:
                raise FormatError(f"{label}: {child_path!r} has unknown tag {child_tag}")
    return root
