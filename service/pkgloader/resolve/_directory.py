"""The directory source: folders of `<namespace>--<name>@<version>.webc` files (offline use).

The wasmer CLI's `--package-dir` naming. A file's name says which package and version it claims
to be; its own manifest gives its dependencies, commands and filesystem, and its id (the
manifest's wapm name and version, else its sha256). Its URL is `file://`, so loading it goes
through the file fetcher and its `PKGLOADER_FILE_ROOTS` check like any other file URL.

Files are parsed on first use and remembered by (path, size, mtime), so a folder that changes
while the server runs is seen as it is now.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from pkgloader import formats
from pkgloader.errors import FileOutsideRoots, InvalidPackage
from pkgloader.fetch.file import FileFetcher
from pkgloader.resolve._info import named_id, package_info
from pkgloader.resolve._semver import Version
from pkgloader.resolve._source import Candidates, Miss, QueryMiss
from pkgloader.resolve._specifier import HashSpecifier, NamedSpecifier, Specifier
from pkgloader.resolve._types import Dist, PackageId, Summary, WebcVersion

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(?P<namespace>[^/@]+?)--(?P<name>[^/@]+)@(?P<version>[^/]+)\.webc$")
_MEMO = 4096  # parsed files remembered; a folder of packages is far smaller


@dataclass(frozen=True)
class _Entry:
    name: str  # namespace/name from the file name
    version: Version
    path: Path
    url: str


@dataclass(frozen=True)
class _Listing:
    """A folder's package files as of its modification time (a stat tells whether it changed:
    adding, removing, renaming or relinking a file changes the folder's mtime)."""

    mtime_ns: int
    entries: tuple[_Entry, ...]


class DirectorySource:
    kind = "directory"

    @property
    def location(self) -> str:
        return ":".join(str(folder) for folder in self.folders)

    def __init__(self, folders: tuple[Path, ...], files: FileFetcher) -> None:
        self.folders = folders
        self._files = files
        self._memo: dict[tuple[str, int, int], Summary] = {}
        self._listings: dict[Path, _Listing] = {}
        self._real: dict[str, Path] = {}  # url → its real path, checked against the roots
        self._lock = threading.Lock()

    def query(self, specifier: Specifier) -> Candidates:
        if isinstance(specifier, HashSpecifier):
            return self._by_hash(specifier)
        if not isinstance(specifier, NamedSpecifier):
            raise QueryMiss(Miss.UNSUPPORTED)
        entries = [e for e in self._entries() if e.name == specifier.name]
        if not entries:
            raise QueryMiss(Miss.NOT_FOUND)
        matching = [e for e in entries if specifier.requirement.matches(e.version)]
        if not matching:
            raise QueryMiss(Miss.NO_MATCHES)
        # The newest file only: the resolver takes the newest anyway, and parsing every
        # version of a large folder on each query would be wasted work.
        newest = max(matching, key=lambda e: e.version)
        return Candidates((self._summary(newest),))

    def _by_hash(self, specifier: HashSpecifier) -> Candidates:
        for entry in self._entries():
            summary = self._summary(entry)
            if summary.dist.webc_sha256 == specifier.sha256:
                return Candidates((summary,))
        raise QueryMiss(Miss.NOT_FOUND)

    def _entries(self) -> list[_Entry]:
        found: list[_Entry] = []
        for folder in self.folders:
            try:
                mtime = os.stat(folder).st_mtime_ns
            except OSError as exc:
                log.warning(
                    "cannot read a package folder",
                    extra={"folder": str(folder), "error": str(exc)},
                )
                continue
            with self._lock:
                listing = self._listings.get(folder)
            if listing is None or listing.mtime_ns != mtime:
                listing = _Listing(mtime, tuple(self._list(folder)))
                with self._lock:
                    self._listings[folder] = listing
                    self._real.clear()  # a file may have been relinked elsewhere
            found.extend(listing.entries)
        return found

    @staticmethod
    def _list(folder: Path) -> list[_Entry]:
        found = []
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            log.warning(
                "cannot list a package folder", extra={"folder": str(folder), "error": str(exc)}
            )
            return []
        for file_name in names:
            match = _FILE.match(file_name)
            if match is None:
                continue
            try:
                version = Version.parse(match.group("version"))
            except ValueError:
                continue
            name = f"{match.group('namespace')}/{match.group('name')}"
            path = folder / file_name
            found.append(_Entry(name, version, path, path.absolute().as_uri()))
        return found

    def _summary(self, entry: _Entry) -> Summary:
        # The same rule as for any file:// URL: nothing outside PKGLOADER_FILE_ROOTS is read.
        # The verdict is kept until the folder changes (refusals are never kept); loading the
        # node later checks its URL again in the file fetcher.
        with self._lock:
            real = self._real.get(entry.url)
        if real is None:
            try:
                real = self._files.resolve(httpx.URL(entry.url))
            except FileOutsideRoots as exc:
                raise FileOutsideRoots(
                    f"package folder file {entry.path} is outside PKGLOADER_FILE_ROOTS: "
                    f"{exc.message}",
                    url=entry.url,
                ) from None
            with self._lock:
                if len(self._real) >= _MEMO:
                    self._real.clear()
                self._real[entry.url] = real
        stat = real.stat()
        key = (str(real), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._memo.get(key)
        if cached is not None:
            return cached
        summary = _read(real, entry.url)
        with self._lock:
            if len(self._memo) >= _MEMO:
                self._memo.clear()
            self._memo[key] = summary
        return summary


def _read(path: Path, url: str) -> Summary:
    """PackageSummary::from_webc_file: the file's hash, its manifest, a file:// URL."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
    sha256 = digest.hexdigest()
    try:
        with formats.open_package(path) as container:
            manifest = container.manifest.raw
            version = WebcVersion.of_format(container.format)
    except formats.FormatError as exc:
        raise InvalidPackage(f"not a valid package ({url}): {exc}", url=url) from None
    where = f'"{path}"'
    id = named_id(manifest, where) or PackageId.hashed(sha256)
    return Summary(
        package_info(id, manifest, version, where),
        Dist(webc_url=url, webc_sha256=sha256, webc_size=path.stat().st_size),
    )
