"""Shared test parts: the real fixture packages, a real server on 127.0.0.1 port 0, a real HTTP
upstream on loopback (pytest-httpserver), real temp folders."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from pkgloader import app as app_module
from pkgloader.loader import LoaderEvents
from pkgloader.settings import Settings
from pkgloader_client import PackageLoaderServiceStub, pb

REPO = Path(__file__).resolve().parents[1]
FIXTURES = (REPO.parent / "shared" / "fixtures" / "packages").resolve()


@dataclass(frozen=True)
class Fixture:
    name: str
    path: Path
    sha256: str
    size: int
    format: str

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def url(self) -> str:
        return self.path.as_uri()


def _fixture(name: str, sha256: str, size: int, fmt: str) -> Fixture:
    return Fixture(name, FIXTURES / name, sha256, size, fmt)


HELLO = _fixture(
    "hello-0.1.0-665d2ddc-80e6-4845-85d3-4587b1693bb7.webc",
    "da74f27c90ad4af24a6d69a1cdc521313fa64176abd3f3c200c730048e0fa94e",
    2645,
    "webc-v1",
)
DASH = _fixture(
    "dash-1.0.18-f0d13233-bcda-4cf1-9a23-3460bffaae2a.webc",
    "8f65a4da88e86935c3a0214bde050bb59b774cbf700f4d68a87948170385b323",
    335946,
    "webc-v1",
)
WABT = _fixture(
    "wabt-1.0.37.wasmer",
    "0f41d38dcfb5abc1fadb5e9acbc5c645e53fe4d0dd86270b72a09bfeee04d055",
    3432357,
    "webc-v1",
)
STATIC = _fixture(
    "wasmer-tests--volume-static-webserver@0.1.0.webc",
    "dea35a11ab6e49af2496534c50b064df7deab8d21cbf4355c9ae1f105dd0b427",
    4634,
    "webc-v3",
)
COWSAY = _fixture(
    "cowsay-0.3.0.tar.gz",
    "64ce7f6a3cd190afb628bc817a2188e4c030ea12a25f417f391444ae9c895c97",
    351908,
    "tarball",
)
ALL = (HELLO, DASH, WABT, STATIC, COWSAY)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll `check` until it holds or `timeout` seconds pass. Returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


class Waiters(LoaderEvents):
    """Counts the Loads waiting on a download (the loader's public events hook), passing every
    event on to the events object it replaces (the metrics)."""

    def __init__(self, inner: LoaderEvents) -> None:
        self._inner = inner
        self._count = 0
        self._changed = threading.Condition()

    def waiting(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()
        self._inner.waiting()

    def downloaded(self, size: int, seconds: float, ok: bool) -> None:
        self._inner.downloaded(size, seconds, ok)

    def hash_mismatch(self) -> None:
        self._inner.hash_mismatch()

    def flights(self, count: int) -> None:
        self._inner.flights(count)

    def wait_for(self, count: int, timeout: float = 30) -> bool:
        """Block until `count` Loads wait on downloads; False if it did not happen in time."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count >= count, timeout)

    @classmethod
    def install(cls, server: Running) -> Waiters:
        waiters = cls(server.app.loader.events)
        server.app.loader.events = waiters
        return waiters


@pytest.fixture(scope="session", autouse=True)
def _fixtures_present() -> None:
    missing = [f.name for f in ALL if not f.path.is_file()]
    assert not missing, f"fixture packages missing from {FIXTURES}: {missing}"


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    return ("127.0.0.1", 0)


def test_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        listen="127.0.0.1:0",
        cache_dir=tmp_path / "cache",
        file_roots=(FIXTURES, tmp_path / "files"),
        upstream_allow=("127.0.0.1",),
        memory_cache_bytes=64 * 1024 * 1024,
        workers=16,
        connect_timeout=5.0,
        read_timeout=5.0,
        download_timeout=30.0,
    )
    (tmp_path / "files").mkdir(exist_ok=True)
    return dataclasses.replace(base, **overrides)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@dataclass
class Running:
    app: app_module.App
    server: grpc.Server
    port: int
    channel: grpc.Channel
    stub: PackageLoaderServiceStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def load(self, url: str, sha: str, **kwargs: Any) -> tuple[pb.Package, bytes]:
        """Load and return (package, content bytes)."""
        responses = list(self.stub.Load(load_request(url, sha, **kwargs), timeout=60))
        assert responses[0].WhichOneof("item") == "package"
        assert all(r.WhichOneof("item") == "chunk" for r in responses[1:])
        return responses[0].package, b"".join(r.chunk for r in responses[1:])


def load_request(
    url: str,
    sha: str,
    *,
    include_content: bool = False,
    hash_validation: int = 0,
    package_id: str = "",
    size: int | None = None,
) -> pb.LoadRequest:
    dist = pb.DistributionInfo(webc_url=url, webc_sha256=sha)
    if size is not None:
        dist.webc_size = size
    return pb.LoadRequest(
        summary=pb.PackageSummary(package_id=package_id, dist=dist),
        include_content=include_content,
        hash_validation=hash_validation,
    )


@contextmanager
def running(settings: Settings) -> Iterator[Running]:
    app = app_module.build(settings)
    server, port = app_module.create_server(app)
    server.start()
    app_module.set_serving(app, True)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(app, server, port, channel, PackageLoaderServiceStub(channel))
    finally:
        channel.close()
        server.stop(None).wait()
        app.close()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start a real server with test settings (overridable); stopped at the end of the test."""
    stack: list[Any] = []

    def start(**overrides: Any) -> Running:
        cm = running(test_settings(tmp_path, **overrides))
        stack.append(cm)
        return cm.__enter__()

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def server(make_server: Callable[..., Running]) -> Running:
    return make_server()
