"""``open_package`` and ``Container``: one read-only view over any package format."""

from __future__ import annotations

import base64
import binascii
import os
from types import TracebackType

from ._detect import Buffer, detect
from ._errors import DetectError, FormatError
from ._indexed import parse_indexed
from ._manifest import Manifest, manifest_from_cbor
from ._parsed import Parsed
from ._source import ByteSource, Content, FileSource, MemorySource, Region
from ._tarball import TarballLimits, parse_tarball
from ._v1 import parse_v1
from ._volume import Volume, content_sha256

Source = str | os.PathLike[str] | Buffer | ByteSource


def open_package(source: Source, *, limits: TarballLimits | None = None) -> Container:
    """Parse a package from a path, an open ``ByteSource`` or bytes in memory.

    A path is opened and read with ``os.pread`` in bounded pieces, never mapped and never read
    whole, so a file truncated under us raises ``ContentChanged`` instead of killing the process.
    Everything structural (headers, index, manifest, volume trees) is parsed here, so a
    ``FormatError`` surfaces now rather than on first use; atoms and file contents stay
    ``Content`` handles read on demand (a tar.gz member larger than a small cap is decompressed
    again each time it is read). ``limits`` bounds what a tar.gz package may expand to.
    ``OSError`` from opening a path propagates unchanged.
    """
    limits = limits or TarballLimits()
    owned: FileSource | None = None
    if isinstance(source, ByteSource):
        data = source
    elif isinstance(source, str | os.PathLike):
        owned = data = FileSource.open(source)
        if data.size == 0:
            data.close()
            raise DetectError(f"not a package: {os.fsdecode(source)!r} is empty")
    else:
        data = MemorySource(source)
    try:
        parsed = _parse(Region(data), limits)
        return Container(parsed, data, owned)
    except BaseException:
        if owned is not None:
            owned.close()
        raise


def _parse(region: Region, limits: TarballLimits) -> Parsed:
    kind = detect(region.read_range(0, min(8, len(region))))
    try:
        if kind == "tarball":
            return parse_tarball(region, limits)
        if kind == "webc-v1":
            return parse_v1(region)
        return parse_indexed(region, v3=kind == "webc-v3")
    except FormatError:
        raise
    except (RecursionError, MemoryError, OverflowError) as exc:  # pragma: no cover - defensive
        # The parsers are iterative and bounds-check every length, so these should not happen;
        # if they do, the input is still at fault, not the caller.
        raise FormatError(f"{kind}: cannot parse: {type(exc).__name__}") from None


# What a parse costs in memory besides kept bytes: a fixed part (the container, manifest
# objects, closures), each node of a tree (a FileNode or DirNode with its name, dict slot and
# ints) and each value of the decoded manifest. Calibrated with tracemalloc on the sample
# packages (fixtures/packages): from 1% below to 25% above the traced allocations.
_BASE_COST = 5120
_NODE_COST = 320
_VALUE_COST = 160


def _cost(parsed: Parsed) -> int:
    """The memory the trees and the manifest of ``parsed`` take, from their node counts."""
    nodes = len(parsed.atoms) + sum(volume.node_count for volume in parsed.volumes.values())
    values, pending = 0, [parsed.manifest]
    while pending:
        value = pending.pop()
        values += 1
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)
        elif isinstance(value, bytes | str):
            values += len(value) // _VALUE_COST
    return _BASE_COST + nodes * _NODE_COST + values * _VALUE_COST


class Container:
    """A parsed package. Create it with ``open_package``; ``close`` releases a file it opened."""

    def __init__(self, parsed: Parsed, source: ByteSource, owned: FileSource | None) -> None:
        self.format = parsed.format
        self.version = parsed.version
        self._parsed = parsed
        self._source: ByteSource | None = source
        self._owned = owned
        self._closed = False
        self._webc_hash: bytes | None = None
        self._checksum_valid: bool | None = None
        self._checksum_known = False
        sizes = {name: len(atom) for name, atom in parsed.atoms.items()}
        self.manifest: Manifest = manifest_from_cbor(parsed.manifest, sizes)
        self._retained = parsed.held_bytes + _cost(parsed)

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

    def _data(self) -> Region:
        self._check_open()
        assert self._source is not None  # set until close()
        return Region(self._source)

    @property
    def webc_hash(self) -> bytes | None:
        """sha256 of the whole file for webc (computed once, on first use); None for tar.gz."""
        if self.format == "tarball":
            return None
        if self._webc_hash is None:
            self._webc_hash = self._data().sha256()
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

    def atoms(self) -> dict[str, Content]:
        """Every atom by name, sorted by name, as ``Content`` handles (nothing is read yet)."""
        self._check_open()
        return dict(self._parsed.atoms)

    def get_atom(self, name: str) -> Content | None:
        """One atom as a ``Content`` handle, or ``None`` if there is no such atom."""
        self._check_open()
        return self._parsed.atoms.get(name)

    @property
    def retained_bytes(self) -> int:
        """Memory this parsed package holds beyond its source: tar.gz members kept in memory
        and inflater checkpoints, plus the parsed trees and manifest (see ``_cost``)."""
        return self._retained

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
        """Drop every handle this container holds; safe to repeat.

        Handles given out earlier (atoms, files, volumes) keep their source alive and stay
        readable; a file opened from a path is closed when the last of them goes.
        """
        if self._closed:
            return
        self._closed = True
        self._parsed.atoms.clear()
        self._parsed.volumes.clear()
        # The checks close over the parsed sections, and so over the source.
        self._parsed.problems = list
        self._parsed.checksum_valid = None
        self._source = None
        self._owned = None
