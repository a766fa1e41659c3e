"""Bounds-checked reads over a ``memoryview``.

Every length read from a file is compared with the bytes that are really there *before* it is
used, so a forged length can never make us allocate, loop or slice past the end.
"""

from __future__ import annotations

from ._errors import FormatError

_U64_MAX = 2**64 - 1
# A u64 needs at most ten 7-bit groups; more is a malformed (or hostile) encoding.
_ULEB128_MAX_BYTES = 10


class Cursor:
    """A read position inside ``buf[start:end]`` that raises ``FormatError`` on overrun."""

    __slots__ = ("_buf", "_end", "_what", "pos")

    def __init__(self, buf: memoryview, what: str, pos: int = 0, end: int | None = None) -> None:
        self._buf = buf
        self._what = what
        self.pos = pos
        self._end = len(buf) if end is None else end

    @property
    def remaining(self) -> int:
        return self._end - self.pos

    def _need(self, n: int, field: str) -> None:
        if n < 0 or n > self.remaining:
            raise FormatError(
                f"{self._what}: {field} needs {n} bytes at offset {self.pos}, "
                f"but only {max(self.remaining, 0)} are available"
            )

    def take(self, n: int, field: str) -> memoryview:
        self._need(n, field)
        view = self._buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def u8(self, field: str) -> int:
        self._need(1, field)
        value = self._buf[self.pos]
        self.pos += 1
        return value

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "little")

    def uleb128(self, field: str) -> int:
        value = 0
        for i in range(_ULEB128_MAX_BYTES):
            byte = self.u8(field)
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                if value > _U64_MAX:
                    break
                return value
        raise FormatError(f"{self._what}: {field} is not a valid ULEB128 u64")
