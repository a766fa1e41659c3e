"""Fetchers: a URL in, a stream of decoded package bytes out. They know nothing of caching."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager

import httpx

from pkgloader.fetch.file import FileFetcher
from pkgloader.fetch.http import FetchReport, HttpFetcher, MinRate
from pkgloader.fetch.urls import parse_url


class Fetchers:
    """Dispatches a URL to the fetcher for its scheme."""

    def __init__(self, http: HttpFetcher, file: FileFetcher) -> None:
        self.http = http
        self.file = file

    def open(
        self, url: httpx.URL, report: FetchReport | None = None
    ) -> AbstractContextManager[Iterator[bytes]]:
        if url.scheme == "file":
            if report is not None:
                # The server's file roots are its standing as much as a token is: a file there
                # (a hard link, say) may hold what the caller was never meant to learn.
                report.credentialed = True
            return self.file.open(url)
        return self.http.open(url, report)


__all__ = ["FetchReport", "Fetchers", "FileFetcher", "HttpFetcher", "MinRate", "parse_url"]
