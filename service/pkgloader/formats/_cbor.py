"""A small, defensive CBOR (RFC 8949) decoder for manifests and indexes.

Why not ``cbor2.loads``: its C decoder trusts declared lengths (a forged array count can ask
for gigabytes before failing), applies semantic tags we do not want (``datetime``, ``set``,
shared references that can build *cyclic* values) and recurses without a limit we control.
Manifests are a few KiB, so a pure-Python decoder costs nothing measurable. It produces the
same plain values as ``cbor2`` and uses ``cbor2``'s types for what has no Python equivalent
(``CBORTag``, ``undefined``, ``CBORSimpleValue``), so ``to_jsonable`` handles both.
"""

from __future__ import annotations

import struct

from cbor2 import CBORSimpleValue, CBORTag, undefined

from ._errors import FormatError

# Manifests nest a handful of levels; 128 leaves room for odd annotations and stays far below
# Python's recursion limit.
MAX_DEPTH = 128

_BREAK = object()


class _Decoder:
    __slots__ = ("_buf", "_end", "_pos", "_what")

    def __init__(self, buf: memoryview, what: str) -> None:
        self._buf = buf
        self._pos = 0
        self._end = len(buf)
        self._what = what

    def fail(self, reason: str) -> FormatError:
        return FormatError(f"{self._what}: invalid CBOR at offset {self._pos}: {reason}")

    def _take(self, n: int) -> memoryview:
        if n > self._end - self._pos:
            raise self.fail(f"needs {n} bytes, only {self._end - self._pos} remain")
        view = self._buf[self._pos : self._pos + n]
        self._pos += n
        return view

    def _argument(self, info: int) -> int | None:
        """The head's argument; ``None`` means indefinite length (info 31)."""
        if info < 24:
            return info
        if info <= 27:
            return int.from_bytes(self._take(1 << (info - 24)), "big")
        if info == 31:
            return None
        raise self.fail(f"reserved additional information {info}")

    def _count(self, n: int, min_item_bytes: int) -> int:
        # Each item takes at least one byte, so a count larger than what is left is a lie;
        # checking it first bounds the work by the input size.
        if n * min_item_bytes > self._end - self._pos:
            raise self.fail(f"declares {n} items but only {self._end - self._pos} bytes remain")
        return n

    def item(self, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} levels")
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self._simple(info)
        arg = self._argument(info)
        if major == 0:
            if arg is None:
                raise self.fail("indefinite-length integer")
            return arg
        if major == 1:
            if arg is None:
                raise self.fail("indefinite-length integer")
            return -1 - arg
        if major in (2, 3):
            return self._string(major, arg, depth)
        if major == 4:
            return self._array(arg, depth)
        if major == 5:
            return self._map(arg, depth)
        # major == 6: a tag
        if arg is None:
            raise self.fail("indefinite-length tag")
        value = self.item(depth + 1)
        if arg in (2, 3) and isinstance(value, bytes):  # bignums, as cbor2 decodes them
            number = int.from_bytes(value, "big")
            return number if arg == 2 else -1 - number
        return CBORTag(arg, value)

    def _simple(self, info: int) -> object:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 23:
            return undefined
        if info < 20:
            return CBORSimpleValue(info)
        if info == 24:
            value = self._take(1)[0]
            if value < 32:
                raise self.fail(f"simple value {value} must use the short form")
            return CBORSimpleValue(value)
        if info == 25:
            return float(struct.unpack(">e", self._take(2))[0])
        if info == 26:
            return float(struct.unpack(">f", self._take(4))[0])
        if info == 27:
            return float(struct.unpack(">d", self._take(8))[0])
        if info == 31:
            return _BREAK
        raise self.fail(f"reserved simple value encoding {info}")

    def _string(self, major: int, arg: int | None, depth: int) -> object:
        if arg is None:
            chunks: list[bytes] = []
            while True:
                chunk = self.item(depth + 1)
                if chunk is _BREAK:
                    break
                if major == 2 and isinstance(chunk, bytes):
                    chunks.append(chunk)
                elif major == 3 and isinstance(chunk, str):
                    chunks.append(chunk.encode())
                else:
                    raise self.fail("indefinite string chunk of the wrong type")
            raw = b"".join(chunks)
        else:
            raw = bytes(self._take(arg))
        if major == 2:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"text string is not UTF-8 ({exc.reason})") from None

    def _array(self, arg: int | None, depth: int) -> list[object]:
        items: list[object] = []
        if arg is None:
            while (value := self.item(depth + 1)) is not _BREAK:
                items.append(value)
            return items
        for _ in range(self._count(arg, 1)):
            items.append(self._value(depth + 1))
        return items

    def _map(self, arg: int | None, depth: int) -> dict[object, object]:
        result: dict[object, object] = {}
        if arg is None:
            while (key := self.item(depth + 1)) is not _BREAK:
                result[self._key(key)] = self._value(depth + 1)
            return result
        for _ in range(self._count(arg, 2)):
            key = self._value(depth + 1)
            result[self._key(key)] = self._value(depth + 1)
        return result

    def _key(self, key: object) -> object:
        if isinstance(key, list | dict | CBORTag):
            # Valid CBOR, but never used by webc and unhashable in Python.
            raise self.fail(f"unsupported map key of type {type(key).__name__}")
        return key

    def _value(self, depth: int) -> object:
        value = self.item(depth)
        if value is _BREAK:
            raise self.fail("unexpected break")
        return value


def decode_cbor(buf: bytes | memoryview, what: str) -> object:
    """Decode the first CBOR item of ``buf``; trailing bytes (webc index padding) are ignored."""
    return _Decoder(memoryview(buf), what)._value(0)
