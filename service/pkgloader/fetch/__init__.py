"""Fetchers: a URL in, a stream of decoded package bytes out. They know nothing of caching."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager

import httpx

from pkgloader.fetch.file import FileFetcher
from pkgloader.fetch.http import HttpFetcher
from pkgloader.fetch.urls import parse_url


class Fetchers:
    """Dispatches a URL to the fetcher for its scheme."""

    def __init__(self, http: HttpFetcher, file: FileFetcher) -> None:
        self.http = http
        self.file = file

    def open(self, url: httpx.URL) -> AbstractContextManager[Iterator[bytes]]:
        if url.scheme == "file":
            return self.file.open(url)
        return self.http.open(url)


__all__ = ["Fetchers", "FileFetcher", "HttpFetcher", "parse_url"]
