"""What is inside a loaded package: atoms, volume files and directory listings, streamed checked.

The core of GetAtom, ReadFile and ListDirectory (and of LoadTree's atom stream); it knows nothing
of gRPC. Two promises:

- **Checked before sent.** `check` hashes a content in a first pass, so a caller learns the
  sha256 (and a mismatch with the hash the package records is refused, `ContentHashMismatch`)
  before a single byte goes out. `Checked.chunks` then reads the content again and hashes it as
  it goes, holding back the last chunk until the second pass matches too: a content that changes
  between the passes (a damaged disk) is never delivered whole. Reading twice costs a second
  sha256 pass (skipped when the bytes are the memory tier's immutable copy); buffering an atom
  of hundreds of MiB to read it once would make memory grow with the package, which the
  service never does. An atom's verified digest is remembered with its package (the memory
  tier's, or for a disk-only package the loader's memo tier), so only the first call of a
  package checks before sending; later ones hash once, while sending, holding back the last
  chunk as before.
- **Bounded.** Contents are read through their `size` and `views(max)` (or `chunks(max)` where
  a piece is held back while the next is read), at most `CHUNK` at a time; a listing stops at
  `MAX_ENTRIES` entries or `MAX_LISTING_BYTES` of paths and says so.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pkgloader import formats
from pkgloader.errors import (
    AtomNotFound,
    CacheFileChanged,
    ContentHashMismatch,
    InvalidPackage,
    InvalidPath,
    InvalidRequest,
    PackageNotCached,
    PathNotFound,
    VolumeNotFound,
)
from pkgloader.hashes import WebcHash
from pkgloader.policy import Source

if TYPE_CHECKING:
    from pkgloader.loader import LoadRequest, PackageLoader, StoredPackage

CHUNK = 1024 * 1024  # the contract: content chunks of at most 1 MiB

# -- checked streams (shared with LoadTree's atoms) ---------------------------------------------


class Readable(Protocol):
    """A content that can be read in bounded pieces, as often as needed: `views` (each valid
    until the next is asked for) or `chunks` (each valid for as long as it is held)."""

    @property
    def size(self) -> int: ...

    def chunks(self, max: int, /) -> Iterable[bytes | memoryview]: ...

    def views(self, max: int, /) -> Iterable[bytes | memoryview]: ...


@dataclass(frozen=True)
class Checked:
    """A content whose sha256 is known (computed from its bytes) and, if expected, verified."""

    content: Readable
    size: int
    sha256: str  # lowercase hex
    what: str  # for messages: "atom 'python' of <sha>"
    #: The bytes are immutable process memory (the memory tier), so they cannot differ on the
    #: second pass and are not hashed again.
    stable: bool = False
    #: The cache file the bytes are read from (`sha256`, `file`), for a `CacheFileChanged`.
    where: Mapping[str, str] = field(default_factory=dict, compare=False)

    def chunks(self, max: int = CHUNK) -> Iterator[bytes | memoryview]:
        """The bytes again, at most `max` at a time, re-hashed as they go; the last piece is held
        back until the whole matches `sha256`, else `ContentHashMismatch` is raised instead.
        Each piece is valid until the next is asked for (the callers frame or copy it at once)."""
        if self.stable:
            yield from _pieces(self.content, max, self.what, self.where)
            return
        digest = hashlib.sha256()
        held: bytes | memoryview | None = None
        sent = 0
        for piece in _pieces(self.content, max, self.what, self.where, holds=True):
            if held is not None:
                yield held
            digest.update(piece)
            sent += len(piece)
            held = piece
        actual = digest.hexdigest()
        if actual != self.sha256 or sent != self.size:
            raise ContentHashMismatch(what=self.what, expected=self.sha256, actual=actual)
        if held is not None:
            yield held


def check(
    content: Readable,
    expected_sha256: str | None,
    *,
    what: str,
    stable: bool = False,
    where: Mapping[str, str] | None = None,
) -> Checked:
    """Hash `content` once, in bounded pieces; refuse it (`ContentHashMismatch`, DATA_LOSS) when
    `expected_sha256` (lowercase hex) is given and differs. `stable`: the bytes live in
    immutable process memory, so `Checked.chunks` need not hash them again. `where`: the
    cache file's `sha256` and `file`, told with a `CacheFileChanged`."""
    where = where or {}
    digest = hashlib.sha256()
    for piece in _pieces(content, CHUNK, what, where):
        digest.update(piece)
    actual = digest.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise ContentHashMismatch(what=what, expected=expected_sha256, actual=actual)
    return Checked(content, content.size, actual, what, stable, where)


def checked_atom(stored: StoredPackage, name: str, *, what: str) -> Checked:
    """The atom `name` of `stored` (which has it), hashed and checked against its manifest
    signature: GetAtom's and LoadTree's atoms, one mechanism.

    The verified sha256 is remembered with the package (and charged to the memory tier when it
    holds the package): an atom is hashed once per package, however many commands or calls use
    it. Only a memory-tier package skips the second, streaming hash (`Checked.stable`)."""
    data = stored.container.get_atom(name)
    if data is None:
        raise AtomNotFound(f"{what}: no such atom", atom=name)
    where = {"sha256": stored.hash.hex, "file": stored.cache_name or ""}
    key = f"contents.atom:{name}"
    known: tuple[str, int] | None = stored.memo.get(key)
    if known is None:
        signed = next((a.signature for a in stored.container.manifest.atoms if a.name == name), "")
        checked = check(_readable(data), signature_sha256(signed), what=what, where=where)
        # A hex digest, a size and the key: what the memo slot holds beyond its overhead.
        stored.remember(key, (checked.sha256, checked.size), cost=len(key) + 64 + 32)
        return dataclasses.replace(checked, stable=stored.in_memory)
    return Checked(_readable(data), known[1], known[0], what, stored.in_memory, where)


def _pieces(
    content: Readable, max: int, what: str, where: Mapping[str, str], *, holds: bool = False
) -> Iterator[bytes | memoryview]:
    """`content` in pieces of at most `max`: views (no copy of bytes in memory), each used before
    the next is asked for, or with `holds` (the caller keeps one while it reads the next) pieces
    that stay valid, its `chunks`."""
    try:
        for piece in content.chunks(max) if holds else content.views(max):
            # A content handle promises at most `max` per piece; keep the contract even if one
            # hands out more (a view is sliced, not copied).
            if len(piece) <= max:
                yield piece
            else:
                with memoryview(piece) as view:
                    for start in range(0, len(view), max):
                        yield view[start : start + max]
    except formats.ContentChanged as exc:
        # The cache file shrank under the read (another replica, an operator): as for Load's
        # stream, the call ends and a new one reads (or fetches) the package again.
        raise CacheFileChanged(
            f"{what}: the cached file changed while it was being read; try again", **where
        ) from exc
    except formats.FormatError as exc:
        # The reader found the bytes damaged: the package, not the call, is at fault.
        raise InvalidPackage(f"{what}: cannot be read: {exc}") from exc


def signature_sha256(signature: str) -> str | None:
    """The lowercase hex sha256 of a manifest signature `sha256:<base64>`, or None if it is none
    (no signature, or another algorithm: then there is nothing to check against)."""
    algorithm, _, encoded = signature.partition(":")
    if algorithm != "sha256":
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


# -- reading a package's contents -------------------------------------------------------------

MAX_PATH = 4096  # bytes; PATH_MAX on Linux, and far beyond any real package path
MAX_NAME = 1024  # atom and volume names
MAX_ENTRIES = 10_000
# Listing entries are mostly their paths: 3 MiB of paths plus ~40 bytes per entry for the rest
# keeps a ListDirectoryResponse under grpc's default 4 MiB message limit.
MAX_LISTING_BYTES = 3 << 20


@dataclass(frozen=True)
class AtomContent:
    name: str
    kind: str
    signature: str  # as the manifest has it ("" when it has none)
    checked: Checked


@dataclass(frozen=True)
class FileContent:
    volume: str
    path: str
    modified: int | None  # seconds since the Unix epoch, where the format stores it (webc v3)
    checked: Checked


@dataclass(frozen=True)
class Entry:
    path: str  # the full path from the volume's root, as `read_file` accepts it
    is_dir: bool
    size: int
    sha256: str  # lowercase hex, for files where the format records it (webc v3); else ""
    modified: int | None


@dataclass(frozen=True)
class Listing:
    entries: list[Entry]
    total: int  # how many entries there are, listed or not
    truncated: bool


def _readable(content: formats.Content) -> Readable:
    """The one seam between this module and the format reader's content objects: its handles
    read in bounded pieces (through the memory buffer, or pread on the cache file)."""
    return content


def normalize_path(path: str) -> str:
    """`path` as an absolute volume path (`/` the root), or `InvalidPath`."""
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise InvalidPath(f"path is longer than {MAX_PATH} bytes")
    if "\x00" in path:
        raise InvalidPath("path contains a NUL character")
    if "\\" in path:
        raise InvalidPath(f"path {path!r} contains a backslash; volume paths use '/'")
    segments = [s for s in path.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise InvalidPath(f"path {path!r} contains '..'; give the full path from the root")
    return "/" + "/".join(segments)


def _name(value: str, field: str) -> str:
    if not value:
        raise InvalidPath(f"{field} is empty")
    if len(value) > MAX_NAME or "\x00" in value:
        raise InvalidPath(f"{field} is not a valid name (NUL, or longer than {MAX_NAME})")
    return value


class PackageContents:
    """Atoms, files and listings of one loaded package (`label` names it in messages).

    It holds the `StoredPackage`, so the bytes its contents are read from (a buffer in memory,
    or a mapped cache file) stay valid while a stream reads them, even if the memory tier evicts
    the package meanwhile."""

    def __init__(self, stored: StoredPackage, label: str) -> None:
        self._stored = stored
        self._container = stored.container
        self._label = label
        # A package the memory tier holds is immutable process memory: hashing once suffices.
        self._stable = stored.in_memory

    def atom(self, name: str) -> AtomContent:
        """The atom `name`, hashed and checked against its manifest signature when it has one."""
        _name(name, "atom_name")
        declared = next((a for a in self._container.manifest.atoms if a.name == name), None)
        if self._container.get_atom(name) is None:
            # What can be served: the atoms section, which may hold atoms the manifest omits.
            served = sorted(self._container.atoms())
            names = ", ".join(served[:20]) + (f" and {len(served) - 20} more" * (len(served) > 20))
            raise AtomNotFound(
                f"package {self._label} has no atom {name!r} (atoms: {names or 'none'})",
                atom=name,
            )
        checked = checked_atom(self._stored, name, what=f"atom {name!r} of {self._label}")
        return AtomContent(
            name=name,
            kind=declared.kind if declared is not None else "",
            signature=declared.signature if declared is not None else "",
            checked=checked,
        )

    def _check(self, data: formats.Content, expected: str | None, what: str) -> Checked:
        """`check`, knowing whether the bytes are the memory tier's immutable copy (then the
        stream does not hash them again). Files are not remembered: a package has a few atoms,
        but may have a hundred thousand files."""
        where = {"sha256": self._stored.hash.hex, "file": self._stored.cache_name or ""}
        return check(_readable(data), expected, what=what, stable=self._stable, where=where)

    def _volume(self, name: str) -> formats.Volume:
        _name(name, "volume")
        volume = self._container.get_volume(name)
        if volume is None:
            names = ", ".join(sorted(self._container.volumes())[:20])
            raise VolumeNotFound(
                f"package {self._label} has no volume {name!r} (volumes: {names or 'none'})",
                volume=name,
            )
        return volume

    def file(self, volume_name: str, path: str) -> FileContent:
        """The file at `path`, hashed, and checked against the sha256 its header records (v3)."""
        volume = self._volume(volume_name)
        path = normalize_path(path)
        meta = volume.metadata(path)
        if meta is None or meta.is_dir:
            what = "is a directory, not a file" if meta is not None else "does not exist"
            raise PathNotFound(
                f"{path!r} {what} in volume {volume_name!r} of {self._label}",
                volume=volume_name,
                path=path,
            )
        expected = self._recorded_sha256(volume, path)
        data = volume.read_file(path)
        assert data is not None  # metadata said it is a file
        checked = self._check(data, expected, f"file {path!r} of volume {volume_name!r}")
        return FileContent(volume_name, path, meta.modified, checked)

    @staticmethod
    def _recorded_sha256(volume: formats.Volume, path: str) -> str | None:
        parent, _, leaf = path.rpartition("/")
        for entry in volume.read_dir(parent or "/") or ():
            if entry.name == leaf and not entry.is_dir and entry.hash is not None:
                return entry.hash.hex()
        return None

    def listing(self, volume_name: str, path: str, *, recursive: bool) -> Listing:
        """The entries under the directory `path` (its children, or its whole subtree: each
        directory's entries in header order, then its subdirectories' in turn); bounded by
        MAX_ENTRIES and MAX_LISTING_BYTES."""
        volume = self._volume(volume_name)
        path = normalize_path(path)
        if volume.read_dir(path) is None:
            what = "is a file, not a directory" if volume.metadata(path) else "does not exist"
            raise PathNotFound(
                f"{path!r} {what} in volume {volume_name!r} of {self._label}",
                volume=volume_name,
                path=path,
            )
        entries: list[Entry] = []
        total = budget = 0
        truncated = False
        for entry in _walk(volume, path, recursive):
            total += 1
            budget += len(entry.path.encode("utf-8", "surrogatepass")) + 40
            if truncated or len(entries) >= MAX_ENTRIES or budget > MAX_LISTING_BYTES:
                truncated = True
                continue
            entries.append(entry)
        return Listing(entries, total, truncated)


def _walk(volume: formats.Volume, top: str, recursive: bool) -> Iterator[Entry]:
    # Iterative and depth-first in header order; the reader bounds depth (MAX_DEPTH) already.
    stack = [top]
    while stack:
        directory = stack.pop()
        prefix = directory.rstrip("/") + "/"
        children = volume.read_dir(directory) or []
        below: list[str] = []
        for child in children:
            full = prefix + child.name
            yield Entry(
                path=full,
                is_dir=child.is_dir,
                size=child.size,
                sha256=child.hash.hex() if child.hash is not None and not child.is_dir else "",
                modified=child.modified,
            )
            if child.is_dir and recursive:
                below.append(full)
        stack.extend(reversed(below))


# -- finding the package ----------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """A package's contents and where the package was found (for the access log)."""

    contents: PackageContents
    source: Source
    size: int


def open_contents(
    loader: PackageLoader,
    sha256: str,
    load: LoadRequest | None,
    *,
    alive: Callable[[], bool] | None = None,
    timeout: float | None = None,
) -> Opened:
    """The contents of the package `sha256` (or `load.sha256`): from the loader's memory or disk
    tier; else, when `load` says where from, loaded exactly as Load does; else
    `PackageNotCached`."""
    if load is not None:
        if sha256 and WebcHash.parse(sha256) != WebcHash.parse(load.sha256):
            raise InvalidRequest(
                f"webc_sha256 {sha256} and the summary's {load.sha256} name different packages",
            )
        result = loader.load(load, alive=alive, timeout=timeout)
        stored, source = result.package, result.source
    else:
        found = loader.cached(sha256)
        if found is None:
            h = WebcHash.parse(sha256)
            raise PackageNotCached(
                f"package {h.hex} is not cached; Load it first, or pass its summary",
                webc_sha256=h.hex,
            )
        stored, source = found
    return Opened(PackageContents(stored, stored.hash.hex), source, stored.size)
