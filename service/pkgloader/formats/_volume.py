"""The in-memory directory tree every format is parsed into, and ``Volume`` over it.

Parsers build the tree once, at open time, so a structural error surfaces there; file bytes
are ``Content`` handles: a ``Region`` of the package's source (read when asked for), or, for a
tar.gz member that is not kept in memory, a member that decompresses them each time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from ._errors import FormatError
from ._source import Content, Region

# Deeper trees exist in no real package; the limit stops a forged header from driving the
# parser (or a caller's recursive walk) into pathological depth.
MAX_DEPTH = 256

EMPTY_SHA256 = hashlib.sha256(b"").digest()


def content_sha256(content: Content, *, reread: bool = False) -> bytes:
    return content.sha256(reread=reread)


@dataclass(frozen=True)
class DirEntry:
    """One child of a directory: ``hash`` exists only in webc v3, ``modified`` too."""

    name: str
    is_dir: bool
    size: int
    hash: bytes | None
    modified: int | None


@dataclass(frozen=True)
class Metadata:
    """What ``stat`` would say: ``length`` is 0 for directories."""

    is_dir: bool
    length: int
    modified: int | None


class FileNode:
    """A file: ``data[start:end]``; the range is checked by ``validate`` and ``read_file``.

    ``data`` is the ``Region`` of the volume's data, or the ``Content`` of a tar.gz member
    (whose range is then always the whole of it).
    """

    __slots__ = ("data", "end", "entry_hash", "hash", "modified", "start")

    def __init__(
        self,
        data: Content,
        start: int,
        end: int,
        *,
        hash: bytes | None = None,
        modified: int | None = None,
        entry_hash: bytes | None = None,
    ) -> None:
        self.data = data
        self.start = start
        self.end = end
        self.hash = hash
        self.modified = modified
        # The hash the parent's entry records for this child (v3 only).
        self.entry_hash = entry_hash

    @property
    def size(self) -> int:
        return max(self.end - self.start, 0)

    @property
    def in_bounds(self) -> bool:
        return 0 <= self.start <= self.end <= len(self.data)

    def content(self) -> Content:
        """The file's bytes (in bounds only), as a handle."""
        if isinstance(self.data, Region):
            if self.start == 0 and self.end == len(self.data):
                return self.data
            return self.data.sub(self.start, self.end - self.start)
        return self.data


class DirNode:
    """A directory; ``children`` keeps the header's entry order (which Merkle hashes follow)."""

    __slots__ = ("children", "entry_hash", "hash", "modified")

    def __init__(
        self,
        *,
        hash: bytes | None = None,
        modified: int | None = None,
        entry_hash: bytes | None = None,
    ) -> None:
        self.children: dict[str, FileNode | DirNode] = {}
        self.hash = hash
        self.modified = modified
        self.entry_hash = entry_hash


def is_valid_name(name: str) -> bool:
    """A single path segment: what every format's entries must be to be addressable."""
    return name not in ("", ".", "..") and "/" not in name and "\x00" not in name


class Volume:
    """A read-only directory tree of a package. Paths are ``/``-separated; ``/`` is the root."""

    def __init__(self, name: str, root: DirNode, *, expose_hashes: bool) -> None:
        self.name = name
        self._root = root
        self._expose_hashes = expose_hashes

    def __repr__(self) -> str:
        return f"Volume(name={self.name!r}, file_count={self.file_count})"

    def _lookup(self, path: str) -> FileNode | DirNode | None:
        node: FileNode | DirNode = self._root
        for segment in path.split("/"):
            if segment in ("", "."):
                continue
            if not isinstance(node, DirNode):
                return None
            child = node.children.get(segment)
            if child is None:
                return None
            node = child
        return node

    def read_dir(self, path: str) -> list[DirEntry] | None:
        """The entries of the directory at ``path``, or ``None`` if it is not a directory."""
        node = self._lookup(path)
        if not isinstance(node, DirNode):
            return None
        return [
            DirEntry(
                name=name,
                is_dir=isinstance(child, DirNode),
                size=child.size if isinstance(child, FileNode) else 0,
                hash=child.hash if self._expose_hashes else None,
                modified=child.modified,
            )
            for name, child in node.children.items()
        ]

    def read_file(self, path: str) -> Content | None:
        """The file at ``path`` as a ``Content`` handle, or ``None`` if it is not a file.

        Nothing is read until the handle is: ``chunks``/``sha256`` stream it in bounded
        pieces (for a large tar.gz member, decompressing it again on each pass).
        Raises ``FormatError`` if the header places the file outside the volume's data.
        """
        node = self._lookup(path)
        if not isinstance(node, FileNode):
            return None
        if not node.in_bounds:
            raise FormatError(_out_of_bounds(self.name, path, node))
        return node.content()

    def metadata(self, path: str) -> Metadata | None:
        """Type, length and modification time of ``path``, or ``None`` if it does not exist."""
        node = self._lookup(path)
        if node is None:
            return None
        if isinstance(node, DirNode):
            return Metadata(is_dir=True, length=0, modified=node.modified)
        return Metadata(is_dir=False, length=node.size, modified=node.modified)

    def files(self) -> Iterator[tuple[str, int]]:
        """Every file as (absolute path, size), depth first in entry order."""
        for path, node in walk(self._root):
            if isinstance(node, FileNode):
                yield path, node.size

    @cached_property
    def file_count(self) -> int:
        return sum(1 for _ in self.files())

    @cached_property
    def node_count(self) -> int:
        return sum(1 for _ in walk(self._root))

    @cached_property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files())

    def problems(self, *, file_hashes: bool, merkle: bool) -> list[str]:
        """Integrity failures: ranges out of bounds, per-file sha256, Merkle directory hashes."""
        problems: list[str] = []
        actual: dict[int, bytes] = {}  # id(node) -> sha256 of what is really there
        # Post-order (children before parents) so directory hashes can use the children's.
        for path, node in reversed(list(walk(self._root))):
            if isinstance(node, FileNode):
                if not node.in_bounds:
                    problems.append(_out_of_bounds(self.name, path, node))
                    actual[id(node)] = EMPTY_SHA256
                    continue
                digest = content_sha256(node.content(), reread=True)
                actual[id(node)] = digest
                if file_hashes and node.hash is not None and node.hash != digest:
                    problems.append(
                        f"volume {self.name!r}: file {path!r} has sha256 {digest.hex()}, "
                        f"but its header entry says {node.hash.hex()}"
                    )
            else:
                digest = hashlib.sha256(
                    b"".join(actual[id(child)] for child in node.children.values())
                ).digest()
                actual[id(node)] = digest
                if merkle and node.hash is not None and node.hash != digest:
                    problems.append(
                        f"volume {self.name!r}: directory {path!r} has Merkle hash "
                        f"{digest.hex()}, but its header says {node.hash.hex()}"
                    )
            if merkle and node.entry_hash is not None and node.entry_hash != node.hash:
                kind = "file" if isinstance(node, FileNode) else "directory"
                declared = node.hash.hex() if node.hash is not None else "nothing"
                problems.append(
                    f"volume {self.name!r}: the parent entry of {kind} {path!r} records hash "
                    f"{node.entry_hash.hex()}, but the {kind} declares {declared}"
                )
        problems.reverse()  # report top-down, as a reader would look
        return problems


def walk(root: DirNode) -> Iterator[tuple[str, FileNode | DirNode]]:
    """Pre-order (path, node) pairs, root first as ``/``; iterative, so depth costs no stack."""
    stack: list[tuple[str, FileNode | DirNode]] = [("/", root)]
    while stack:
        path, node = stack.pop()
        yield path, node
        if isinstance(node, DirNode):
            prefix = path if path.endswith("/") else path + "/"
            for name, child in reversed(node.children.items()):
                stack.append((prefix + name, child))


def _out_of_bounds(volume: str, path: str, node: FileNode) -> str:
    return (
        f"volume {volume!r}: file {path!r} spans bytes [{node.start}, {node.end}), "
        f"outside the volume's {len(node.data)} data bytes"
    )
