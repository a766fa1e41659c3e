"""Where package bytes come from, and the content handles atoms and files are read through.

A package is parsed from a ``ByteSource``: bytes in memory (``MemorySource``) or an open file
read with ``os.pread`` (``FileSource``). Files are never memory-mapped: a mapped file that
shrinks under its reader (another replica or an operator truncating it, NFS) delivers SIGBUS on
the next touch of a vanished page and kills the whole process. A read can only come back short,
and a short read raises ``ContentChanged``, a ``FormatError`` the caller can handle like any.

Atoms and volume files are ``Content`` handles: ``size``, ``chunks(max_bytes)`` (bounded
memory, whatever the size), ``sha256()`` (streaming) and ``read()`` (all of it, for small ones).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from ._detect import Buffer, as_view
from ._errors import FormatError

#: What ``chunks()`` yields at most when the caller does not say (the gRPC contract's chunk).
CHUNK = 2**20


class ContentChanged(FormatError):
    """The file ended before the bytes its parse (or its size at open) said were there: it
    was truncated or replaced under us. Nothing read from it can be trusted any longer."""


class ByteSource(ABC):
    """``size`` bytes readable at any offset, from any thread."""

    size: int

    @abstractmethod
    def read_at(self, offset: int, size: int) -> bytes | memoryview:
        """Exactly ``size`` bytes at ``offset`` (the caller stays in bounds); a read-only view
        when the bytes are in memory already. Raises ``ContentChanged`` on a short read."""

    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` (writable) with the ``len(buffer)`` bytes at ``offset`` (the caller
        stays in bounds): one copy, into memory the caller reuses. Raises ``ContentChanged``
        on a short read."""
        buffer[:] = self.read_at(offset, len(buffer))

    def close(self) -> None:  # noqa: B027 - optional: only a source holding a resource has one
        """Release what the source holds (an open file); reads afterwards raise ValueError."""


class MemorySource(ByteSource):
    """Bytes in process memory; reads are views, never copies."""

    __slots__ = ("_view", "size")

    def __init__(self, data: Buffer) -> None:
        self._view = as_view(data).toreadonly()
        self.size = len(self._view)

    def __repr__(self) -> str:
        return f"<MemorySource {self.size} bytes>"

    def read_at(self, offset: int, size: int) -> memoryview:
        return self._view[offset : offset + size]


class PiecesSource(ByteSource):
    """Bytes in process memory held as pieces of ``piece_size`` bytes (the last may be shorter):
    a read within one piece is a view, never a copy; a read across pieces is a copy of that
    range. A package copied into memory a piece at a time is one: the copy can stop between
    pieces, and a stream of ``piece_size`` chunks reads views only."""

    __slots__ = ("_piece", "_views", "size")

    def __init__(self, pieces: Sequence[Buffer], piece_size: int) -> None:
        self._views = [as_view(piece).toreadonly() for piece in pieces]
        if piece_size <= 0 or any(len(view) != piece_size for view in self._views[:-1]):
            raise ValueError(f"every piece but the last must be {piece_size} bytes")
        if self._views and not 0 < len(self._views[-1]) <= piece_size:
            raise ValueError(f"the last piece must hold 1 to {piece_size} bytes")
        self._piece = piece_size
        self.size = sum(len(view) for view in self._views)

    def __repr__(self) -> str:
        return f"<PiecesSource {self.size} bytes in {len(self._views)} pieces>"

    @property
    def piece_size(self) -> int:
        """The size of every piece but the last: a read that stays inside one is a view."""
        return self._piece

    def read_at(self, offset: int, size: int) -> memoryview:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError(f"[{offset}, {offset + size}) is outside {self.size} bytes")
        index, start = divmod(offset, self._piece)
        if start + size <= self._piece and index < len(self._views):
            return self._views[index][start : start + size]
        if size == 0:
            return memoryview(b"")
        copy = bytearray(size)
        got = 0
        while got < size:
            index, start = divmod(offset + got, self._piece)
            piece = self._views[index][start : start + size - got]
            copy[got : got + len(piece)] = piece
            got += len(piece)
        return memoryview(copy).toreadonly()


class FileSource(ByteSource):
    """An open file read with ``os.pread`` into buffers of the size asked for.

    Owns ``fd``: it is closed by ``close()`` or when the last reference goes (content handles
    keep their source alive, so a handle outlives the ``Container`` it came from). ``size`` is
    the file's size at open; a read that finds fewer bytes raises ``ContentChanged``.
    """

    def __init__(self, fd: int, *, size: int | None = None, name: str = "") -> None:
        self._fd = fd
        self.size = os.fstat(fd).st_size if size is None else size
        self.name = name
        self._finalizer = weakref.finalize(self, os.close, fd)
        # close() waits for reads in progress: closing a descriptor another thread is reading
        # could let a new file reuse its number and that read return the wrong file's bytes.
        self._lock = threading.Lock()
        self._readers = 0
        self._idle = threading.Condition(self._lock)

    def __repr__(self) -> str:
        return f"<FileSource {self.name or self._fd!r} {self.size} bytes>"

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FileSource:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return cls(fd, name=os.fsdecode(path))
        except BaseException:
            os.close(fd)
            raise

    def read_at(self, offset: int, size: int) -> bytes | memoryview:
        with self._reading():
            first = os.pread(self._fd, size, offset)
            if len(first) == size:
                return first  # the usual case: one call, one buffer, no further copy
            # A short read: a signal, a huge request, or the file ending early. Go on into one
            # buffer of the requested size; only end-of-file (a read of 0 bytes) is an error.
            view = memoryview(bytearray(size))
            view[: len(first)] = first
            self._fill(offset, view, len(first))
            return view.toreadonly()

    def read_into(self, offset: int, buffer: memoryview) -> None:
        with self._reading():
            self._fill(offset, buffer, 0)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        with self._lock:
            if not self._finalizer.alive:
                raise ValueError("read from a closed package file")
            self._readers += 1
        try:
            yield
        finally:
            with self._lock:
                self._readers -= 1
                if not self._readers:
                    self._idle.notify_all()

    def _fill(self, offset: int, view: memoryview, got: int) -> None:
        """Read into ``view[got:]`` the bytes from ``offset + got`` until it is full."""
        size = len(view)
        while got < size:
            n = os.preadv(self._fd, [view[got:]], offset + got)
            if n == 0:
                now = os.fstat(self._fd).st_size
                raise ContentChanged(
                    f"{self.name or 'package file'}: changed while being read: the bytes at "
                    f"[{offset + got}, {offset + size}) are gone (the file is now {now} bytes, "
                    f"it was {self.size} when opened)"
                )
            got += n

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        with self._lock:
            while self._readers:
                self._idle.wait()
            self._finalizer()


class Content(ABC):
    """The bytes of an atom or a volume file, read on demand.

    - ``size``: the length in bytes, known without reading.
    - ``chunks(max_bytes)``: the bytes in order, as ``bytes`` objects of at most ``max_bytes``
      each; only one chunk is held at a time, so memory stays bounded whatever the size.
    - ``sha256()``: the raw 32-byte digest (``.hex()`` for the hex form), computed streaming.
    - ``read()``: all of it as one ``bytes`` (meant for small contents: manifests, configs).

    ``len()``, ``bytes()`` and slicing (``content[a:b]``, a copy of that range) work too. A
    file that changes under a read raises ``ContentChanged``.
    """

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.read()

    def __getitem__(self, key: slice) -> bytes:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("content supports only contiguous slices")
        start, stop, _ = key.indices(self.size)
        return self.read_range(start, max(stop - start, 0))

    @abstractmethod
    def views(self, max_bytes: int = CHUNK) -> Iterator[bytes | memoryview]:
        """Like ``chunks`` but may yield read-only views (no copy when the bytes are in
        memory); a view is valid only until the next one is asked for."""

    def chunks(self, max_bytes: int = CHUNK) -> Iterator[bytes]:
        for piece in self.views(max_bytes):
            yield piece if isinstance(piece, bytes) else bytes(piece)

    def read(self) -> bytes:
        return self.read_range(0, self.size)

    def read_range(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of the content (the caller stays in bounds)."""
        out = bytearray()
        skipped = 0
        for piece in self.views():
            if skipped + len(piece) <= offset:
                skipped += len(piece)
                continue
            lo = max(offset - skipped, 0)
            out += memoryview(piece)[lo : lo + size - len(out)]
            skipped += len(piece)
            if len(out) >= size:
                break
        return bytes(out)

    def sha256(self, *, reread: bool = False) -> bytes:
        """The raw digest; ``reread`` ignores any digest remembered from the open."""
        digest = hashlib.sha256()
        for piece in self.views():
            digest.update(piece)
        return digest.digest()


class Region(Content):
    """``size`` bytes at ``offset`` of a ``ByteSource``: a webc atom or file, a kept member."""

    __slots__ = ("offset", "source")

    def __init__(self, source: ByteSource, offset: int = 0, size: int | None = None) -> None:
        super().__init__(source.size - offset if size is None else size)
        self.source = source
        self.offset = offset

    def __repr__(self) -> str:
        return f"<Region {self.offset}+{self.size} of {self.source!r}>"

    def sub(self, offset: int, size: int) -> Region:
        """The region ``size`` bytes at ``offset`` inside this one (the caller checks bounds)."""
        return Region(self.source, self.offset + offset, size)

    def views(self, max_bytes: int = CHUNK) -> Iterator[bytes | memoryview]:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        end = self.offset + self.size
        source = self.source
        # In a PiecesSource, cut where the pieces end too, so that no view spans two pieces: a
        # read across them would be a copy, and an atom's 1 MiB chunks of a package held in
        # 1 MiB pieces would all be copies (GetAtom from memory ran at 0.38x Load's stream).
        piece = source.piece_size if isinstance(source, PiecesSource) else end
        start = self.offset
        while start < end:
            stop = min(end, start + max_bytes, (start // piece + 1) * piece)
            yield source.read_at(start, stop - start)
            start = stop

    def read_range(self, offset: int, size: int) -> bytes:
        return bytes(self.source.read_at(self.offset + offset, size))
