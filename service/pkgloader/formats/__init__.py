"""pkgloader.formats: a pure-Python reader for Wasmer packages (webc v1/v2/v3 and tar.gz).

It depends only on the standard library and ``cbor2``; it knows nothing of gRPC, caching or
HTTP. Start with ``open_package``; every failure caused by the bytes is a ``FormatError``.

Reading is fault-safe: a package file is read with ``os.pread`` into bounded buffers (a
``FileSource``), never memory-mapped, so a file truncated or replaced under a reader raises
``ContentChanged`` (a ``FormatError``) instead of a SIGBUS that would kill the process.

Content handles. ``Container.get_atom(name)``, ``Container.atoms()`` and
``Volume.read_file(path)`` return ``Content`` handles (``Volume.read_dir`` and
``Volume.metadata`` describe entries without reading); nothing is read until the handle is:

- ``content.size`` (also ``len(content)``): bytes, known without reading;
- ``content.chunks(max_bytes=CHUNK)``: iterator of ``bytes``, each at most ``max_bytes``,
  in order; one chunk in memory at a time, whatever the size;
- ``content.sha256()``: the raw 32-byte sha256 digest (``.hex()`` for hex), streaming;
- ``content.read()`` (also ``bytes(content)``): all of it at once, for small contents;
- ``content[a:b]``: a copy of that range.

A handle keeps its source alive; reading it after ``Container.close()`` of a package opened
from a path raises ``ValueError``. Sources: ``FileSource(fd)`` / ``FileSource.open(path)``,
``MemorySource(bytes)`` and ``PiecesSource(pieces, piece_size)`` (memory in equal pieces), each a
``ByteSource`` (``read_at(offset, size)``, exact or ``ContentChanged``, and
``read_into(offset, buffer)``, the same into memory the caller reuses); ``open_package``
accepts a path, bytes or a ``ByteSource``.
"""

from ._container import Container, open_package
from ._detect import detect
from ._errors import DetectError, FormatError
from ._json import JSON, to_jsonable
from ._manifest import Atom, Binding, Command, Dependency, Manifest
from ._source import (
    CHUNK,
    ByteSource,
    Content,
    ContentChanged,
    FileSource,
    MemorySource,
    PiecesSource,
)
from ._tarball import TarballLimits
from ._volume import DirEntry, Metadata, Volume

__all__ = [
    "CHUNK",
    "JSON",
    "Atom",
    "Binding",
    "ByteSource",
    "Command",
    "Container",
    "Content",
    "ContentChanged",
    "Dependency",
    "DetectError",
    "DirEntry",
    "FileSource",
    "FormatError",
    "Manifest",
    "MemorySource",
    "Metadata",
    "PiecesSource",
    "TarballLimits",
    "Volume",
    "detect",
    "open_package",
    "to_jsonable",
]
