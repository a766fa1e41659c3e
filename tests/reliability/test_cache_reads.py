"""Reading the cache on a real `pkgloader serve` process: files that shrink under a read, the
memory a parsed entry really holds, and concurrent promotions (issue 10 items 1, 4 and 5).

RSS is read from /proc of the server process (VmHWM: its peak), with the default allocator.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cbor2
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pkgloader_client import pb

from tests.conftest import load_request
from tests.replicas import Replica, replicas

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


def _uleb(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _webc(path: Path, atom_size: int) -> str:
    """Write a valid webc v1 package with one atom of `atom_size` pseudo-random bytes, in
    1 MiB pieces; return its sha256."""
    pieces = [hashlib.sha256(str(i).encode()).digest() * (MiB // 32) for i in range(2)]

    def atom() -> Iterator[bytes]:
        left = atom_size
        for i in range(atom_size // MiB + 1):
            piece = pieces[i % 2][: min(MiB, left)]
            left -= len(piece)
            if piece:
                yield piece

    signature = hashlib.sha256()
    for piece in atom():
        signature.update(piece)
    manifest = cbor2.dumps(
        {
            "package": {"wapm": {"name": "test/big", "version": "1.0.0"}},
            "atoms": {
                "big": {
                    "kind": "https://webc.org/kind/wasm",
                    "signature": "sha256:" + base64.b64encode(signature.digest()).decode(),
                }
            },
        }
    )
    entry = (3).to_bytes(7, "little") + b"\x01" + (0).to_bytes(8, "little")
    entry += atom_size.to_bytes(8, "little") + b"big"
    header = len(entry).to_bytes(8, "little") + entry
    blob_len = len(_uleb(len(header))) + len(header) + atom_size
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for part in (
            b"\x00webc001" + b"-" * 16 + bytes(256 + 4 + 1024),
            _uleb(len(manifest)) + manifest,
            _uleb(blob_len) + _uleb(len(header)) + header,
            *atom(),
        ):
            f.write(part)
            digest.update(part)
    return digest.hexdigest()


def _cache(tmp_path: Path, atom_size: int) -> tuple[Path, Path, str]:
    """A cache folder holding one webc package under its name: (cache dir, file, sha256)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    built = tmp_path / "files" / "big.webc"
    built.parent.mkdir(exist_ok=True)
    sha = _webc(built, atom_size)
    cached = cache / f"{sha}.bin"
    built.replace(cached)
    return cache, cached, sha


@contextmanager
def _server(cache: Path, files: Path, **env: str) -> Iterator[Replica]:
    with replicas(cache, 1, PKGLOADER_FILE_ROOTS=str(files), **env) as started:
        yield started[0]


def _status(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status, in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert match is not None, field
    return int(match.group(1)) * 1024


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return str(info.reason)


def _still_serving(replica: Replica, sha: str, url: str) -> None:
    assert replica.proc.poll() is None, f"the server died with {replica.proc.returncode}"
    replica.wait_serving(timeout=10)
    # A file Load of the same package works again: it is fetched anew and republished.
    first = next(iter(replica.stub.Load(load_request(url, sha), timeout=60)))
    assert first.package.webc_sha256 == sha


def test_a_cache_file_truncated_under_a_content_load_fails_that_load_alone(
    tmp_path: Path,
) -> None:
    """A 40 MiB cached file truncated to 0 after the first chunk ends that Load with ABORTED /
    CACHE_FILE_CHANGED; the server process lives on and serves (it died of SIGBUS before)."""
    cache, cached, sha = _cache(tmp_path, 40 * MiB)
    source = tmp_path / "files" / "source.webc"
    shutil.copyfile(cached, source)  # the same bytes for the Load afterwards
    url = f"file://{source}"
    with _server(cache, tmp_path / "files", PKGLOADER_MEMORY_CACHE_BYTES="1Mi") as replica:
        stream = replica.stub.Load(load_request(url, sha, include_content=True), timeout=60)
        head = next(iter(stream))
        assert head.package.source == pb.SOURCE_DISK
        assert len(next(iter(stream)).chunk) == MiB
        os.truncate(cached, 0)
        with pytest.raises(grpc.RpcError) as caught:
            for _ in stream:
                pass
        assert caught.value.code() == grpc.StatusCode.ABORTED
        assert _reason(caught.value) == "CACHE_FILE_CHANGED"
        _still_serving(replica, sha, url)


def test_a_cache_file_truncated_while_validate_cache_hashes_it_leaves_the_server_up(
    tmp_path: Path,
) -> None:
    """ValidateCache hashing a file that is truncated meanwhile completes (the file is skipped
    as changed), and the server lives on (it died of SIGBUS before)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    files = tmp_path / "files"
    files.mkdir()
    # A sparse file: instant to make, long enough to hash that the truncation lands mid-way.
    big = cache / f"{'ab' * 32}.bin"
    with open(big, "wb") as f:
        f.truncate(4 << 30)
    with _server(cache, files, PKGLOADER_MEMORY_CACHE_BYTES="1Mi") as replica:
        pid = replica.proc.pid
        io_file, maps = Path(f"/proc/{pid}/io"), Path(f"/proc/{pid}/maps")

        def read_bytes() -> int:
            match = re.search(r"^rchar: (\d+)", io_file.read_text(), re.M)
            return int(match.group(1)) if match else 0

        before = read_bytes()
        result: dict[str, object] = {}

        def validate() -> None:
            try:
                result["ok"] = replica.stub.ValidateCache(
                    pb.ValidateCacheRequest(mode=pb.CACHE_VALIDATION_PRUNE), timeout=120
                )
            except grpc.RpcError as exc:
                result["error"] = exc

        caller = threading.Thread(target=validate)
        caller.start()
        # Wait for the event "the server is hashing the file": its reads passed 64 MiB (or,
        # for a mapping, the file shows in its maps).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "ok" not in result and "error" not in result:
            if read_bytes() - before > 64 * MiB or big.name in maps.read_text():
                break
            time.sleep(0.005)
        else:
            pytest.fail(f"the server never started hashing the file: {result}")
        os.truncate(big, 0)
        caller.join(120)
        assert replica.proc.poll() is None, f"the server died with {replica.proc.returncode}"
        assert "ok" in result, result
        report = result["ok"]
        assert isinstance(report, pb.ValidateCacheResponse)
        assert report.checked_files == 0  # it changed under the hash: not judged
        replica.wait_serving(timeout=10)


def _zeros_tar_gz(i: int) -> bytes:
    buffer = io.BytesIO()
    manifest = f'[package]\nname = "test/zeros{i}"\nversion = "1.0.{i}"\n'.encode()
    members = [("wapm.toml", manifest)] + [(f"data/z{k}.bin", bytes(MiB)) for k in range(8)]
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue(), mtime=0)


def test_memory_tier_charges_what_parsed_tar_gz_entries_hold(tmp_path: Path) -> None:
    """40 distinct 8.6 KB tar.gz packages that each keep 8 MiB once parsed, loaded through
    file:// past a 64 MiB budget: the server's peak RSS grows by less than the budget plus
    48 MiB (it grew ~337 MiB when the tier charged file sizes)."""
    cache = tmp_path / "cache"
    files = tmp_path / "files"
    files.mkdir()
    packages = []
    for i in range(40):
        data = _zeros_tar_gz(i)
        assert len(data) < 16 * 1024
        path = files / f"zeros-{i}.tar.gz"
        path.write_bytes(data)
        packages.append((f"file://{path}", hashlib.sha256(data).hexdigest()))
    budget = 64 * MiB
    with _server(cache, files, PKGLOADER_MEMORY_CACHE_BYTES=str(budget)) as replica:
        pid = replica.proc.pid
        # Warm the code paths with one package (imports, pools), then measure from there.
        url, sha = packages[0]
        list(replica.stub.Load(load_request(url, sha), timeout=60))
        base = _status(pid, "VmRSS")
        for url, sha in packages[1:]:
            first = next(iter(replica.stub.Load(load_request(url, sha), timeout=60)))
            assert first.package.webc_sha256 == sha
        growth = _status(pid, "VmHWM") - base
        print(f"peak RSS growth {growth / MiB:.0f} MiB, budget {budget / MiB:.0f} MiB")
        assert growth < budget + 48 * MiB, f"peak RSS grew {growth / MiB:.0f} MiB"


def test_concurrent_first_loads_of_a_disk_package_promote_it_once(tmp_path: Path) -> None:
    """Eight simultaneous metadata Loads of a 64 MiB package on disk (budget 256 MiB) grow the
    server's peak RSS by less than 2.5x the package size (each copied it before). A tar.gz of
    incompressible members, so the parse takes long enough for the calls to overlap."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "files").mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        members = [("wapm.toml", b'[package]\nname = "test/big"\nversion = "1.0.0"\n')]
        members += [(f"data/r{k}.bin", os.urandom(MiB)) for k in range(64)]
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0)
    del buffer, members
    sha = hashlib.sha256(data).hexdigest()
    (cache / f"{sha}.bin").write_bytes(data)
    size = len(data)
    del data
    url = f"file://{tmp_path / 'files' / 'absent.tar.gz'}"  # never fetched: the disk has it
    with _server(cache, tmp_path / "files", PKGLOADER_MEMORY_CACHE_BYTES="256Mi") as replica:
        pid = replica.proc.pid
        base = _status(pid, "VmRSS")
        start = threading.Barrier(8)
        sources: list[int] = []
        errors: list[BaseException] = []

        def load() -> None:
            try:
                start.wait(10)
                first = next(iter(replica.stub.Load(load_request(url, sha), timeout=60)))
                sources.append(first.package.source)
            except BaseException as exc:
                errors.append(exc)

        callers = [threading.Thread(target=load) for _ in range(8)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(60)
        assert not errors, errors
        assert len(sources) == 8
        assert set(sources) <= {pb.SOURCE_DISK, pb.SOURCE_MEMORY}
        growth = _status(pid, "VmHWM") - base
        print(f"peak RSS growth {growth / MiB:.0f} MiB for a {size / MiB:.0f} MiB package")
        assert growth < 2.5 * size, f"peak RSS grew {growth / MiB:.0f} MiB for {size / MiB:.0f}"
