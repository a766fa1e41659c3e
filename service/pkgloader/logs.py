"""Structured logs: one JSON object per line, the message plus every `extra` field.

The access log writes a line per RPC, so formatting is on the hot path of every call: the
timestamp prefix is formatted once per second, the encoder is built once, the access log skips
logging's caller lookup (`emit`: no line of ours prints file or line numbers), and records are
written in batches by logging's own `QueueHandler`/`QueueListener` pair, off the RPC threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any, ClassVar, TextIO, cast

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
        if isinstance(record, FieldsRecord) and record.untouched:
            entry.update(record.fields)  # no scan of the ~25 standard attributes
        else:
            for key, value in fields.items():
                if key not in _STANDARD and key[0] != "_":
                    entry[key] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return _encode(entry)


class BatchWriter(logging.Handler):
    """Formats records into lines and writes them in batches: one write() and one flush() per
    `flush()`, or per `max_lines` lines under a sustained burst (so a batch stays bounded).

    It runs on the `QueueListener`'s thread only; `BatchingListener` flushes it whenever the
    queue runs dry.
    """

    def __init__(self, stream: TextIO, max_lines: int = 1024) -> None:
        super().__init__()
        self.stream = stream
        self.max_lines = max_lines
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(self.format(record))
        if len(self._lines) >= self.max_lines:
            self.flush()

    def flush(self) -> None:
        with self.lock or contextlib.nullcontext():
            lines, self._lines = self._lines, []
            if not lines:
                return
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed: nowhere left to report it


class BatchingListener(logging.handlers.QueueListener):
    """logging's `QueueListener`, flushing its handlers each time the queue is drained (the
    documented `dequeue` hook), and once more when it stops, so nothing queued is lost.

    Woken by a record after the queue ran dry, it lingers `linger` seconds before taking it, so
    what arrives meanwhile is formatted and written in the same batch. Without it, at a few
    thousand calls a second the queue ran dry after nearly every record: one wake-up (a GIL
    hand-over among the RPC threads) and one write() per line."""

    linger = 0.02

    def dequeue(self, block: bool) -> logging.LogRecord:
        records = cast("queue.SimpleQueue[logging.LogRecord]", self.queue)
        try:
            return records.get_nowait()
        except queue.Empty:
            pass
        for handler in self.handlers:
            handler.flush()
        record = records.get(block)
        time.sleep(self.linger)  # a batching period, not a synchronisation
        return record

    def stop(self) -> None:
        super().stop()
        for handler in self.handlers:
            handler.flush()


class RecordQueueHandler(logging.handlers.QueueHandler):
    """logging's `QueueHandler`, for a queue inside this process, that owns its listener.

    Measured on a warm Load: writing a line per call from the calling thread (a write() per
    record, each releasing the GIL to 64 waiting threads) cost a quarter of the request rate.
    Here a call only puts the record on a queue; `BatchingListener`'s thread formats what has
    piled up and writes it at once. Three documented methods are overridden for the hot path:
    `prepare` hands the record over as it is (the stock one formats it and copies it, to make
    it picklable for another process, which this queue never reaches), `createLock` makes no
    lock (`SimpleQueue.put` is thread-safe), and `handle` queues without one. `close()` stops
    the listener, which drains the queue first: what was logged before shutdown is written (a
    SIGKILL can lose the last few milliseconds).
    """

    def __init__(self, stream: TextIO, formatter: logging.Formatter | None = None) -> None:
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        super().__init__(self.queue)
        self.writer = BatchWriter(stream)
        self.writer.setFormatter(formatter)
        self.listener = BatchingListener(self.queue, self.writer)
        self.listener.start()
        self._running = True

    def createLock(self) -> None:
        self.lock = None

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def handle(self, record: logging.LogRecord) -> bool:
        """`Handler.handle` for this handler: its filters, then the queue. The stock one also
        takes the handler's lock around `emit`, which calls `prepare` (which changes nothing
        here) and `enqueue`: five calls more on every RPC's line. Needed beyond speed from
        Python 3.13 on, whose stock `handle` enters `self.lock`, which `createLock` leaves
        None."""
        kept = self.filter(record)
        if isinstance(kept, logging.LogRecord):  # Python 3.12+: a filter may replace it
            record = kept
        if kept:
            self.queue.put_nowait(record)
        return bool(kept)

    def close(self) -> None:
        if self._running:  # close() may come twice (logging.shutdown after an explicit close)
            self._running = False
            self.listener.stop()
        super().close()


class FieldsRecord(logging.LogRecord):
    """A `LogRecord` of a message and structured fields (set as its attributes, as `extra`
    would), for lines that print no file, line or thread: the access log's.

    `logging.LogRecord.__init__` costs about three times this on every call (path and module
    name splitting, level name lookup, `extra`'s clash checks); a record here is copied from one
    `LogRecord` made for the same logger, level and message, with its own time. Its fields are
    kept as they came, so `JsonFormatter` need not scan the standard attributes, unless
    something (a filter) added attributes since (`untouched`)."""

    #: (logger, level, message) -> (a record LogRecord made, logging's start time)
    _templates: ClassVar[dict[tuple[str, int, str], tuple[dict[str, Any], float]]] = {}

    def __init__(self, name: str, level: int, msg: str, fields: dict[str, Any]) -> None:
        key = (name, level, msg)
        made = self._templates.get(key)
        if made is None:
            record = logging.LogRecord(name, level, "", 0, msg, (), None)
            # logging's start time, from its own record: relativeCreated = created - start.
            made = (dict(vars(record)), record.created - record.relativeCreated / 1000)
            self._templates[key] = made
        template, start = made
        attributes = self.__dict__
        attributes.update(template)
        created = time.time()
        attributes["created"] = created
        attributes["msecs"] = (created - int(created)) * 1000
        attributes["relativeCreated"] = (created - start) * 1000
        attributes.update(fields)
        attributes["_fields"] = fields
        attributes["_size"] = 0
        attributes["_size"] = len(attributes)

    @property
    def fields(self) -> dict[str, Any]:
        return self.__dict__["_fields"]  # type: ignore[no-any-return]

    @property
    def untouched(self) -> bool:
        """No attribute was added since the record was made (the fields are all there is)."""
        attributes = self.__dict__
        return len(attributes) == attributes["_size"]  # type: ignore[no-any-return]


def emit(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """`logger.log(level, msg, extra=fields)` for the access log: a `FieldsRecord` (no caller
    lookup, a stack walk per record, and no `LogRecord.__init__`), handed to the public
    `Logger.handle`, so every handler and filter (pytest's caplog too) sees a `LogRecord`."""
    if logger.isEnabledFor(level):
        logger.handle(FieldsRecord(logger.name, level, msg, fields))


def configure(level: str = "INFO") -> RecordQueueHandler:
    handler = RecordQueueHandler(sys.stderr, JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # httpx logs every request URL at INFO; our access log already says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return handler
