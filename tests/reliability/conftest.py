"""Parts for the fault-injection and bad-input tests: a misbehaving HTTP upstream made of raw
sockets on 127.0.0.1, `pkgloader serve` as a real subprocess, /proc figures of a process, and
the one check every test ends with: the cache folder holds only files named by their sha256.

Every loop here has a count and a deadline; every socket is on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pkgloader_client import PackageLoaderServiceStub, pb

from tests.conftest import FIXTURES, wait_until

ENTRY = re.compile(r"^[0-9a-f]{64}\.bin$")
#: Longer variants of the fault tests: PKGLOADER_SOAK=1.
SOAK = os.environ.get("PKGLOADER_SOAK", "") not in ("", "0")


def seed() -> int:
    """The run's random seed: PKGLOADER_SEED to replay one, else fresh (printed on failure)."""
    return int(os.environ.get("PKGLOADER_SEED") or random.SystemRandom().randrange(2**32))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    value = seed()
    request.node.user_properties.append(("seed", value))
    print(f"PKGLOADER_SEED={value}")
    return random.Random(value)


# -- errors


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status on {err.code()}: {err.details()}"
    info = error_details_pb2.ErrorInfo()
    assert status.details, "the status has no details"
    assert status.details[0].Unpack(info)
    return info


# -- the cache folder -----------------------------------------------------------------------------


def big_package(folder: Path, size: int) -> tuple[str, str]:
    """A valid tar.gz package of `size` random bytes, far more than a flow-control window or
    than gRPC would buffer whole: its file:// URL and sha256."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        manifest = b'[package]\nname = "test/big"\nversion = "1.0.0"\n'
        for name, data in [("wasmer.toml", manifest), ("big.bin", os.urandom(size))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0)
    path = folder / "big.tar.gz"
    path.write_bytes(data)
    return path.as_uri(), hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def assert_cache_sound(
    root: Path, *, temp_empty: bool = True, leases_too: bool = False
) -> list[str]:
    """Every name in the cache folder is `<sha256 of its bytes>.bin`; `__temp__` is empty.

    Returns the entry names. Extra names a test planted on purpose must be removed first.
    """
    names = []
    for item in sorted(os.listdir(root)):
        path = root / item
        if item == "__temp__":
            assert path.is_dir()
            assert not path.is_symlink()
            if temp_empty:
                # Lease files (cross-replica download locks) hold no package bytes; a live
                # process may hold one, a dead one's must be gone after start-up (leases_too).
                left = [n for n in os.listdir(path) if leases_too or not n.endswith(".lease")]
                assert left == [], f"temp files survive: {left}"
            continue
        assert ENTRY.match(item), f"not an entry name in the cache: {item!r}"
        assert not path.is_symlink(), f"a symlink in the cache: {item}"
        assert path.is_file(), f"not a regular file: {item}"
        actual = sha256_file(path)
        assert actual == item[:64], f"{item} holds bytes hashing to {actual}"
        names.append(item)
    return names


def snapshot_tree(root: Path) -> dict[str, tuple[str, int, int, str]]:
    """(kind, size, mtime_ns, sha256) of everything under `root`: to prove nothing changed."""
    found: dict[str, tuple[str, int, int, str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            if path.is_symlink():
                found[str(path)] = ("link", 0, st.st_mtime_ns, os.readlink(path))
            elif path.is_dir():
                found[str(path)] = ("dir", 0, st.st_mtime_ns, "")
            else:
                found[str(path)] = ("file", st.st_size, st.st_mtime_ns, sha256_file(path))
    return found


# -- /proc figures


@dataclass(frozen=True)
class ProcStats:
    rss: int  # bytes
    hwm: int  # peak RSS, bytes
    fds: int
    threads: int
    maps: tuple[str, ...]  # file-backed mappings (paths)
    files: tuple[str, ...] = ()  # files open by descriptor (paths)

    def mapped(self, folder: Path) -> list[str]:
        return [m for m in self.maps if m.startswith(str(folder))]

    def held(self, folder: Path) -> list[str]:
        """Files of `folder` the process holds: mapped, or open (cache files are read with
        pread through a descriptor, not mapped)."""
        return self.mapped(folder) + [f for f in self.files if f.startswith(str(folder))]


def proc_stats(pid: int) -> ProcStats:
    status = Path(f"/proc/{pid}/status").read_text()

    def kib(key: str) -> int:
        match = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else 0

    found = re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)
    threads = int(found.group(1)) if found else 0
    names = os.listdir(f"/proc/{pid}/fd")
    fds = len(names)
    files = []
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("/"):
            files.append(target)
    maps = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            maps.append(parts[5])
    return ProcStats(kib("VmRSS"), kib("VmHWM"), fds, threads, tuple(maps), tuple(files))


def reset_peak_rss(pid: int) -> None:
    """Start a new VmHWM measurement (Linux ≥ 4.0: write 5 to clear_refs)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


# -- a misbehaving upstream -----------------------------------------------------------------------


@dataclass
class Seen:
    """One HTTP request the upstream received."""

    method: str
    path: str
    headers: dict[str, str]
    at: float  # time.monotonic()


@dataclass
class Conn:
    """One accepted connection, for a behaviour to answer however it likes."""

    sock: socket.socket
    request: Seen
    index: int  # 0 for the first request the upstream ever received, then 1, 2, ...
    stop: threading.Event

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def head(self, status: int, headers: dict[str, str] | None = None, reason: str = "X") -> bool:
        lines = [f"HTTP/1.1 {status} {reason}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def respond(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> bool:
        return self.head(status, {"Content-Length": str(len(body)), **(headers or {})}) and (
            self.send(body)
        )

    def reset(self) -> None:
        """Close with RST instead of FIN (SO_LINGER 0): the peer sees 'connection reset'."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.sock.close()

    def trickle(self, data: bytes, *, step: int, pause: float, limit: float) -> bool:
        """Send `data` `step` bytes at a time with `pause` between; give up after `limit` s."""
        deadline = time.monotonic() + limit
        for start in range(0, len(data), step):
            if self.stop.is_set() or time.monotonic() > deadline:
                return False
            if not self.send(data[start : start + step]):
                return False
            self.stop.wait(pause)
        return True

    def stall(self, limit: float) -> None:
        """Hold the connection open without sending, until the peer leaves or `limit` passes."""
        self.sock.settimeout(0.05)
        deadline = time.monotonic() + limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                if self.sock.recv(1) == b"":
                    return
            except TimeoutError:
                continue
            except OSError:
                return


Behaviour = Callable[[Conn], None]


class Upstream:
    """An HTTP/1.1 server on 127.0.0.1 whose every answer is written by hand, to misbehave."""

    def __init__(self, behave: Behaviour) -> None:
        self.behave = behave
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/pkg") -> str:
        return f"http://{self.authority}{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        try:
            raw = b""
            while b"\r\n\r\n" not in raw and len(raw) < 65536:
                data = sock.recv(4096)
                if not data:
                    return
                raw += data
            head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, path, _ = [*head[0].split(" "), "", ""][:3]
            headers = {}
            for line in head[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            seen = Seen(method, path, headers, time.monotonic())
            with self._lock:
                index = len(self.seen)
                self.seen.append(seen)
            self.behave(Conn(sock, seen, index, self._stop))
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def upstream() -> Iterator[Callable[[Behaviour], Upstream]]:
    """Start misbehaving upstreams on 127.0.0.1; all are closed at the end of the test."""
    started: list[Upstream] = []

    def start(behave: Behaviour) -> Upstream:
        up = Upstream(behave)
        started.append(up)
        return up

    yield start
    for up in started:
        up.close()


# -- `pkgloader serve` as a subprocess ------------------------------------------------------------


@dataclass
class Served:
    """A `pkgloader serve` process; its stderr (JSON log lines) goes to `log`."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    channel: grpc.Channel = field(repr=False)
    stub: PackageLoaderServiceStub = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> ProcStats:
        return proc_stats(self.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(20)

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines


def serve(tmp: Path, log_name: str = "serve.log", **settings: object) -> Served:
    """Start `pkgloader serve` on 127.0.0.1 port 0 with PKGLOADER_* variables from `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKGLOADER_")}
    env.update(
        {
            "PKGLOADER_LISTEN": "127.0.0.1:0",
            "PKGLOADER_FILE_ROOTS": str(FIXTURES),
            "PKGLOADER_CONNECT_TIMEOUT": "5",
            "PKGLOADER_READ_TIMEOUT": "5",
            "PKGLOADER_DOWNLOAD_TIMEOUT": "30",
            "PKGLOADER_GRACE_PERIOD": "1",
            # Loopback upstreams are refused unless allowed (SSRF guard); tests use 127.0.0.1.
            "PKGLOADER_UPSTREAM_ALLOW": "127.0.0.1",
        }
    )
    if str(settings.get("log_level", "INFO")).upper() not in ("INFO", "DEBUG"):
        # The "serving" line that names the port is INFO: pick a free port beforehand.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            settings.setdefault("listen", f"127.0.0.1:{probe.getsockname()[1]}")
    env.update({f"PKGLOADER_{k.upper()}": str(v) for k, v in settings.items()})
    fixed = int(env["PKGLOADER_LISTEN"].rsplit(":", 1)[1])
    log = tmp / log_name
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "pkgloader", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            start_new_session=True,
        )
    found = [fixed]

    def serving() -> bool:  # or dead: no use waiting any longer
        if found[0] or process.poll() is not None:
            return True
        with log.open("rb") as handle:
            for line in handle.read().splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("msg") == "serving":
                        found[0] = int(entry["port"])
        return bool(found[0])

    wait_until(serving, 30, step=0.02)
    if not found[0] or (process.poll() is not None and not fixed):
        process.kill()
        process.wait(10)
        raise AssertionError(f"pkgloader serve did not start:\n{log.read_text()[-3000:]}")
    port = found[0]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=20)
    return Served(process, port, log, channel, PackageLoaderServiceStub(channel))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start `pkgloader serve` subprocesses; any still running at the end are killed."""
    started: list[Served] = []

    def start(**settings: object) -> Served:
        settings.setdefault("cache_dir", tmp_path / "cache")
        log_name = f"serve-{len(started)}.log"
        process = serve(tmp_path, log_name, **settings)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.kill()


def load(
    stub: PackageLoaderServiceStub,
    url: str,
    sha: str,
    *,
    timeout: float = 60,
    include_content: bool = False,
    hash_validation: int = 0,
) -> tuple[pb.Package, bytes]:
    request = pb.LoadRequest(
        summary=pb.PackageSummary(dist=pb.DistributionInfo(webc_url=url, webc_sha256=sha)),
        include_content=include_content,
        hash_validation=hash_validation,
    )
    responses = list(stub.Load(request, timeout=timeout))
    return responses[0].package, b"".join(r.chunk for r in responses[1:])
