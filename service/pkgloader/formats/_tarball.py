"""tar.gz packages (doc §5), read entirely in memory: nothing is ever written to disk.

The gzip stream is decompressed chunk by chunk and handed to ``tarfile`` in streaming mode
(``r|``), so a member is read once, in order, and only after its declared size has passed the
limits. The decompressed byte count is capped too, which stops a gzip bomb hidden in tar
metadata (for example a huge pax header) that no member size would reveal.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from dataclasses import dataclass

from ._errors import FormatError
from ._parsed import Parsed
from ._volume import DirNode, FileNode, Volume, walk
from ._wasmer_toml import convert, sanitize_path

_MANIFEST_NAMES = ("/wasmer.toml", "/wapm.toml")  # in this order of preference
# Room for tar headers, pax records and padding on top of the members' own bytes.
_METADATA_ALLOWANCE = 64 * 2**20


@dataclass(frozen=True)
class TarballLimits:
    """Bounds on what a tar.gz package may make the reader hold in memory.

    The defaults fit every real Wasmer package with a wide margin: the largest published
    packages are a few hundred MiB, and the reader keeps all member bytes in memory.
    """

    max_member_bytes: int = 512 * 2**20
    max_total_bytes: int = 2**30
    max_members: int = 10_000


class _ViewReader:
    """A read-only file over a memoryview, so gzip can stream it without a full copy."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n is None or n < 0 else min(self._pos + n, len(self._view))
        chunk = bytes(self._view[self._pos : end])
        self._pos = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = min(max(base + offset, 0), len(self._view))
        return self._pos


class _BoundedReader:
    """Decompressed bytes, failing once more than ``limit`` of them have been produced."""

    def __init__(self, source: gzip.GzipFile, limit: int) -> None:
        self._source = source
        self._limit = limit
        self._count = 0

    def read(self, n: int = -1) -> bytes:
        # Never ask for more than one byte past the limit, so the check below costs nothing.
        budget = self._limit - self._count + 1
        chunk = self._source.read(budget if n is None or n < 0 else min(n, budget))
        self._count += len(chunk)
        if self._count > self._limit:
            raise FormatError(
                f"tar.gz: decompresses to more than {self._limit} bytes (limit on total size)"
            )
        return chunk


def parse_tarball(data: memoryview, limits: TarballLimits) -> Parsed:
    files, directories = _read_members(data, limits)
    manifest_text = next((files[n] for n in _MANIFEST_NAMES if n in files), None)
    if manifest_text is None:
        raise FormatError('tar.gz: Unable to find the "wasmer.toml" (nor "wapm.toml") at the root')
    manifest, atoms = convert(bytes(manifest_text), files)

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
    )


def _read_members(
    data: memoryview, limits: TarballLimits
) -> tuple[dict[str, memoryview], set[str]]:
    files: dict[str, memoryview] = {}
    directories: set[str] = set()
    total = 0
    count = 0
    stream = _BoundedReader(
        gzip.GzipFile(fileobj=_ViewReader(data), mode="rb"),
        limits.max_total_bytes + _METADATA_ALLOWANCE,
    )
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:  # type: ignore[call-overload]
            for member in archive:
                count += 1
                if count > limits.max_members:
                    raise FormatError(f"tar.gz: more than {limits.max_members} members")
                path = _member_path(member.name)
                if member.isdir():
                    if path == "/":
                        continue
                    if path in files:
                        raise FormatError(f"tar.gz: {member.name!r} is both a file and a directory")
                    directories.add(path)
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
                extracted = archive.extractfile(member)
                content = extracted.read() if extracted is not None else b""
                if len(content) != member.size:
                    raise FormatError(f"tar.gz: member {member.name!r} is truncated")
                files[path] = memoryview(content)
    except FormatError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
        # gzip.BadGzipFile is an OSError; a truncated stream is an EOFError.
        raise FormatError(f"tar.gz: cannot decode the archive: {exc}") from None
    return files, directories


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


def _tree(files: dict[str, memoryview], directories: set[str]) -> DirNode:
    """A directory tree over in-memory files, children in name order like a webc writer's."""
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
