"""Downloading over HTTP(S) with httpx: headers, tokens, redirects, retries, deadlines.

Yields the *decoded* body as a stream; knows nothing of hashes or caches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus

import httpx

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
    ) -> None:
        self._client = client
        self._user_agent = user_agent
        self._tokens = dict(tokens or {})
        self._deadline = deadline
        self._guard = guard
        self._backoff = backoff

    def headers(self, url: httpx.URL) -> dict[str, str]:
        headers = {
            "Accept": "application/webc",
            "User-Agent": self._user_agent,
            "Accept-Encoding": ACCEPT_ENCODING,
        }
        # Keyed by the authority of *this* URL, so after a redirect to another host the first
        # host's token is never sent along.
        token = self._tokens.get(authority(url).lower())
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    @contextmanager
    def open(self, url: httpx.URL) -> Iterator[Iterator[bytes]]:
        deadline = time.monotonic() + self._deadline
        response = self._request(url, deadline)
        try:
            codings = parse_content_encoding(_raw_header(response, b"content-encoding"))
            yield decode(_raw_chunks(response, url, deadline), codings)
        finally:
            response.close()

    def _request(self, original: httpx.URL, deadline: float) -> httpx.Response:
        attempt = 0
        while True:
            url, retry_after = original, None
            for _ in range(MAX_REDIRECTS + 1):
                if self._guard is not None:
                    self._guard(url)
                try:
                    request = self._client.build_request("GET", url, headers=self.headers(url))
                    response = self._client.send(request, stream=True, follow_redirects=False)
                except httpx.TimeoutException:
                    error: FetchError = _unavailable(original, "timed out")
                    break
                except httpx.InvalidURL as exc:
                    # httpx builds a redirect's next request even when it does not follow it,
                    # so a Location it cannot use fails inside send(): the upstream's fault.
                    raise _bad_location(original, str(exc)) from None
                except httpx.TransportError as exc:
                    if _INVALID_LOCATION in str(exc):
                        raise _bad_location(original, str(exc)) from None
                    error = _unavailable(original, _describe(exc))
                    break
                if response.status_code in _REDIRECT_STATUS and "location" in response.headers:
                    location = response.headers["location"]
                    response.close()
                    url = _redirect_target(url, location, original)
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


def _raw_chunks(response: httpx.Response, url: httpx.URL, deadline: float) -> Iterator[bytes]:
    try:
        for chunk in response.iter_raw():
            if time.monotonic() > deadline:
                raise _unavailable(url, "the download deadline passed")
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
