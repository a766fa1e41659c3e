"""tar.gz packages (doc §5), read with memory bounded independently of the expanded size.

Opening makes one streaming pass over the gzip + tar stream: the gzip data is read from the
package's source in bounded pieces, decompressed a chunk at a time and handed to ``tarfile`` in
streaming mode (``r|``), and each member's data is read once, in order, after its declared size
has passed the limits. During the pass the reader keeps only small members (the manifest, and
files up to ``_KEEP_MEMBER_BYTES`` while their total stays under ``_KEEP_BUDGET``), takes the
sha256 of the larger members that may be module sources (atom signatures need it), and records
where every member's data starts in the decompressed stream. A larger member is a ``Content``
handle: reading it decompresses the stream again from the nearest checkpoint (a copy of the
inflater's state, taken every ``_CHECKPOINT_EVERY`` decompressed bytes) up to the member.

Nothing is ever written to disk. The decompressed byte count is capped, and so are the tar
headers between two members, which stops a gzip bomb hidden in tar metadata (for example a
huge pax header) that no member size would reveal.
"""

from __future__ import annotations

import bisect
import hashlib
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from ._errors import FormatError
from ._parsed import Parsed
from ._source import CHUNK, Content, MemorySource, Region
from ._volume import DirNode, FileNode, Volume, walk
from ._wasmer_toml import convert, module_sources, sanitize_path

_MANIFEST_NAMES = ("/wasmer.toml", "/wapm.toml")  # in this order of preference
# Room for tar headers, pax records and padding on top of the members' own bytes.
_METADATA_ALLOWANCE = 64 * 2**20
# The tar headers (pax records, GNU long names) before one member; tarfile holds them whole.
_MAX_HEADER_BYTES = 2**20
# A manifest is always kept (it is parsed at open); a larger one is refused.
_MAX_MANIFEST_BYTES = 2**20
# Members kept in memory: each at most this big, and all of them together at most the budget.
_KEEP_MEMBER_BYTES = 2**20
_KEEP_BUDGET = 8 * 2**20
# Decompressed bytes between two checkpoints (one costs ~40 KiB: the inflater's state).
_CHECKPOINT_EVERY = 8 * 2**20
# What one checkpoint holds: zlib's inflate state (~7 KiB) and its 32 KiB window, allocated
# by the copy, plus the Python objects around them.
_CHECKPOINT_COST = 48 * 2**10
_IN_CHUNK = 64 * 2**10  # compressed bytes fed to zlib at a time
_OUT_CHUNK = 256 * 2**10  # most decompressed bytes produced at a time
_TAR_BUFSIZE = 64 * 2**10  # tarfile's read size in streaming mode
_READ_CHUNK = 2**20  # member data read at a time while streaming past it


@dataclass(frozen=True)
class TarballLimits:
    """Bounds on what a tar.gz package may expand to.

    They bound the work of opening a package (every byte is decompressed once) and the size
    of what one read may produce; memory at open time stays small whatever the expanded size,
    since only small members are kept.
    """

    max_member_bytes: int = 512 * 2**20
    max_total_bytes: int = 2**30
    max_members: int = 10_000


@dataclass(frozen=True)
class _Checkpoint:
    out_pos: int  # decompressed bytes produced before this point
    in_pos: int  # offset in the package of the first compressed byte not yet consumed
    state: zlib._Decompress  # the inflater's state here (never used itself, only copied)


class _Inflater:
    """A gzip stream (one or more members, zero padding between them) over a region of the
    package, read ``_IN_CHUNK`` at a time and decoded a chunk at a time; zlib checks each
    member's CRC and length."""

    def __init__(
        self,
        data: Region,
        start: _Checkpoint | None = None,
        checkpoints: list[_Checkpoint] | None = None,
    ) -> None:
        self._data = data
        self._d: zlib._Decompress | None
        if start is None:
            self._d, self._in, self.out = zlib.decompressobj(31), 0, 0
        else:
            self._d, self._in, self.out = start.state.copy(), start.in_pos, start.out_pos
        self._tail = b""  # input given to zlib and not consumed yet
        self._checkpoints = checkpoints  # appended to as the stream goes (the open pass only)
        self._next_checkpoint = _CHECKPOINT_EVERY

    def chunk(self) -> bytes:
        """The next decompressed bytes (at most ``_OUT_CHUNK``); ``b""`` at the end."""
        while self._d is not None:
            d = self._d
            if self._checkpoints is not None and self.out >= self._next_checkpoint:
                consumed = self._in - len(self._tail)
                self._checkpoints.append(_Checkpoint(self.out, consumed, d.copy()))
                self._next_checkpoint = self.out + _CHECKPOINT_EVERY
            if not self._tail and self._in < len(self._data):
                self._tail = bytes(
                    self._data.read_range(self._in, min(_IN_CHUNK, len(self._data) - self._in))
                )
                self._in += len(self._tail)
            fed = self._tail
            out = d.decompress(fed, _OUT_CHUNK)
            self._tail = d.unconsumed_tail
            if d.eof:
                self._next_member(self._in - len(d.unused_data))
            elif not out and not self._tail and self._in >= len(self._data) and not fed:
                raise FormatError(
                    "tar.gz: cannot decode the archive: the compressed data ends before the "
                    "end of the gzip stream"
                )
            if out:
                self.out += len(out)
                return out
        return b""

    def _next_member(self, end: int) -> None:
        """After a gzip member: skip zero padding, then start the next member, if any."""
        self._tail = b""
        pos = end
        while pos < len(self._data):
            block = self._data.read_range(pos, min(_IN_CHUNK, len(self._data) - pos))
            nonzero = block.lstrip(b"\0")
            pos += len(block) - len(nonzero)
            if nonzero:
                self._d, self._in = zlib.decompressobj(31), pos
                return
        self._d, self._in = None, pos


class _Feed:
    """The decompressed tar stream as a file for ``tarfile``, with the caps enforced."""

    def __init__(self, inflater: _Inflater, limit: int) -> None:
        self._inflater = inflater
        self._limit = limit
        self._chunk = b""
        self._at = 0
        self.position = 0  # decompressed bytes handed out
        self.header_limit: int | None = None  # while tarfile reads headers, the most it may

    def detach(self) -> None:
        self._inflater = None  # type: ignore[assignment]

    def read(self, n: int = -1) -> bytes:
        """At most ``n`` bytes (at most one decompressed chunk); ``b""`` at the end."""
        if self._at >= len(self._chunk):
            self._chunk, self._at = self._inflater.chunk(), 0
        end = len(self._chunk) if n is None or n < 0 else min(self._at + n, len(self._chunk))
        piece = self._chunk[self._at : end]
        self._at = end
        self.position += len(piece)
        if self.position > self._limit:
            raise FormatError(
                f"tar.gz: decompresses to more than {self._limit} bytes (limit on total size)"
            )
        if self.header_limit is not None and self.position > self.header_limit:
            raise FormatError(
                f"tar.gz: the tar headers before a member take more than {_MAX_HEADER_BYTES} "
                f"bytes (limit on tar metadata)"
            )
        return piece


class _Archive:
    """The package bytes and the checkpoints of their decompressed stream."""

    def __init__(self, data: Region) -> None:
        # Members hold the archive, which holds the source: a Volume the caller kept can still
        # read after the container is closed (as with webc, whose file handles outlive it).
        self.data = data
        self.checkpoints: list[_Checkpoint] = []
        self._positions: list[int] = []

    def seal(self) -> None:
        self._positions = [c.out_pos for c in self.checkpoints]

    def pieces(self, name: str, offset: int, size: int) -> Iterator[memoryview]:
        """The ``size`` decompressed bytes at ``offset``, decompressed from the nearest
        checkpoint before them, in pieces of at most ``_OUT_CHUNK``."""
        i = bisect.bisect_right(self._positions, offset) - 1
        inflater = _Inflater(self.data, self.checkpoints[i] if i >= 0 else None)
        remaining = size
        while remaining > 0:
            start = inflater.out
            try:
                chunk = inflater.chunk()
            except zlib.error as exc:  # only if the bytes changed since the open
                raise FormatError(f"tar.gz: cannot decode member {name!r}: {exc}") from None
            if not chunk:
                raise FormatError(f"tar.gz: the archive ends inside member {name!r}")
            if start + len(chunk) <= offset:
                continue
            lo = max(offset - start, 0)
            piece = memoryview(chunk)[lo : lo + remaining]
            remaining -= len(piece)
            yield piece


class _Member(Content):
    """A member not kept in memory: ``size`` bytes at ``offset`` of the decompressed stream."""

    __slots__ = ("_archive", "_digest", "name", "offset")

    def __init__(
        self, archive: _Archive, name: str, offset: int, size: int, digest: bytes | None
    ) -> None:
        super().__init__(size)
        self._archive = archive
        self.name = name
        self.offset = offset
        self._digest = digest

    def __repr__(self) -> str:
        return f"<tar.gz member {self.name!r} size={self.size} offset={self.offset}>"

    def views(self, max_bytes: int = CHUNK) -> Iterator[bytes | memoryview]:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        for piece in self._archive.pieces(self.name, self.offset, self.size):
            for start in range(0, len(piece), max_bytes):
                yield piece[start : start + max_bytes]

    def read_range(self, offset: int, size: int) -> bytes:
        content = bytearray(size)
        at = 0
        for piece in self._archive.pieces(self.name, self.offset + offset, size):
            content[at : at + len(piece)] = piece
            at += len(piece)
        return bytes(content)

    def sha256(self, *, reread: bool = False) -> bytes:
        if self._digest is None or reread:
            digest = hashlib.sha256()
            for piece in self._archive.pieces(self.name, self.offset, self.size):
                digest.update(piece)
            self._digest = digest.digest()
        return self._digest


def parse_tarball(data: Region, limits: TarballLimits) -> Parsed:
    files, directories, held = _read_members(data, limits)
    manifest_text = next((files[n] for n in _MANIFEST_NAMES if n in files), None)
    if manifest_text is None:
        raise FormatError('tar.gz: Unable to find the "wasmer.toml" (nor "wapm.toml") at the root')
    if not isinstance(manifest_text, Region):
        raise FormatError(
            f"tar.gz: the manifest is {manifest_text.size} bytes, over the "
            f"{_MAX_MANIFEST_BYTES}-byte limit for a manifest"
        )
    manifest, atoms = convert(manifest_text.read(), files)

    volumes = {"metadata": Volume("metadata", _tree(files, directories), expose_hashes=False)}
    package = manifest.get("package")
    mappings = package.get("fs", []) if isinstance(package, dict) else []
    for mapping in mappings:
        name = mapping["volume_name"]
        if name in volumes:
            continue
        # The volume holds what is below the host directory, re-rooted at "/".
        cut = len(name.rstrip("/"))
        inside = {p[cut:]: content for p, content in files.items() if p.startswith(name + "/")}
        subdirs = {p[cut:] for p in directories if p.startswith(name + "/")}
        volumes[name] = Volume(name, _tree(inside, subdirs), expose_hashes=False)

    return Parsed(
        format="tarball",
        version="003",  # what wasmer's Package reports
        manifest=manifest,
        atoms=dict(sorted(atoms.items())),
        volumes=volumes,
        held_bytes=held,
    )


class _Sources:
    """Which members are module sources, as far as the manifests seen so far tell."""

    def __init__(self) -> None:
        self._seen: dict[str, set[str] | None] = {}

    def saw_manifest(self, path: str, text: bytes) -> None:
        self._seen[path] = module_sources(text)

    def may_be_source(self, path: str) -> bool:
        # Before the preferred manifest has been seen (or if it does not parse) every large
        # member might be one; a member hashed needlessly costs CPU only, and a source missed
        # here is hashed on demand after the pass.
        for name in _MANIFEST_NAMES:
            if name in self._seen:
                sources = self._seen[name]
                return sources is None or path in sources
        return True


def _read_members(data: Region, limits: TarballLimits) -> tuple[dict[str, Content], set[str], int]:
    """The members (kept ones in memory), the directories, and the bytes held in memory."""
    files: dict[str, Content] = {}
    directories: set[str] = set()
    total = 0
    kept = 0
    count = 0
    sources = _Sources()
    archive = _Archive(data)
    feed = _Feed(
        _Inflater(archive.data, checkpoints=archive.checkpoints),
        limits.max_total_bytes + _METADATA_ALLOWANCE,
    )
    header_slack = 2 * _TAR_BUFSIZE + 512  # tarfile's read-ahead and the previous padding
    try:
        feed.header_limit = header_slack + _MAX_HEADER_BYTES
        with tarfile.open(  # type: ignore[call-overload]
            fileobj=feed, mode="r|", bufsize=_TAR_BUFSIZE
        ) as stream:
            while True:
                member = stream.next()
                feed.header_limit = None
                if member is None:
                    break
                count += 1
                if count > limits.max_members:
                    raise FormatError(f"tar.gz: more than {limits.max_members} members")
                path = _member_path(member.name)
                if member.isdir():
                    if path in files:
                        raise FormatError(f"tar.gz: {member.name!r} is both a file and a directory")
                    if path != "/":
                        directories.add(path)
                    feed.header_limit = member.offset_data + header_slack + _MAX_HEADER_BYTES
                    continue
                if not member.isreg() or member.issparse():
                    raise FormatError(
                        f"tar.gz: member {member.name!r} is a {_kind(member)}; only regular "
                        f"files and directories are allowed"
                    )
                if member.size > limits.max_member_bytes:
                    raise FormatError(
                        f"tar.gz: member {member.name!r} is {member.size} bytes, over the "
                        f"{limits.max_member_bytes}-byte limit per member"
                    )
                total += member.size
                if total > limits.max_total_bytes:
                    raise FormatError(
                        f"tar.gz: members add up to more than the {limits.max_total_bytes}-byte "
                        f"limit"
                    )
                if path == "/":
                    raise FormatError(f"tar.gz: member {member.name!r} has an empty path")
                if path in files or path in directories:
                    raise FormatError(f"tar.gz: member {member.name!r} appears twice")
                extracted = stream.extractfile(member)
                assert extracted is not None  # a regular file always has a reader
                if path in _MANIFEST_NAMES and member.size <= _MAX_MANIFEST_BYTES:
                    keep = True
                else:
                    keep = member.size <= _KEEP_MEMBER_BYTES and kept + member.size <= _KEEP_BUDGET
                    kept += member.size if keep else 0
                if keep:
                    content = extracted.read()
                    if len(content) != member.size:
                        raise FormatError(f"tar.gz: member {member.name!r} is truncated")
                    if path in _MANIFEST_NAMES:
                        sources.saw_manifest(path, content)
                    files[path] = Region(MemorySource(content))
                else:
                    digest = _stream_past(extracted, member, sources.may_be_source(path))
                    files[path] = _Member(archive, path, member.offset_data, member.size, digest)
                feed.header_limit = feed.position + header_slack + _MAX_HEADER_BYTES
        # Decode the rest of the gzip stream (tar padding, usually a few KiB; still under the
        # cap) so every member's CRC is checked now: an on-demand read stops at its member and
        # never reaches a gzip trailer.
        while feed.read(_OUT_CHUNK):
            pass
    except FormatError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise FormatError(f"tar.gz: cannot decode the archive: {exc}") from None
    finally:
        # tarfile's objects form reference cycles that hold the feed; without its inflater
        # they no longer hold the package's source (an open file) until a gc pass.
        feed.detach()
    archive.seal()
    kept_bytes = sum(len(c) for c in files.values() if isinstance(c, Region))
    return files, directories, kept_bytes + len(archive.checkpoints) * _CHECKPOINT_COST


def _stream_past(extracted: IO[bytes], member: tarfile.TarInfo, hashed: bool) -> bytes | None:
    """Read a member's data without keeping it; its sha256 when ``hashed``."""
    digest = hashlib.sha256() if hashed else None
    remaining = member.size
    while remaining > 0:
        chunk = extracted.read(min(_READ_CHUNK, remaining))
        if not chunk:
            raise FormatError(f"tar.gz: member {member.name!r} is truncated")
        if digest is not None:
            digest.update(chunk)
        remaining -= len(chunk)
    return None if digest is None else digest.digest()


def _member_path(name: str) -> str:
    """The sanitized absolute path of a member; rejects anything that could escape the root."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"tar.gz: member name {name!r} is not UTF-8") from None
    if name.startswith("/"):
        raise FormatError(f"tar.gz: member {name!r} has an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise FormatError(f"tar.gz: member {name!r} has a '..' path segment")
    if "\x00" in name:
        raise FormatError(f"tar.gz: member name {name!r} contains NUL")
    return sanitize_path(name)


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    if member.issparse():
        return "sparse file"
    return f"member of type {member.type!r}"


def _tree(files: dict[str, Content], directories: set[str]) -> DirNode:
    """A directory tree over the members, children in name order like a webc writer's."""
    root = DirNode()

    def parent_of(path: str) -> tuple[DirNode, str]:
        node = root
        *parents, leaf = path.strip("/").split("/")
        for part in parents:
            child = node.children.setdefault(part, DirNode())
            if not isinstance(child, DirNode):
                raise FormatError(f"tar.gz: {path!r} is below a file")
            node = child
        return node, leaf

    for path in directories:
        node, leaf = parent_of(path)
        if isinstance(node.children.setdefault(leaf, DirNode()), FileNode):
            raise FormatError(f"tar.gz: {path!r} is both a file and a directory")
    for path, content in files.items():
        node, leaf = parent_of(path)
        if leaf in node.children:
            raise FormatError(f"tar.gz: {path!r} is both a file and a directory")
        node.children[leaf] = FileNode(content, 0, len(content))
    for _, entry in walk(root):
        if isinstance(entry, DirNode):
            entry.children = dict(sorted(entry.children.items()))
    return root
