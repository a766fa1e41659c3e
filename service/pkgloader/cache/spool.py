"""Writing a stream of bytes to a temp file while hashing and counting it.

Hashing and writing run on a second thread: both release the GIL, so they overlap with the
download thread's network reads and decoding (measured: hashing in the download thread halved
httpx's throughput). The queue between them is short, so memory stays bounded.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
from pathlib import Path

from pkgloader.errors import CacheFull, PackageTooLarge
from pkgloader.formats import FileSource

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_DEPTH = 8  # chunks in flight between the two threads (at most ~8 MiB)


class Spool:
    """A temp file being filled. `fd` stays open after `finish`, for reading the content."""

    def __init__(self, fd: int, path: Path | None, max_bytes: int) -> None:
        self.fd = fd
        self.path = path  # None: already unlinked (memory-only mode)
        self.size = 0
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="spool-writer", daemon=True)
        self._thread.start()
        self._closed = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._max:
            raise PackageTooLarge(
                f"package is larger than the limit of {self._max} bytes (decoded)",
                limit=str(self._max),
            )
        if self._error is not None:
            self._raise()
        self._queue.put(chunk)

    def finish(self) -> str:
        """Wait for the writer; fsync; return the sha256 hex of everything written."""
        self._stop()
        if self._error is not None:
            self._raise()
        try:
            os.fsync(self.fd)
        except OSError as exc:
            self._error = exc
            self._raise()
        return self._hash.hexdigest()

    def source(self) -> FileSource:
        """The content, read with pread through a descriptor of its own (never mapped: see
        `disk.py`), so it stays readable after the spool is closed or its file published."""
        return FileSource(os.dup(self.fd), size=self.size, name=self.path.name if self.path else "")

    def close(self) -> None:
        """Stop the writer if still running and close the descriptor (idempotent)."""
        self._stop()
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def _stop(self) -> None:
        if self._thread.is_alive():
            if self._error is not None:
                # The writer stopped on an error; unblock a producer-side put by draining.
                while not self._queue.empty():
                    self._queue.get_nowait()
            self._queue.put(None)
            self._thread.join()

    def _drain(self) -> None:
        update, fd = self._hash.update, self.fd
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            except BaseException as exc:  # noqa: BLE001 - handed to the producer thread
                self._error = exc

    def _raise(self) -> None:
        error = self._error
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            raise CacheFull("no space left on the cache volume") from None
        assert error is not None
        raise error
