"""Undo `Content-Encoding` as a stream: chunks in, decoded chunks of at most 1 MiB out.

The rules are the reference loader's (comma list, trimmed and lowercased, undone in reverse order;
`identity` passes; anything else is an error naming it; a non-UTF-8 header is an error), but where
the reference decodes a whole buffered body we decode chunk by chunk with bounded output, so a
decompression bomb costs at most one output chunk of memory before the size limit stops it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, cast

import zstandard

from pkgloader.errors import ContentDecodingError

CHUNK = 1024 * 1024
#: The most codings one response may list (`identity` included). Real servers send one; each
#: coding is a layer of decoder, and thousands of them (1,500 x `identity`, 2,500 x `gzip`) nest
#: generators past Python's recursion limit. Past the limit the response is refused like an
#: unsupported coding.
MAX_CODINGS = 8
#: The largest zstd window we decode with (RFC 9659 sets 8 MiB for the `zstd` content coding).
#: The decoder allocates the window the frame header asks for, up to 2 GiB; without a limit a
#: 5 KB response with window_log 27 pins 128 MiB for as long as the download lasts.
ZSTD_MAX_WINDOW = 8 * 1024 * 1024
_PREFIX = "package download failed: could not decode response body"

Decoder = Callable[[Iterable[bytes]], Iterator[bytes]]


def _fail(detail: str) -> ContentDecodingError:
    return ContentDecodingError(f"{_PREFIX}: {detail}")


def parse_content_encoding(raw: bytes | None) -> list[str]:
    """The codings to undo, outermost last, as the reference reads the header."""
    if raw is None:
        return []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail("non-utf8 content-encoding header") from None
    codings = [item.strip().lower() for item in text.split(",")]
    codings = [c for c in codings if c]
    if len(codings) > MAX_CODINGS:
        raise _fail(
            f"unsupported content-encoding: {len(codings)} codings listed, more than the limit "
            f"of {MAX_CODINGS}"
        )
    for coding in codings:
        if coding not in _DECODERS:
            raise _fail(f"unsupported content-encoding: {coding}")
    return codings


def decode(chunks: Iterable[bytes], codings: list[str]) -> Iterator[bytes]:
    """Apply the decoders for `codings` (as parsed above) to a stream of raw chunks."""
    stream: Iterable[bytes] = chunks
    for coding in reversed(codings):
        stream = _DECODERS[coding](stream)
    return iter(stream)


def _identity(chunks: Iterable[bytes]) -> Iterator[bytes]:
    yield from chunks


def _gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    # wbits 16+15: gzip framing. Concatenated members are decoded in turn, as gzip(1) does.
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    fresh, members = True, 0  # fresh: the current member has seen no input yet
    try:
        for chunk in chunks:
            data = chunk
            while data:
                fresh = False
                out = decoder.decompress(data, CHUNK)
                if out:
                    yield out
                data = decoder.unconsumed_tail
                if decoder.eof:
                    members += 1
                    # At the end of a member zlib reports the rest as unused_data *and*
                    # unconsumed_tail (when max_length is set); take it once.
                    data = decoder.unused_data
                    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    fresh = True
        # Output held back by the 1 MiB bound once the input has run out.
        while not decoder.eof and (out := decoder.decompress(decoder.unconsumed_tail, CHUNK)):
            yield out
        if decoder.eof:
            members += 1
            fresh = True
    except zlib.error as exc:
        raise _fail(f"failed to decode response body: gzip: {exc}") from None
    if not fresh or members == 0:
        raise _fail("failed to decode response body: gzip stream is truncated")


class _ZstdFrames:
    """Follows zstd frame boundaries in the compressed stream, to tell a truncated stream from a
    complete one: python-zstandard's bounded readers stop quietly at the end of their input."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 0  # bytes still to skip in the current block or skippable frame
        self._state = "magic"
        self._last = False
        self._checksum = False

    @property
    def complete(self) -> bool:
        return self._state == "magic" and self._need == 0 and not self._buf

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._need:
                take = min(self._need, len(view))
                self._need -= take
                view = view[take:]
                if self._need == 0 and self._state == "block" and self._last:
                    self._state = "checksum" if self._checksum else "magic"
                    self._need = 4 if self._checksum else 0
                    if self._checksum:
                        continue
                if self._need == 0 and self._state == "checksum":
                    self._state = "magic"
                continue
            wanted = self._header_size()
            take = min(wanted - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == wanted:
                self._advance()

    def _header_size(self) -> int:
        if self._state == "magic":
            return 4
        if self._state == "skippable":
            return 4
        if self._state == "fhd":
            return 1
        if self._state == "frame_header":
            return self._frame_header_len
        return 3  # block header

    def _advance(self) -> None:
        buf = bytes(self._buf)
        self._buf.clear()
        if self._state == "magic":
            magic = int.from_bytes(buf, "little")
            if magic == 0xFD2FB528:
                self._state = "fhd"
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state = "skippable"
            else:
                raise _fail("failed to decode response body: zstd: unknown frame magic")
        elif self._state == "skippable":
            self._need = int.from_bytes(buf, "little")
            self._state = "magic"
        elif self._state == "fhd":
            fhd = buf[0]
            fcs_flag, single, checksum, dict_flag = (
                fhd >> 6,
                (fhd >> 5) & 1,
                (fhd >> 2) & 1,
                fhd & 3,
            )
            fcs = (1 if single else 0, 2, 4, 8)[fcs_flag]
            self._frame_header_len = (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + fcs
            self._checksum = bool(checksum)
            self._state = "frame_header" if self._frame_header_len else "block"
        elif self._state == "frame_header":
            self._state = "block"
        else:
            header = int.from_bytes(buf, "little")
            self._last = bool(header & 1)
            kind, size = (header >> 1) & 3, header >> 3
            self._need = 1 if kind == 1 else size
            if self._need == 0 and self._last:
                self._state = "checksum" if self._checksum else "magic"
                self._need = 4 if self._checksum else 0

    _frame_header_len = 0


class _ChunkReader:
    """A file-like view of an iterator of chunks, for zstandard's stream reader."""

    def __init__(self, chunks: Iterable[bytes], frames: _ZstdFrames) -> None:
        self._chunks = iter(chunks)
        self._pending = b""
        self._frames = frames

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._chunks, b"")
            self._frames.feed(self._pending)
        if size < 0 or size >= len(self._pending):
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:size], self._pending[size:]
        return out


def _unzstd(chunks: Iterable[bytes]) -> Iterator[bytes]:
    frames = _ZstdFrames()
    reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
        cast("IO[bytes]", _ChunkReader(chunks, frames)), read_size=CHUNK, read_across_frames=True
    )
    try:
        while out := reader.read(CHUNK):
            yield out
    except zstandard.ZstdError as exc:
        if "too much memory" in str(exc):  # zstd's wording for a window over max_window_size
            raise _fail(
                "failed to decode response body: zstd: the frame's window is larger than the "
                f"limit of {ZSTD_MAX_WINDOW >> 20} MiB (RFC 9659)"
            ) from None
        raise _fail(f"failed to decode response body: zstd: {exc}") from None
    if not frames.complete:
        raise _fail("failed to decode response body: zstd stream is truncated")


_DECODERS: dict[str, Decoder] = {"identity": _identity, "gzip": _gunzip, "zstd": _unzstd}
