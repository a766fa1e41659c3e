"""Turning request text into a URL we are willing to fetch."""

from __future__ import annotations

import functools

import httpx

from pkgloader.errors import InvalidUrl

SCHEMES = ("http", "https", "file")
MAX_URL_LENGTH = 8192  # far beyond any real package URL; keeps logs and errors bounded


@functools.lru_cache(maxsize=4096)
def parse_url(text: str) -> httpx.URL:
    """Accept absolute http(s)/file URLs only; say precisely what is wrong otherwise."""
    shown = text if len(text) <= 200 else text[:197] + "..."
    if not text:
        raise InvalidUrl("webc_url is required")
    if len(text) > MAX_URL_LENGTH:
        raise InvalidUrl(f"webc_url is longer than {MAX_URL_LENGTH} characters", url=shown)
    if text != text.strip() or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidUrl(
            f"webc_url must not contain spaces or control characters: {shown!r}", url=shown
        )
    try:
        url = httpx.URL(text)
        # httpx decodes an IDNA host (xn--...) only when `.host` is first read; a malformed
        # A-label raises there (idna.IDNAError, a ValueError), so read it inside this check.
        url.host  # noqa: B018
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidUrl(f"webc_url is not a valid URL ({exc}): {shown!r}", url=shown) from None
    if url.scheme and url.scheme not in SCHEMES:
        raise InvalidUrl(
            f"unsupported URL scheme {url.scheme!r} in {shown!r}; use http, https or file",
            url=shown,
        )
    if not url.scheme or (not url.is_absolute_url and url.scheme != "file"):
        raise InvalidUrl(f"webc_url must be an absolute URL, got {shown!r}", url=shown)
    if url.userinfo:
        # Credentials in a URL end up in logs and caches; tokens belong in PKGLOADER_TOKENS_FILE.
        raise InvalidUrl(
            "webc_url must not carry credentials (user:password@)",
            url=str(url.copy_with(username=None, password=None)),
        )
    if url.scheme != "file" and not url.host:
        raise InvalidUrl(f"webc_url has no host: {shown!r}", url=shown)
    return url


def authority(url: httpx.URL) -> str:
    """host[:port] as the reference keys tokens (the port only when the URL names one)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port is not None else host
