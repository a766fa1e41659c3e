"""Structured logs: one JSON object per line, the message plus every `extra` field.

The access log writes a line per RPC, so formatting is on the hot path of every call: the
timestamp prefix is formatted once per second, the encoder is built once, and logging's caller
lookup (a stack walk per record) is switched off, as the logging HOWTO's optimization section
suggests; no line of ours prints file or line numbers.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from typing import Any, TextIO

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_encode = json.JSONEncoder(default=str, ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    _second = -1
    _prefix = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields.items():
            if key not in _STANDARD and key[0] != "_":
                entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return _encode(entry)


class QueuedJsonHandler(logging.Handler):
    """Hands records to one writer thread, which formats them and writes them in batches.

    Measured on a warm Load: writing a line per call from the calling thread (a write() per
    record, each releasing the GIL to 64 waiting threads) cost a quarter of the request rate.
    Here a call only appends to a queue; the writer drains whatever has piled up and writes it
    with one write() and one flush(). flush() and close() wait for the queue to drain, so
    nothing logged before shutdown is lost (a SIGKILL can lose the last few milliseconds).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._queue: queue.SimpleQueue[logging.LogRecord | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._writer = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._writer.start()

    def createLock(self) -> None:
        self.lock = None  # SimpleQueue.put is thread-safe already

    def emit(self, record: logging.LogRecord) -> None:
        self._queue.put(record)

    def flush(self) -> None:
        if self._writer.is_alive():
            drained = threading.Event()
            self._queue.put(drained)
            drained.wait(5)

    def close(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(5)
        super().close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            lines, waiting, stop = [], [], False
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiting.append(item)
                else:
                    try:
                        lines.append(self.format(item))
                    except Exception:  # noqa: BLE001 - a bad record must not stop the log
                        self.handleError(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # stderr closed: nowhere left to report it
            for event in waiting:
                event.set()
            if stop:
                return


def configure(level: str = "INFO") -> None:
    handler = QueuedJsonHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging._srcfile = None  # no caller lookup per record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # httpx logs every request URL at INFO; our access log already says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
