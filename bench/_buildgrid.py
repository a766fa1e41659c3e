"""BuildGrid, the outside baseline: installed from PyPI into its own virtual environment under
bench/out/ (its pins would fight ours), run as `bgd server start` on loopback.

Only the parts compared are configured: CAS (FindMissingBlobs) and ByteStream (Read) over an
LRU memory store or a disk store, no auth, no monitoring. Requests are encoded by hand, so the
same raw-bytes client drives BuildGrid and pkgloader.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc

from bench._common import (
    Config,
    MiB,
    Proc,
    base_env,
    field_bytes,
    field_varint,
    free_port,
    wait_port,
)

PACKAGE = "buildgrid"
FIND_MISSING = "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"
READ = "/google.bytestream.ByteStream/Read"
WRITE = "/google.bytestream.ByteStream/Write"


def venv(cfg: Config) -> Path:
    return cfg.work / "buildgrid-venv"


def ensure(cfg: Config) -> tuple[Path | None, str]:
    """(path of `bgd`, version) or (None, why not)."""
    root = venv(cfg)
    bgd = root / "bin" / "bgd"
    if not bgd.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        try:
            subprocess.run([base, "-m", "venv", str(root)], check=True, capture_output=True)
            subprocess.run(
                [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", PACKAGE],
                check=True,
                capture_output=True,
                timeout=900,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            return None, f"could not install {PACKAGE}: {detail.decode(errors='replace')[-500:]}"
    try:
        version = subprocess.run(
            [
                str(root / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('buildgrid'))",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except subprocess.CalledProcessError as exc:
        return None, f"{PACKAGE} is installed but does not import: {exc.stderr[-500:]}"
    return bgd, version


def digest(sha256: str, size: int) -> bytes:
    return field_bytes(1, sha256.encode()) + field_varint(2, size)


def find_missing_request(sha256: str, size: int) -> bytes:
    return field_bytes(2, digest(sha256, size))


def read_request(sha256: str, size: int) -> bytes:
    return field_bytes(1, f"blobs/{sha256}/{size}".encode())


def _config(port: int, storage: str, root: Path) -> str:
    if storage == "memory":
        store = "  - !lru-storage &store\n    size: 2G\n"
    else:
        store = f"  - !disk-storage &store\n    path: {root}\n"
    return f"""server:
  - !channel
    address: "127.0.0.1:{port}"
    insecure-mode: true
authorization:
  method: none
monitoring:
  enabled: false
thread-pool-size: 64
grpc-server-options:
  grpc.so_reuseport: 0
  grpc.max_receive_message_length: 8388608
  grpc.max_send_message_length: 8388608
storages:
{store}instances:
  - name: ""
    services:
      - !cas
        storage: *store
      - !bytestream
        storage: *store
"""


@contextlib.contextmanager
def server(
    cfg: Config, bgd: Path, storage: str, root: Path, malloc: Mapping[str, str] | None = None
) -> Iterator[tuple[Proc, int]]:
    port = free_port()
    config = root / f"bgd-{storage}-{port}.yml"
    config.write_text(_config(port, storage, root / "cas-store"))
    env = base_env(malloc)
    env.pop("PYTHONPATH", None)  # its own environment, nothing of ours
    proc = Proc([str(bgd), "server", "start", str(config)], env, cfg.work / f"bgd-{storage}.log")
    try:
        wait_port(port, proc, timeout=120)
        yield proc, port
    finally:
        proc.stop()


def put_on_disk(root: Path, path: Path, sha256: str) -> None:
    """Place a file in the disk store's layout (`cas/objects/ab/cdef…`) by hard link."""
    target = root / "cas-store" / "cas" / "objects" / sha256[:2] / sha256[2:]
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            os.link(path, target)
        except OSError:
            target.write_bytes(path.read_bytes())


def upload(port: int, path: Path, sha256: str, size: int) -> None:
    """ByteStream Write of a file, 1 MiB at a time (how a memory store gets its blob)."""
    resource = f"uploads/{uuid.uuid4()}/blobs/{sha256}/{size}".encode()

    def requests() -> Iterator[bytes]:
        offset = 0
        with open(path, "rb") as f:
            while True:
                data = f.read(MiB)
                last = offset + len(data) >= size
                message = b""
                if offset == 0:
                    message += field_bytes(1, resource)
                message += field_varint(2, offset) if offset else b""
                if last:
                    message += field_varint(3, 1)
                message += field_bytes(10, data)
                yield message
                offset += len(data)
                if last:
                    return

    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 * MiB)]
    ) as channel:
        channel.stream_unary(WRITE)(requests(), timeout=300)
