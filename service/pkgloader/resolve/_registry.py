"""The registry source: the Wasmer registry's GraphQL API (wasmer's `BackendSource`, doc §9a).

One POST per package name answers every version with its distributions and manifests, so
resolving downloads no package. The registry is an upstream like any other: its URL is checked
by the same outbound policy (`PKGLOADER_UPSTREAM_ALLOW`) and requested through the same guarded
HTTP client as downloads, and its bearer token comes from the download fetcher's own header
method, so the tokens file's rules (which authorities, https only unless allowed) hold for it
unchanged.

Answers are kept per name for `ttl` seconds (bounded in number). When the registry cannot be
reached, an expired answer is served with a warning rather than failing; with nothing cached
the query fails with `RegistryUnavailable`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from pkgloader.errors import (
    InvalidHash,
    InvalidPackage,
    InvalidUrl,
    RegistryRejected,
    RegistryUnavailable,
)
from pkgloader.fetch.http import reason_phrase
from pkgloader.hashes import WebcHash
from pkgloader.resolve._info import manifest_from_json, package_info
from pkgloader.resolve._semver import Version
from pkgloader.resolve._source import Candidates, Miss, QueryMiss
from pkgloader.resolve._specifier import HashSpecifier, NamedSpecifier, Specifier
from pkgloader.resolve._types import Dist, PackageId, Summary, WebcVersion

log = logging.getLogger(__name__)

PUBLIC_REGISTRY = "https://registry.wasmer.io/graphql"

# wasmer's WASMER_WEBC_QUERY_ALL and WASMER_WEBC_QUERY_BY_HASH, as the reference sends them: the
# name (or hash) is substituted into the text, no GraphQL variables. Both are checked to hold
# only characters that cannot end the string (parse_specifier's name pattern; hex).
QUERY_BY_NAME = """{
    getPackage(name: "$NAME") {
        packageName
        namespace
        versions {
          version
          isArchived
          v2: distribution(version: V2) {
            piritaDownloadUrl
            piritaSha256Hash
            webcManifest
          }
          v3: distribution(version: V3) {
            piritaDownloadUrl
            piritaSha256Hash
            webcManifest
          }
        }
    }
    info {
        defaultFrontend
    }
}"""

QUERY_BY_HASH = """{
    getPackageRelease(hash: "$HASH") {
        piritaManifest
        isArchived
        webcUrl
    }
}"""

MAX_RESPONSE = 32 * 1024 * 1024  # a package with many versions is a few MiB of manifests
MAX_CACHED = 1024  # names (and hashes) whose answers are kept
#: Reply bytes kept in all (least recently used dropped first): a typical answer is a few KiB,
#: so this holds every name of any real tree, while a registry of huge answers cannot make the
#: cache grow past it.
MAX_CACHED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class _Answer:
    data: Any  # the reply's `data` object
    at: float  # time.monotonic() when it arrived
    size: int  # the reply's length in bytes, counted against MAX_CACHED_BYTES


class RegistrySource:
    kind = "registry"

    @property
    def location(self) -> str:
        # Scheme, authority and path: a query string may carry a key, and tokens never go here.
        return str(self.url.copy_with(query=None, fragment=None))

    def __init__(
        self,
        url: str,
        client: httpx.Client,
        *,
        user_agent: str,
        auth_headers: Callable[[httpx.URL], Mapping[str, str]] | None = None,
        guard: Callable[[httpx.URL], None] | None = None,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = httpx.URL(url)
        if self.url.scheme not in ("http", "https") or not self.url.host:
            raise InvalidUrl(f"the registry URL must be an http(s) URL, got {url!r}", url=url)
        self._client = client
        self._user_agent = user_agent
        self._auth_headers = auth_headers
        self._guard = guard
        self.ttl = ttl
        self._clock = clock
        self._cache: OrderedDict[str, _Answer] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        #: Unix time the registry last answered a query itself (a stale answer from the cache
        #: does not count): what `/status` shows for it.
        self.last_success: float | None = None

    # -- Source -------------------------------------------------------------------------------

    def query(self, specifier: Specifier) -> Candidates:
        if isinstance(specifier, HashSpecifier):
            return self._query_hash(specifier)
        if not isinstance(specifier, NamedSpecifier):
            raise QueryMiss(Miss.UNSUPPORTED)
        data, warning = self._ask(
            f"name:{specifier.name}", QUERY_BY_NAME.replace("$NAME", specifier.name), specifier.name
        )
        package = data.get("getPackage") if isinstance(data, dict) else None
        if package is None:
            raise QueryMiss(Miss.NOT_FOUND)
        summaries, archived = _matching(package, specifier, str(self.url))
        if not summaries:
            raise QueryMiss(Miss.NO_MATCHES, archived)
        return Candidates(tuple(summaries), (warning,) if warning else ())

    def _query_hash(self, specifier: HashSpecifier) -> Candidates:
        data, warning = self._ask(
            f"hash:{specifier.sha256}",
            QUERY_BY_HASH.replace("$HASH", specifier.sha256),
            str(specifier),
        )
        release = data.get("getPackageRelease") if isinstance(data, dict) else None
        if release is None:
            raise QueryMiss(Miss.NOT_FOUND)
        where = f"the registry's release {specifier}"
        if not isinstance(release, dict) or not isinstance(release.get("webcUrl"), str):
            raise RegistryUnavailable(f"{where} has no webcUrl", url=str(self.url))
        manifest = _manifest_text(release.get("piritaManifest"), where)
        info = package_info(PackageId.hashed(specifier.sha256), manifest, WebcVersion.V3, where)
        dist = Dist(webc_url=release["webcUrl"], webc_sha256=specifier.sha256)
        return Candidates((Summary(info, dist),), (warning,) if warning else ())

    # -- talking to the registry --------------------------------------------------------------

    def _ask(self, key: str, query: str, what: str) -> tuple[Any, str]:
        """The reply's `data` for `query`, from the cache while fresh; ("", …) no warning."""
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None and now - cached.at <= self.ttl:
            return cached.data, ""
        try:
            data, size = self._post(query, what)
            self.last_success = time.time()
        except RegistryUnavailable as exc:
            if cached is None:
                raise
            age = now - cached.at
            warning = (
                f'the registry at "{self.url}" is unavailable ({exc.message}); using its answer '
                f'for "{what}" from {age:.0f}s ago'
            )
            log.warning(
                "serving a stale registry answer", extra={"package": what, "error": exc.message}
            )
            return cached.data, warning
        with self._lock:
            previous = self._cache.pop(key, None)
            if previous is not None:
                self._cached_bytes -= previous.size
            self._cache[key] = _Answer(data, self._clock(), size)
            self._cached_bytes += size
            while len(self._cache) > MAX_CACHED or self._cached_bytes > MAX_CACHED_BYTES:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= dropped.size
        return data, ""

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": self._user_agent}
        if self._auth_headers is not None:
            # Only the token: the download fetcher's Accept/Accept-Encoding are for packages.
            authorization = self._auth_headers(self.url).get("Authorization")
            if authorization:
                headers["Authorization"] = authorization
        return headers

    def _post(self, query: str, what: str) -> tuple[Any, int]:
        """The reply's `data` object and the reply's size in bytes."""
        url = self.url
        if self._guard is not None:
            self._guard(url)
        body = json.dumps({"query": query}).encode()
        try:
            request = self._client.build_request("POST", url, content=body, headers=self._headers())
            response = self._client.send(request, stream=True, follow_redirects=False)
        except httpx.TimeoutException:
            raise _unavailable(url, what, "timed out") from None
        except httpx.TransportError as exc:
            raise _unavailable(url, what, str(exc) or type(exc).__name__) from None
        try:
            status = response.status_code
            if status >= 500 or status == 429:
                raise _unavailable(url, what, f'"{url}" replied with {reason_phrase(status)}')
            if not 200 <= status < 300:
                raise RegistryRejected(
                    f'Unable to query the registry for "{what}": "{url}" replied with '
                    f"{reason_phrase(status)}",
                    url=str(url),
                    status=str(status),
                )
            raw = bytearray()
            try:
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_RESPONSE:
                        raise _unavailable(
                            url, what, f"the reply is larger than {MAX_RESPONSE} bytes"
                        )
            except httpx.TransportError as exc:
                raise _unavailable(url, what, str(exc) or type(exc).__name__) from None
        finally:
            response.close()
        try:
            reply = json.loads(raw)
        # json's C scanner raises RecursionError (not a ValueError) on deep nesting; it has
        # unwound by then, so a reply nested too deep is just one more malformed reply.
        except (ValueError, RecursionError):
            raise _unavailable(url, what, "Unable to deserialize the response") from None
        if not isinstance(reply, dict):
            raise _unavailable(url, what, "Unable to deserialize the response")
        data = reply.get("data")
        if data is None and reply.get("errors"):
            errors = reply["errors"]
            first = errors[0] if isinstance(errors, list) and errors else errors
            detail = first.get("message") if isinstance(first, dict) else first
            raise RegistryRejected(
                f'Unable to query the registry for "{what}": {str(detail)[:500]}', url=str(url)
            )
        if not isinstance(data, dict):
            raise _unavailable(url, what, "Unable to deserialize the response")
        return data, len(raw)


def _unavailable(url: httpx.URL, what: str, why: str) -> RegistryUnavailable:
    return RegistryUnavailable(f'Unable to query the registry for "{what}": {why}', url=str(url))


def _manifest_text(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, str):
        raise InvalidPackage(f"{where}: missing Manifest")
    return manifest_from_json(value, where)


def _matching(
    package: Any, specifier: NamedSpecifier, registry: str
) -> tuple[list[Summary], list[str]]:
    """wasmer's `matching_package_summaries`: unparsable versions and versions whose metadata
    does not decode are skipped (logged); archived ones are skipped and remembered."""
    if not isinstance(package, dict):
        raise RegistryUnavailable(f"the registry's answer for {specifier.name} is malformed")
    namespace, name = package.get("namespace"), package.get("packageName")
    full_name = f"{namespace}/{name}" if namespace else str(name)
    summaries: list[Summary] = []
    archived: list[str] = []
    for entry in package.get("versions") or ():
        if not isinstance(entry, dict):
            continue
        try:
            version = Version.parse(str(entry.get("version")))
        except ValueError:
            log.debug("skipping a version that does not parse", extra={"package": full_name})
            continue
        if entry.get("isArchived"):
            if specifier.requirement.matches(version):
                archived.append(str(version))
            continue
        if not specifier.requirement.matches(version):
            continue
        try:
            summaries.append(_decode_summary(full_name, version, entry))
        except (InvalidPackage, InvalidHash, ValueError) as exc:
            log.debug(
                "skipping a version whose metadata does not decode",
                extra={"package": full_name, "version": str(version), "error": str(exc)},
            )
    return summaries, archived


def _decode_summary(full_name: str, version: Version, entry: dict[str, Any]) -> Summary:
    """The v3 distribution when the registry has one, else v2 (wasmer prefers V3)."""
    id = PackageId.named(full_name, str(version))
    where = f'"{id}" in the registry'
    for key, webc_version in (("v3", WebcVersion.V3), ("v2", WebcVersion.V2)):
        dist = entry.get(key)
        if not isinstance(dist, dict):
            continue
        url, sha256, text = (
            dist.get("piritaDownloadUrl"),
            dist.get("piritaSha256Hash"),
            dist.get("webcManifest"),
        )
        if not (isinstance(url, str) and isinstance(sha256, str) and isinstance(text, str)):
            continue
        manifest = manifest_from_json(text, where)
        return Summary(
            package_info(id, manifest, webc_version, where),
            Dist(webc_url=url, webc_sha256=WebcHash.parse(sha256).hex),
        )
    raise InvalidPackage(f"{where}: no distribution with a download URL, sha256 and manifest")
