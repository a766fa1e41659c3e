"""Bounds-checked reads over a region of package bytes (in memory or in a file).

Every length read from a file is compared with the bytes that are really there *before* it is
used, so a forged length can never make us allocate, loop or read past the end.
"""

from __future__ import annotations

from ._detect import Buffer
from ._errors import FormatError
from ._source import MemorySource, Region

_U64_MAX = 2**64 - 1
# A u64 needs at most ten 7-bit groups; more is a malformed (or hostile) encoding.
_ULEB128_MAX_BYTES = 10


class Cursor:
    """A read position inside ``data[pos:end]`` that raises ``FormatError`` on overrun.

    ``data`` is a ``Region`` (positions are relative to its start) or bytes in memory.
    ``take`` reads (from a file: into a buffer of exactly that size); ``skip`` only checks the
    bounds and hands back the ``Region`` for reading later.
    """

    __slots__ = ("_data", "_end", "_what", "pos")

    def __init__(
        self, data: Region | Buffer, what: str, pos: int = 0, end: int | None = None
    ) -> None:
        self._data = data if isinstance(data, Region) else Region(MemorySource(data))
        self._what = what
        self.pos = pos
        self._end = len(self._data) if end is None else end

    @property
    def remaining(self) -> int:
        return self._end - self.pos

    def _need(self, n: int, field: str) -> None:
        if n < 0 or n > self.remaining:
            raise FormatError(
                f"{self._what}: {field} needs {n} bytes at offset {self.pos}, "
                f"but only {max(self.remaining, 0)} are available"
            )

    def take(self, n: int, field: str) -> bytes | memoryview:
        self._need(n, field)
        data = self._data.source.read_at(self._data.offset + self.pos, n)
        self.pos += n
        return data

    def skip(self, n: int, field: str) -> Region:
        self._need(n, field)
        region = self._data.sub(self.pos, n)
        self.pos += n
        return region

    def rest(self) -> Region:
        return self.skip(max(self.remaining, 0), "rest")

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "little")

    def uleb128(self, field: str) -> int:
        self._need(1, field)
        raw = self._data.source.read_at(
            self._data.offset + self.pos, min(_ULEB128_MAX_BYTES, self.remaining)
        )
        value = 0
        for i, byte in enumerate(raw):
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                if value > _U64_MAX:
                    break
                self.pos += i + 1
                return value
        else:
            if len(raw) < _ULEB128_MAX_BYTES:
                self._need(len(raw) + 1, field)
        raise FormatError(f"{self._what}: {field} is not a valid ULEB128 u64")
