"""tar.gz reading with bounded memory: large members are decompressed on demand, not kept."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import random
import tarfile
import tracemalloc
from pathlib import Path

import pkgloader.formats._tarball as tarball_module
import pytest
from pkgloader.formats import FormatError, open_package

from ._helpers import COWSAY, exercise

MiB = 2**20


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as they are read."""

    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        self._left -= n
        return bytes(n)


def _sha256_of_zeros(size: int) -> str:
    digest = hashlib.sha256()
    block = bytes(MiB)
    for _ in range(size // MiB):
        digest.update(block)
    digest.update(bytes(size % MiB))
    return digest.hexdigest()


def _rss() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue(), mtime=0)


MANIFEST = b"""
[package]
name = "test/big"
version = "1.0.0"

[[module]]
name = "big"
source = "big.wasm"

[[module]]
name = "small"
source = "small.wasm"

[[command]]
name = "big"
module = "big"
runner = "wasi"
"""


def test_huge_zero_member_keeps_open_memory_small(tmp_path: Path) -> None:
    """256 MiB of zeros in a ~256 KiB tar.gz: open_package holds a few MiB, not 256 MiB; the
    member is still read whole, with the right size and sha256, and its signature checks."""
    size = 256 * MiB
    path = tmp_path / "big.tar.gz"
    with gzip.open(path, "wb", compresslevel=6) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        for name, content in (("wasmer.toml", MANIFEST), ("small.wasm", b"\0asm small")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        info = tarfile.TarInfo("big.wasm")
        info.size = size
        tar.addfile(info, _Zeros(size))
    assert path.stat().st_size < 2 * MiB

    rss_before = _rss()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        package = open_package(path)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_after = _rss()
    with package:
        assert peak - baseline < 32 * MiB, f"open_package peaked at {(peak - baseline) >> 20} MiB"
        assert current - baseline < 16 * MiB
        if rss_before is not None and rss_after is not None:
            assert rss_after - rss_before < 64 * MiB
        atom = package.manifest.atoms[0]
        assert (atom.name, atom.size) == ("big", size)
        expected = _sha256_of_zeros(size)
        assert atom.signature == "sha256:" + base64.b64encode(bytes.fromhex(expected)).decode()
        volume = package.get_volume("metadata")
        assert volume is not None
        assert dict(volume.files())["/big.wasm"] == size
        assert volume.total_bytes == size + len(MANIFEST) + len(b"\0asm small")
        content = volume.read_file("/big.wasm")
        assert content is not None
        assert len(content) == size
        assert content.sha256().hex() == expected
        assert all(len(piece) <= 2**20 for piece in content.chunks(2**20))
        del content
        assert bytes(package.get_atom("small") or b"") == b"\0asm small"
        assert package.validate() == []


def _random_package(members: int, member_size: int) -> tuple[bytes, dict[str, bytes]]:
    """A multi-member gzip stream (zero padding between members) of a tar with random files."""
    rng = random.Random(7)
    contents = {f"data/f{i}.bin": rng.randbytes(member_size + i) for i in range(members)}
    contents["big.wasm"] = rng.randbytes(3 * member_size)
    contents["small.wasm"] = b"\0asm"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, content in [("wasmer.toml", MANIFEST), *contents.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    raw = buffer.getvalue()
    third = len(raw) // 3
    parts = [raw[:third], raw[third : 2 * third], raw[2 * third :]]
    data = b"".join(gzip.compress(p, mtime=0) + bytes(100) for p in parts)
    return data, contents


def test_lazy_members_read_back_exactly_from_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Members past the keep budget are decompressed again from the nearest checkpoint, across
    gzip member boundaries and padding, and read back byte for byte."""
    monkeypatch.setattr(tarball_module, "_CHECKPOINT_EVERY", 100_000)
    monkeypatch.setattr(tarball_module, "_KEEP_BUDGET", 300_000)
    data, contents = _random_package(members=12, member_size=70_000)
    with open_package(data) as package:
        volume = package.get_volume("metadata")
        assert volume is not None
        archive = package._parsed.atoms["big"]._archive  # type: ignore[attr-defined]
        assert len(archive.checkpoints) >= 5
        kinds = {path: type(volume._lookup(path).data).__name__ for path in contents}  # type: ignore[union-attr]
        assert "Region" in kinds.values()
        assert "_Member" in kinds.values()
        for name, content in reversed(contents.items()):
            assert bytes(volume.read_file(name) or b"x") == content, name
            assert volume.metadata(name).length == len(content)
        assert bytes(package.get_atom("big") or b"") == contents["big.wasm"]
        assert package.validate() == []
        exercise(package)


@pytest.mark.parametrize("manifest_first", [True, False])
def test_atom_signatures_whatever_the_member_order(
    monkeypatch: pytest.MonkeyPatch, manifest_first: bool
) -> None:
    """A source before the manifest is hashed while streaming on speculation; after it, only
    sources are hashed. Either way the signatures are right and other members stay unhashed."""
    monkeypatch.setattr(tarball_module, "_KEEP_MEMBER_BYTES", 1000)
    big, other, small = os.urandom(50_000), os.urandom(40_000), b"\0asm"
    members = [("big.wasm", big), ("other.bin", other), ("small.wasm", small)]
    manifest = ("wasmer.toml", MANIFEST)
    data = _tar_gz([manifest, *members] if manifest_first else [*members, manifest])
    with open_package(data) as package:
        signatures = {a.name: a.signature for a in package.manifest.atoms}
        for name, content in (("big", big), ("small", small)):
            encoded = base64.b64encode(hashlib.sha256(content).digest()).decode()
            assert signatures[name] == "sha256:" + encoded
        volume = package.get_volume("metadata")
        other_member = volume._lookup("/other.bin").data  # type: ignore[union-attr]
        assert (other_member._digest is None) is manifest_first  # type: ignore[union-attr]
        assert bytes(volume.read_file("/other.bin") or b"") == other
        assert package.validate() == []


def test_a_kept_volume_still_reads_after_close() -> None:
    """Like a webc file view, a Volume the caller kept reads lazily after close()."""
    package = open_package(COWSAY)
    volume = package.get_volume("metadata")
    assert volume is not None
    package.close()
    content = volume.read_file("/target/wasm32-wasi/release/cowsay.wasm")
    assert content is not None
    assert bytes(content[:4]) == b"\0asm"


def test_huge_tar_metadata_is_refused_before_it_is_held() -> None:
    """tarfile holds a pax header whole, so the headers before a member are capped."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("wasmer.toml")
        info.size = len(MANIFEST)
        info.pax_headers = {"comment": "x" * (3 * MiB)}
        tar.addfile(info, io.BytesIO(MANIFEST))
    with pytest.raises(FormatError, match="limit on tar metadata"):
        open_package(gzip.compress(buffer.getvalue()))


def test_oversized_manifest_is_refused() -> None:
    """The manifest is parsed in memory, so it has its own cap."""
    manifest = b"# " + b"x" * (5 * MiB) + b"\n" + MANIFEST
    with pytest.raises(FormatError, match="limit for a manifest"):
        open_package(_tar_gz([("wasmer.toml", manifest), ("big.wasm", b""), ("small.wasm", b"")]))


def test_gzip_integrity_errors_are_format_errors() -> None:
    """A bad CRC, trailing garbage after a member, or a truncated stream fail the open."""
    good = _tar_gz([("wasmer.toml", b'[package]\nname = "a/b"\nversion = "1.0.0"\n')])
    bad_crc = good[:-8] + bytes(b ^ 0xFF for b in good[-8:-4]) + good[-4:]
    for raw in (bad_crc, good + b"garbage", good[:-3]):
        with pytest.raises(FormatError, match="cannot decode"):
            open_package(raw)
    with open_package(good + bytes(64)) as package:  # zero padding after a member is allowed
        assert package.format == "tarball"
