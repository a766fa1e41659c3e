"""Reading `file://` URLs, only beneath configured roots.

A network service must not become a way to read its own disk: the path is resolved (symlinks,
`..`, percent-encodings) before it is compared with the roots, and only regular files are read.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

import httpx

from pkgloader.errors import FileOutsideRoots, InvalidUrl, UpstreamNotFound, UpstreamUnavailable

CHUNK = 1024 * 1024


class FileFetcher:
    def __init__(self, roots: tuple[Path, ...]) -> None:
        self._roots = tuple(Path(os.path.realpath(root)) for root in roots)
        # Verdicts for the cheap check before a cache lookup, by the URL's text (an httpx.URL
        # key rebuilds its text to hash it, on every warm Load); reading resolves afresh.
        self._allowed: Callable[[str], Path] = functools.lru_cache(maxsize=1024)(self._resolve_text)

    def check(self, url: httpx.URL | str) -> None:
        """Raise unless `url` may be read (a memoized `resolve`; refusals are never cached)."""
        self._allowed(url if isinstance(url, str) else str(url))

    def _resolve_text(self, text: str) -> Path:
        return self.resolve(httpx.URL(text))

    def resolve(self, url: httpx.URL) -> Path:
        """The real path a file:// URL names, or an error if it is not under a root."""
        if url.host not in ("", "localhost"):
            raise InvalidUrl(f"file:// URLs must not name a host, got {url.host!r}", url=_text(url))
        raw = unquote(url.raw_path.decode("ascii").split("?", 1)[0])
        if "\0" in raw or not raw.startswith("/"):
            raise InvalidUrl(f"file:// URL has no absolute path: {_text(url)!r}", url=_text(url))
        if not self._roots:
            raise FileOutsideRoots(
                "file:// URLs are disabled on this server (no PKGLOADER_FILE_ROOTS)", url=_text(url)
            )
        real = Path(os.path.realpath(raw))
        if not any(real == root or real.is_relative_to(root) for root in self._roots):
            raise FileOutsideRoots(f"{raw} is outside the allowed file roots", url=_text(url))
        return real

    @contextmanager
    def open(self, url: httpx.URL) -> Iterator[Iterator[bytes]]:
        path = self.resolve(url)
        try:
            # O_NONBLOCK: opening a FIFO must not hang the call; O_NOFOLLOW: the path was resolved
            # already, so a symlink here was swapped in after the check.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UpstreamNotFound(
                f'Unable to read "{path}": no such file', url=_text(url)
            ) from None
        except OSError as exc:
            raise UpstreamNotFound(
                f'Unable to read "{path}": {exc.strerror}', url=_text(url)
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FileOutsideRoots(f'"{path}" is not a regular file', url=_text(url))
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as handle:
                yield _read_chunks(handle, path, _text(url))
        finally:
            os.close(fd)


def _text(url: httpx.URL) -> str:
    # httpx renders file:///x as file:/x; errors should show the URL as clients write it.
    return f"file://{url.host}{url.raw_path.decode('ascii')}"


def _read_chunks(handle: object, path: Path, url: str) -> Iterator[bytes]:
    read = handle.read  # type: ignore[attr-defined]
    try:
        while chunk := read(CHUNK):
            yield chunk
    except OSError as exc:
        raise UpstreamUnavailable(f'Unable to read "{path}": {exc.strerror}', url=url) from None
