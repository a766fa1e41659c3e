"""The loader's contract, held by every cache layout: the same tests run on a `PackageLoader` built
by the production wiring (`app.build`) for memory only, disk only, both tiers, and a memory tier
too small to hold anything (BuildGrid's storage-contract pattern). No gRPC: a bug here fails as
the loader's own error, not as a status code. Upstream is a real HTTP server on loopback."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pkgloader import app as app_module
from pkgloader.errors import (
    FileOutsideRoots,
    HashMismatch,
    InvalidPackage,
    PackageTooLarge,
    UpstreamNotFound,
)
from pkgloader.loader import LoadRequest, LoadResult, PackageLoader
from pkgloader.policy import CallerRole, HashPolicy, Source
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.conftest import COWSAY, DASH, HELLO, STATIC, Fixture, test_settings, wait_until


@dataclass(frozen=True)
class Tiers:
    """One cache layout: a disk folder or none, and the memory tier's budget in bytes."""

    name: str
    disk: bool
    memory_bytes: int

    @property
    def keeps(self) -> Source:
        """Where a second Load of a package that fits finds it."""
        if self.memory_bytes > 1024 * 1024:
            return Source.MEMORY
        return Source.DISK if self.disk else Source.DOWNLOAD


TIERS = [
    Tiers("memory-only", disk=False, memory_bytes=64 << 20),
    Tiers("disk-only", disk=True, memory_bytes=0),
    Tiers("both", disk=True, memory_bytes=64 << 20),
    # BuildGrid's smallest case: a memory tier that admits nothing (and no disk behind it).
    Tiers("memory-too-small", disk=False, memory_bytes=8),
]


@pytest.fixture(params=TIERS, ids=[t.name for t in TIERS])
def tiers(request: pytest.FixtureRequest) -> Tiers:
    return request.param


@pytest.fixture
def make_loader(tmp_path: Path, tiers: Tiers) -> Iterator[Callable[..., PackageLoader]]:
    """Build the app as production does for `tiers` (settings overridable); closed at the end."""
    apps: list[app_module.App] = []

    def build(**overrides: Any) -> PackageLoader:
        settings = test_settings(
            tmp_path,
            cache_dir=tmp_path / "cache" if tiers.disk else None,
            memory_cache_bytes=tiers.memory_bytes,
        )
        app = app_module.build(dataclasses.replace(settings, **overrides))
        apps.append(app)
        return app.loader

    yield build
    for app in apps:
        app.close()


@pytest.fixture
def loader(make_loader: Callable[..., PackageLoader]) -> PackageLoader:
    return make_loader()


def serve(httpserver: HTTPServer, fixture: Fixture, path: str | None = None) -> str:
    path = path or f"/{fixture.name}"
    httpserver.expect_request(path).respond_with_data(fixture.data)
    return httpserver.url_for(path)


def requests_for(httpserver: HTTPServer, path: str) -> int:
    return sum(1 for request, _ in httpserver.log if request.path == path)


def content(result: LoadResult) -> bytes:
    return b"".join(bytes(chunk) for chunk in result.package.chunks())


def is_stored(loader: PackageLoader, sha: str) -> bool:
    """Whether either tier holds `sha` (without loading it)."""
    in_disk = loader.disk is not None and any(e.hash.hex == sha for e in loader.disk.entries())
    return in_disk or sha in loader.memory


def test_a_first_load_downloads_parses_and_returns_the_bytes(
    loader: PackageLoader, httpserver: HTTPServer
) -> None:
    """A miss in every tier downloads: the result is the parsed package with exactly the
    upstream's bytes, reported as a download."""
    url = serve(httpserver, DASH)
    result = loader.load(LoadRequest(url, DASH.sha256))
    assert result.source is Source.DOWNLOAD
    assert result.warnings == []
    assert result.package.hash.hex == DASH.sha256
    assert result.package.size == DASH.size
    assert result.package.container.format == DASH.format
    assert content(result) == DASH.data


def test_a_second_load_is_served_from_the_tier_that_keeps_it(
    loader: PackageLoader, tiers: Tiers, httpserver: HTTPServer
) -> None:
    """Memory before disk before a download: the second Load of a package is found where the
    layout keeps it, and goes upstream again only when nothing could keep it."""
    url = serve(httpserver, COWSAY)
    loader.load(LoadRequest(url, COWSAY.sha256))
    again = loader.load(LoadRequest(url, COWSAY.sha256))
    assert again.source is tiers.keeps
    assert content(again) == COWSAY.data
    expected = 2 if tiers.keeps is Source.DOWNLOAD else 1
    assert requests_for(httpserver, f"/{COWSAY.name}") == expected


def test_a_package_dropped_from_memory_comes_from_disk_and_is_promoted(
    loader: PackageLoader, tiers: Tiers, httpserver: HTTPServer
) -> None:
    """With the memory entry gone, disk answers before any download, and a disk hit is
    admitted to memory when the memory tier can hold it."""
    url = serve(httpserver, HELLO)
    loader.load(LoadRequest(url, HELLO.sha256))
    loader.memory.remove(HELLO.sha256)
    after_eviction = loader.load(LoadRequest(url, HELLO.sha256)).source
    promoted = loader.load(LoadRequest(url, HELLO.sha256)).source
    if tiers.disk:
        assert after_eviction is Source.DISK
        assert promoted is (Source.MEMORY if loader.memory.admits(HELLO.size) else Source.DISK)
        assert requests_for(httpserver, f"/{HELLO.name}") == 1
    else:
        # Without a disk, the evicted package is downloaded again, then kept if it fits.
        assert after_eviction is Source.DOWNLOAD
        fits = loader.memory.admits(HELLO.size)
        assert promoted is (Source.MEMORY if fits else Source.DOWNLOAD)
        assert requests_for(httpserver, f"/{HELLO.name}") == (2 if fits else 3)


def test_concurrent_loads_of_one_package_share_one_download(
    loader: PackageLoader, httpserver: HTTPServer
) -> None:
    """Single flight: Loads that arrive while a download runs wait for it; upstream sees one
    request and every caller gets the package."""
    release = threading.Event()

    def slow(request: Request) -> Response:
        release.wait(30)
        return Response(DASH.data)

    httpserver.expect_request("/slow").respond_with_handler(slow)
    url = httpserver.url_for("/slow")
    results: list[LoadResult] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            results.append(loader.load(LoadRequest(url, DASH.sha256), timeout=30))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: loader.waiting == 4, timeout=30)
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
    assert errors == []
    assert [r.package.hash.hex for r in results] == [DASH.sha256] * 4
    assert len({id(r.package) for r in results}) == 1
    assert requests_for(httpserver, "/slow") == 1


def test_a_hash_mismatch_fails_by_default_and_is_never_cached(
    loader: PackageLoader, httpserver: HTTPServer
) -> None:
    """FAIL (the default): HashMismatch names both hashes; the bytes are kept in no tier, so the
    next Load goes upstream again."""
    url = serve(httpserver, HELLO, "/renamed")
    with pytest.raises(HashMismatch) as caught:
        loader.load(LoadRequest(url, STATIC.sha256))
    assert caught.value.expected == STATIC.sha256
    assert caught.value.actual == HELLO.sha256
    assert caught.value.metadata["actual_sha256"] == HELLO.sha256
    assert not is_stored(loader, STATIC.sha256)
    assert not is_stored(loader, HELLO.sha256)
    with pytest.raises(HashMismatch):
        loader.load(LoadRequest(url, STATIC.sha256))
    assert requests_for(httpserver, "/renamed") == 2


@pytest.mark.parametrize(("policy", "warned"), [(HashPolicy.WARN, True), (HashPolicy.NONE, False)])
def test_warn_and_none_serve_mismatching_content_without_caching_it(
    loader: PackageLoader, httpserver: HTTPServer, policy: HashPolicy, warned: bool
) -> None:
    """WARN returns the content with a warning, NONE silently; either way it is not stored
    under the expected name nor under its own."""
    url = serve(httpserver, HELLO, "/renamed")
    result = loader.load(LoadRequest(url, STATIC.sha256, policy=policy))
    assert content(result) == HELLO.data
    assert bool(result.warnings) is warned
    if warned:
        assert HELLO.sha256.upper() in result.warnings[0]
    assert not is_stored(loader, STATIC.sha256)
    assert not is_stored(loader, HELLO.sha256)


def test_a_reader_never_gets_mismatching_content_read_with_the_servers_standing(
    loader: PackageLoader,
) -> None:
    """A file root is the server's standing: a READER asking for a file under a wrong hash is
    refused even under NONE, and not told the file's real hash."""
    request = LoadRequest(HELLO.url, STATIC.sha256, policy=HashPolicy.NONE, role=CallerRole.READER)
    with pytest.raises(HashMismatch) as caught:
        loader.load(request)
    assert caught.value.actual is None
    assert "actual_sha256" not in caught.value.metadata
    assert HELLO.sha256.upper() not in caught.value.message
    # An admin asking the same is served (the policy applies).
    admin = loader.load(dataclasses.replace(request, role=CallerRole.ADMIN))
    assert content(admin) == HELLO.data


def test_bytes_that_do_not_parse_fail_before_success_and_are_not_stored(
    loader: PackageLoader, httpserver: HTTPServer
) -> None:
    """A package is parsed before any Load reports success: bytes with the right hash that are
    no package raise InvalidPackage and are kept in no tier."""
    junk = b"not a package at all" * 100
    junk_sha = hashlib.sha256(junk).hexdigest()
    httpserver.expect_request("/junk").respond_with_data(junk)
    with pytest.raises(InvalidPackage):
        loader.load(LoadRequest(httpserver.url_for("/junk"), junk_sha))
    assert not is_stored(loader, junk_sha)
    assert loader.cached(junk_sha) is None


def test_a_body_over_the_size_limit_fails_and_leaves_nothing(
    make_loader: Callable[..., PackageLoader], httpserver: HTTPServer
) -> None:
    """max_package_bytes bounds the decoded body: PackageTooLarge, nothing stored, no temp file
    left in the cache folder."""
    loader = make_loader(max_package_bytes=DASH.size - 1)
    url = serve(httpserver, DASH)
    with pytest.raises(PackageTooLarge):
        loader.load(LoadRequest(url, DASH.sha256))
    assert not is_stored(loader, DASH.sha256)
    if loader.disk is not None:
        assert [p.name for p in loader.disk.temp.iterdir() if p.suffix == ".part"] == []


def test_a_size_hint_over_the_limit_fails_without_a_request(
    make_loader: Callable[..., PackageLoader], httpserver: HTTPServer
) -> None:
    """A declared size over the limit is refused before anything is fetched."""
    loader = make_loader(max_package_bytes=1000)
    url = serve(httpserver, DASH)
    with pytest.raises(PackageTooLarge):
        loader.load(LoadRequest(url, DASH.sha256, size_hint=DASH.size))
    assert requests_for(httpserver, f"/{DASH.name}") == 0


def test_an_upstream_404_is_not_found_and_stores_nothing(
    loader: PackageLoader, httpserver: HTTPServer
) -> None:
    """An upstream error reaches the caller as the fetch layer's error, with nothing stored."""
    httpserver.expect_request("/missing").respond_with_data("no", status=404)
    with pytest.raises(UpstreamNotFound):
        loader.load(LoadRequest(httpserver.url_for("/missing"), HELLO.sha256))
    assert not is_stored(loader, HELLO.sha256)


def test_a_file_url_outside_the_roots_is_refused_even_when_cached(
    loader: PackageLoader, httpserver: HTTPServer, tmp_path: Path
) -> None:
    """The file-root check runs before the cache lookup: a cached hash does not make a forbidden
    path readable."""
    loader.load(LoadRequest(serve(httpserver, HELLO), HELLO.sha256))
    outside = tmp_path / "outside.webc"
    outside.write_bytes(HELLO.data)
    with pytest.raises(FileOutsideRoots):
        loader.load(LoadRequest(outside.as_uri(), HELLO.sha256))


def test_load_url_names_the_package_by_its_hash_and_keeps_it(
    loader: PackageLoader, tiers: Tiers, httpserver: HTTPServer
) -> None:
    """load_url: no expected hash; the computed sha256 names the package, which is then kept
    (and found by `cached`) where the layout keeps packages."""
    result = loader.load_url(serve(httpserver, STATIC), timeout=30)
    assert result.package.hash.hex == STATIC.sha256
    assert content(result) == STATIC.data
    found = loader.cached(STATIC.sha256)
    if tiers.keeps is Source.DOWNLOAD:
        assert found is None
    else:
        assert found is not None
        assert found[1] is tiers.keeps
        assert found[0].hash.hex == STATIC.sha256


def test_load_url_of_bytes_that_do_not_parse_fails(
    loader: PackageLoader, httpserver: HTTPServer
) -> None:
    """load_url parses before success too: junk is InvalidPackage and is not stored."""
    junk = b"\x00junk" * 64
    httpserver.expect_request("/junk").respond_with_data(junk)
    with pytest.raises(InvalidPackage):
        loader.load_url(httpserver.url_for("/junk"), timeout=30)
    assert not is_stored(loader, hashlib.sha256(junk).hexdigest())


def test_cached_never_downloads(loader: PackageLoader, httpserver: HTTPServer) -> None:
    """`cached` answers from the tiers only: None on a miss, without a request upstream."""
    serve(httpserver, HELLO)
    assert loader.cached(HELLO.sha256) is None
    assert httpserver.log == []
