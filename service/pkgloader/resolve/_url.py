"""The sources that go through the loader: a URL specifier, and a hash the cache holds.

`UrlSource` downloads a URL specifier with `PackageLoader.load_url` (no expected hash: the
computed sha256 names it in the cache) and reads its manifest. `CacheSource` answers a
`sha256:` specifier from the memory or disk cache without any network; its node's dist has an
empty `webc_url`, since a cached package's origin is not recorded (loading it by hash finds it).
"""

from __future__ import annotations

from pkgloader.loader import PackageLoader, StoredPackage
from pkgloader.resolve._info import named_id, package_info
from pkgloader.resolve._source import Candidates, Miss, QueryMiss
from pkgloader.resolve._specifier import HashSpecifier, Specifier, UrlSpecifier
from pkgloader.resolve._types import Dist, PackageId, Summary, WebcVersion


def summary_of(package: StoredPackage, url: str) -> Summary:
    """A loaded package's summary: its wapm name and version, else its sha256, as its id."""
    container = package.container
    manifest = container.manifest.raw
    where = f'"{url or package.hash.hex}"'
    id = named_id(manifest, where) or PackageId.hashed(package.hash.hex)
    return Summary(
        package_info(id, manifest, WebcVersion.of_format(container.format), where),
        Dist(webc_url=url, webc_sha256=package.hash.hex, webc_size=package.size),
    )


class UrlSource:
    kind = "url"
    location = ""  # any URL a specifier names, through the loader

    def __init__(self, loader: PackageLoader, *, timeout: float = 900.0) -> None:
        self._loader = loader
        self._timeout = timeout

    def query(self, specifier: Specifier) -> Candidates:
        if not isinstance(specifier, UrlSpecifier):
            raise QueryMiss(Miss.UNSUPPORTED)
        result = self._loader.load_url(specifier.url, timeout=self._timeout)
        return Candidates((summary_of(result.package, specifier.url),))


class CacheSource:
    kind = "cache"
    location = ""  # the loader's memory and disk tiers, for sha256: specifiers

    def __init__(self, loader: PackageLoader) -> None:
        self._loader = loader

    def query(self, specifier: Specifier) -> Candidates:
        if not isinstance(specifier, HashSpecifier):
            raise QueryMiss(Miss.UNSUPPORTED)
        found = self._loader.cached(specifier.sha256)
        if found is None:
            raise QueryMiss(Miss.NOT_FOUND)
        return Candidates((summary_of(found[0], ""),))
