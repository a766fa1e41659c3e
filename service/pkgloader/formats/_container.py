"""``open_package`` and ``Container``: one read-only view over any package format."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import mmap
import os
from types import TracebackType

from ._detect import Buffer, as_view, detect
from ._errors import DetectError, FormatError
from ._indexed import parse_indexed
from ._manifest import Manifest, manifest_from_cbor
from ._parsed import Parsed
from ._tarball import TarballLimits, parse_tarball
from ._v1 import parse_v1
from ._volume import Volume, content_sha256, content_view

Source = str | os.PathLike[str] | Buffer


def open_package(source: Source, *, limits: TarballLimits | None = None) -> Container:
    """Parse a package from a path (memory-mapped, never read whole) or from bytes in memory.

    Everything structural (headers, index, manifest, volume trees) is parsed here, so a
    ``FormatError`` surfaces now rather than on first use; atoms and file contents stay views
    (a tar.gz member larger than a small cap is decompressed again each time it is read).
    ``limits`` bounds what a tar.gz package may expand to. ``OSError`` from opening a path
    propagates unchanged.
    """
    limits = limits or TarballLimits()
    owned: mmap.mmap | None = None
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                raise DetectError(f"not a package: {os.fsdecode(source)!r} is empty")
            owned = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        buffer: Buffer = owned
    else:
        buffer = source
    try:
        view = as_view(buffer)
        parsed = _parse(view, limits)
        # A tar.gz keeps only small members in memory and decompresses the others from the
        # package bytes when they are read, so it needs them (and a mapping) like webc does.
        return Container(parsed, view, owned)
    except BaseException:
        if owned is not None:
            _close_quietly(owned)
        raise


def _parse(view: memoryview, limits: TarballLimits) -> Parsed:
    kind = detect(view)
    try:
        if kind == "tarball":
            return parse_tarball(view, limits)
        if kind == "webc-v1":
            return parse_v1(view)
        return parse_indexed(view, v3=kind == "webc-v3")
    except FormatError:
        raise
    except (RecursionError, MemoryError, OverflowError) as exc:  # pragma: no cover - defensive
        # The parsers are iterative and bounds-check every length, so these should not happen;
        # if they do, the input is still at fault, not the caller.
        raise FormatError(f"{kind}: cannot parse: {type(exc).__name__}") from None


def _close_quietly(owned: mmap.mmap) -> None:
    # BufferError: views of the mapping are still alive somewhere; dropping our reference lets
    # it be unmapped when the last of them goes.
    with contextlib.suppress(BufferError):
        owned.close()


class Container:
    """A parsed package. Create it with ``open_package``; ``close`` releases a mapped file."""

    def __init__(self, parsed: Parsed, view: memoryview | None, owned: mmap.mmap | None) -> None:
        self.format = parsed.format
        self.version = parsed.version
        self._parsed = parsed
        self._view = view
        self._owned = owned
        self._closed = False
        self._webc_hash: bytes | None = None
        self._checksum_valid: bool | None = None
        self._checksum_known = False
        sizes = {name: len(atom) for name, atom in parsed.atoms.items()}
        self.manifest: Manifest = manifest_from_cbor(parsed.manifest, sizes)

    def __repr__(self) -> str:
        atoms, volumes = len(self._parsed.atoms), len(self._parsed.volumes)
        return f"<Container {self.format} atoms={atoms} volumes={volumes}>"

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the package is closed")

    def _data(self) -> memoryview:
        self._check_open()
        assert self._view is not None  # set until close()
        return self._view

    @property
    def webc_hash(self) -> bytes | None:
        """sha256 of the whole file for webc (computed once, on first use); None for tar.gz."""
        if self.format == "tarball":
            return None
        if self._webc_hash is None:
            self._webc_hash = hashlib.sha256(self._data()).digest()
        return self._webc_hash

    @property
    def checksum_valid(self) -> bool | None:
        """webc v1: whether the header's sha256 checksum matches (None if it has none)."""
        if self._parsed.checksum_valid is None:
            return None
        if not self._checksum_known:
            self._check_open()
            self._checksum_valid = self._parsed.checksum_valid()
            self._checksum_known = True
        return self._checksum_valid

    def atoms(self) -> dict[str, memoryview]:
        """Every atom by name, sorted by name; the values are views of the package bytes.

        For a tar.gz an atom larger than a small cap is decompressed on each call into a fresh
        copy (and ``atoms()`` produces all of them), so prefer ``get_atom`` and keep the result.
        """
        self._check_open()
        return {name: content_view(atom) for name, atom in self._parsed.atoms.items()}

    def get_atom(self, name: str) -> memoryview | None:
        """One atom's bytes (see ``atoms`` for tar.gz), or ``None`` if there is no such atom."""
        self._check_open()
        atom = self._parsed.atoms.get(name)
        return None if atom is None else content_view(atom)

    def volumes(self) -> dict[str, Volume]:
        """Every volume under its raw name (``atom``, ``metadata``, ``/settings``, …)."""
        self._check_open()
        return dict(self._parsed.volumes)

    def get_volume(self, name: str) -> Volume | None:
        """A volume by name; for webc v1 ``{package}/{name}`` is tried first (doc §3.1)."""
        self._check_open()
        volumes = self._parsed.volumes
        if self.format == "webc-v1":
            for package in self._v1_package_names():
                volume = volumes.get(f"{package}/{name}")
                if volume is not None:
                    return volume
        return volumes.get(name)

    def _v1_package_names(self) -> list[str]:
        wapm = self.manifest.package.get("wapm")
        if not isinstance(wapm, dict) or not isinstance(wapm.get("name"), str):
            return []
        name, version = str(wapm["name"]), wapm.get("version")
        return [f"{name}@{version}", name] if isinstance(version, str) else [name]

    def validate(self) -> list[str]:
        """Every integrity failure, one precise message each; ``[]`` when the package is sound.

        Checks each manifest atom's ``sha256:`` signature against its bytes, then the format's
        own checks: v1 checksum; v2/v3 index checksums; v3 section hashes; per-file hashes;
        v3 Merkle directory hashes; file ranges outside their volume's data.
        """
        self._check_open()
        problems: list[str] = []
        for atom in self.manifest.atoms:
            content = self._parsed.atoms.get(atom.name)
            if content is None:
                problems.append(f"atom {atom.name!r} is in the manifest but not in the package")
                continue
            algorithm, _, encoded = atom.signature.partition(":")
            try:
                expected = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                expected = b""
            if algorithm != "sha256" or len(expected) != 32:
                problems.append(
                    f"atom {atom.name!r}: unsupported signature {atom.signature!r} "
                    f"(expected 'sha256:' and 32 bytes in base64)"
                )
                continue
            # A tar.gz member not kept in memory is decompressed and hashed again, in pieces.
            digest = content_sha256(content, reread=True)
            if digest != expected:
                problems.append(
                    f"atom {atom.name!r}: signature {atom.signature} does not match the atom's "
                    f"bytes (sha256:{base64.b64encode(digest).decode()})"
                )
        problems.extend(self._parsed.problems())
        return problems

    def close(self) -> None:
        """Drop every view this container holds and unmap a file it opened; safe to repeat.

        Views handed out earlier (atoms, file contents) stay valid until their holders drop
        them; the mapping is unmapped when the last one goes.
        """
        if self._closed:
            return
        self._closed = True
        self._parsed.atoms.clear()
        self._parsed.volumes.clear()
        if self._view is not None:
            with contextlib.suppress(BufferError):
                self._view.release()
            self._view = None
        if self._owned is not None:
            _close_quietly(self._owned)
            self._owned = None
