"""Downloading over HTTP(S) with httpx: headers, tokens, redirects, retries, deadlines.

Yields the *decoded* body as a stream; knows nothing of hashes or caches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus

import httpx

from pkgloader import traces
from pkgloader.errors import (
    FetchError,
    InvalidUrl,
    UpstreamNotFound,
    UpstreamRejected,
    UpstreamUnavailable,
)
from pkgloader.fetch.decoding import decode, parse_content_encoding
from pkgloader.fetch.urls import authority

log = logging.getLogger(__name__)

ACCEPT_ENCODING = "zstd;q=1.0, gzip;q=0.8"
MAX_REDIRECTS = 5
RETRIES = 3  # attempts after the first, for failures before any body byte arrived
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class MinRate:
    """The slowest body a download may have: at least `bytes` raw bytes in every `interval`
    seconds (from the first body byte on). Slower, and it ends UNAVAILABLE: a stalled upstream
    must not hold a download slot (and a replica's lease) until the overall deadline."""

    bytes: int
    interval: float


@dataclass
class FetchReport:
    """What the fetcher learned while fetching, for the loader (filled in as it goes)."""

    #: The server's own standing was used: an upstream token went with some request of the
    #: redirect chain (whose answer may have chosen the rest), or a file root was read.
    credentialed: bool = False


def reason_phrase(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


class HttpFetcher:
    """GETs package URLs. Every dependency comes in: the client, the tokens, the limits.

    `guard` is called with every URL about to be requested (the first and each redirect hop) and
    raises to refuse it; it is where outbound policy lives.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        user_agent: str,
        tokens: Mapping[str, str] | None = None,
        deadline: float = 900.0,
        guard: Callable[[httpx.URL], None] | None = None,
        backoff: float = 0.25,
        plaintext_token_authorities: Iterable[str] = (),
        min_rate: MinRate | None = None,
    ) -> None:
        self._min_rate = min_rate
        self._client = client
        self._user_agent = user_agent
        self._tokens = dict(tokens or {})
        self._plaintext_ok = frozenset(a.lower() for a in plaintext_token_authorities)
        self._deadline = deadline
        self._guard = guard
        self._backoff = backoff

    def token_for(self, url: httpx.URL, *, downgraded: bool = False) -> str | None:
        """The upstream token to send with a request for `url`, or None: THE rule, for every
        client that talks to upstreams with these tokens (downloads and the registry alike).

        A token goes only to the authority (host[:port], as the reference keys them) of *this*
        URL, so a redirect to another host never carries the first host's token; and only over
        https, because a bearer token on plain http is readable by anyone on the path. The one
        exception is an authority in PKGLOADER_PLAINTEXT_TOKEN_AUTHORITIES (`host:port`, port
        always written), and even then not on a hop that an https URL redirected to http
        (`downgraded`): that redirect is how a token would be lured off TLS.
        """
        token = self._tokens.get(authority(url).lower())
        if not token:
            return None
        if url.scheme == "https":
            return token
        if url.scheme == "http" and not downgraded and _host_port(url) in self._plaintext_ok:
            return token
        return None

    def headers(self, url: httpx.URL, *, downgraded: bool = False) -> dict[str, str]:
        headers = {
            "Accept": "application/webc",
            "User-Agent": self._user_agent,
            "Accept-Encoding": ACCEPT_ENCODING,
        }
        token = self.token_for(url, downgraded=downgraded)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    @contextmanager
    def open(self, url: httpx.URL, report: FetchReport | None = None) -> Iterator[Iterator[bytes]]:
        deadline = time.monotonic() + self._deadline
        response = self._request(url, deadline, report or FetchReport())
        try:
            codings = parse_content_encoding(_raw_header(response, b"content-encoding"))
            chunks = decode(_raw_chunks(response, url, deadline, self._min_rate), codings)
            if traces.on() and any(coding != "identity" for coding in codings):
                chunks = traces.spanned(traces.DECODE, chunks, {traces.CODINGS: ",".join(codings)})
            yield chunks
        finally:
            response.close()

    def _request(self, original: httpx.URL, deadline: float, report: FetchReport) -> httpx.Response:
        attempt = 0
        while True:
            url, retry_after, downgraded = original, None, False
            for _ in range(MAX_REDIRECTS + 1):
                if self._guard is not None:
                    self._guard(url)
                try:
                    headers = self.headers(url, downgraded=downgraded)
                    report.credentialed |= "Authorization" in headers
                    request = self._client.build_request("GET", url, headers=headers)
                    response = self._client.send(request, stream=True, follow_redirects=False)
                except httpx.TimeoutException:
                    error: FetchError = _unavailable(original, "timed out")
                    break
                except (httpx.InvalidURL, UnicodeError) as exc:
                    # httpx builds a redirect's next request even when it does not follow it,
                    # so a Location it cannot use fails inside send(): the upstream's fault.
                    # (UnicodeError: idna's IDNAError, for a malformed xn-- host.)
                    raise _bad_location(original, str(exc)) from None
                except httpx.TransportError as exc:
                    if _INVALID_LOCATION in str(exc):
                        raise _bad_location(original, str(exc)) from None
                    error = _unavailable(original, _describe(exc))
                    break
                if response.status_code in _REDIRECT_STATUS and "location" in response.headers:
                    location = response.headers["location"]
                    response.close()
                    target = _redirect_target(url, location, original)
                    # Once any hop left https for http, no later hop gets a token over http.
                    downgraded = downgraded or (url.scheme == "https" and target.scheme == "http")
                    url = target
                    continue
                if response.status_code < 400:
                    return response
                error = _status_error(original, response)
                retry_after = _retry_after(response)
                response.close()
                if response.status_code not in _RETRY_STATUS:
                    raise error
                break
            else:
                raise UpstreamRejected(
                    f'package download failed: GET request to "{original}" was redirected more '
                    f"than {MAX_REDIRECTS} times",
                    url=str(original),
                )
            attempt += 1
            delay = self._backoff * 2 ** (attempt - 1)
            if isinstance(error, UpstreamUnavailable) and "status" in error.metadata:
                delay = max(delay, retry_after or 0.0)
            if attempt > RETRIES or time.monotonic() + delay >= deadline:
                raise error
            log.info(
                "retrying download",
                extra={
                    "url": str(original),
                    "attempt": attempt,
                    "delay": delay,
                    "error": error.message,
                },
            )
            time.sleep(delay)


def _raw_chunks(
    response: httpx.Response, url: httpx.URL, deadline: float, min_rate: MinRate | None
) -> Iterator[bytes]:
    window_start, window_bytes = time.monotonic(), 0
    try:
        for chunk in response.iter_raw():
            now = time.monotonic()
            if now > deadline:
                raise _unavailable(url, "the download deadline passed")
            window_bytes += len(chunk)
            if min_rate is not None and now - window_start >= min_rate.interval:
                # Judged when a chunk arrives; total silence is the read timeout's to end.
                if window_bytes < min_rate.bytes:
                    raise _unavailable(
                        url,
                        f"the upstream sent {window_bytes} bytes in {now - window_start:.1f}s, "
                        f"below the minimum transfer rate of {min_rate.bytes} bytes per "
                        f"{min_rate.interval:g}s (PKGLOADER_MIN_TRANSFER_BYTES / _INTERVAL)",
                    )
                window_start, window_bytes = now, 0
            yield chunk
    except httpx.TimeoutException:
        raise _unavailable(url, "timed out while reading the body") from None
    except httpx.TransportError as exc:
        raise _unavailable(url, _describe(exc)) from None


def _redirect_target(current: httpx.URL, location: str, original: httpx.URL) -> httpx.URL:
    try:
        target = current.join(location)
    except (httpx.InvalidURL, ValueError):
        raise _bad_location(original, repr(location[:200])) from None
    try:
        target.host  # noqa: B018 - a malformed IDNA host raises only when first read
    except ValueError:
        raise _bad_location(original, repr(location[:200])) from None
    if target.scheme not in ("http", "https"):
        # Above all not file://: a redirect must never turn a download into a local read.
        raise InvalidUrl(
            f'package download failed: GET request to "{original}" was redirected to a '
            f"{target.scheme}: URL, which is refused",
            url=str(original),
        )
    return target


# httpx's wording when a Location header does not parse (it raises RemoteProtocolError).
_INVALID_LOCATION = "Invalid URL in location header"


def _bad_location(original: httpx.URL, detail: str) -> UpstreamRejected:
    return UpstreamRejected(
        f'package download failed: GET request to "{original}" was redirected to an invalid '
        f"location {detail[:200]}",
        url=str(original),
    )


def _host_port(url: httpx.URL) -> str:
    """host:port with the port always written, as PKGLOADER_PLAINTEXT_TOKEN_AUTHORITIES names
    authorities (so `http://h/` and `http://h:80/` are the same entry)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = url.port if url.port is not None else {"http": 80, "https": 443}.get(url.scheme, 0)
    return f"{host}:{port}".lower()


def _status_error(url: httpx.URL, response: httpx.Response) -> FetchError:
    status = reason_phrase(response.status_code)
    detail = status
    retry_after = response.headers.get("retry-after")
    if response.status_code == 503 and retry_after is not None:
        detail = f"{status} (Retry After: {retry_after})"
    message = (
        f'package download failed: GET request to "{url}" failed with status {status}: {detail}'
    )
    metadata = {"url": str(url), "status": str(response.status_code)}
    if response.status_code in (404, 410):
        return UpstreamNotFound(message, **metadata)
    if response.status_code < 500:
        return UpstreamRejected(message, **metadata)
    return UpstreamUnavailable(message, **metadata)


def _raw_header(response: httpx.Response, name: bytes) -> bytes | None:
    # The raw bytes: the reference refuses a non-UTF-8 Content-Encoding, which decoding would hide.
    values = [value for key, value in response.headers.raw if key.lower() == name]
    return b", ".join(values) if values else None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _unavailable(url: httpx.URL, why: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f'package download failed: GET request to "{url}" failed: {why}', url=str(url)
    )


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the connection broke off ({text})"
    if isinstance(exc, httpx.ConnectError):
        return f"could not connect ({text})"
    return text
