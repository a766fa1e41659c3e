"""The core of the contents RPCs (`pkgloader.contents`), without gRPC: checked streams, paths."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pkgloader import contents, formats
from pkgloader.errors import CacheFileChanged, ContentHashMismatch, InvalidPath
from pkgloader.formats import writer as w


class _Bytes:
    """A `Readable` over bytes that can be changed between reads, as a damaged disk would."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    @property
    def size(self) -> int:
        return len(self.data)

    def chunks(self, max: int, /) -> Iterator[bytes]:
        self.reads += 1
        for start in range(0, len(self.data), max):
            yield self.data[start : start + max]

    def views(self, max: int, /) -> Iterator[bytes | memoryview]:
        return self.chunks(max)  # its pieces are bytes of their own


def test_check_hashes_and_streams_in_bounded_pieces() -> None:
    """`check` computes the sha256 before any chunk; `chunks` yields the bytes ≤ 1 MiB each."""
    data = bytes(range(256)) * 9000  # 2.2 MiB
    checked = contents.check(_Bytes(data), hashlib.sha256(data).hexdigest(), what="x")
    assert checked.sha256 == hashlib.sha256(data).hexdigest()
    assert checked.size == len(data)
    pieces = list(checked.chunks())
    assert all(len(p) <= contents.CHUNK for p in pieces)
    assert len(pieces) == 3
    assert b"".join(pieces) == data


def test_a_mismatch_is_refused_before_anything_is_sent() -> None:
    """A content that does not hash to the expected sha256 raises at `check`, not mid-stream."""
    with pytest.raises(ContentHashMismatch) as caught:
        contents.check(_Bytes(b"corrupt"), "0" * 64, what="atom 'a'")
    assert caught.value.expected == "0" * 64
    assert caught.value.actual == hashlib.sha256(b"corrupt").hexdigest()


def test_content_changed_between_passes_never_arrives_whole() -> None:
    """If the bytes change after the first pass, the last chunk is withheld and DATA_LOSS raised."""
    source = _Bytes(b"a" * (3 * contents.CHUNK))
    checked = contents.check(source, None, what="atom 'a'")
    source.data = b"a" * (2 * contents.CHUNK) + b"b" * contents.CHUNK
    received: list[bytes] = []

    def drain() -> None:
        received.extend(bytes(piece) for piece in checked.chunks())

    with pytest.raises(ContentHashMismatch):
        drain()
    assert len(received) == 2  # the changed last chunk never went out


def test_oversized_pieces_are_cut_to_the_maximum() -> None:
    """A content handing out pieces larger than asked for is still sent in ≤ max pieces."""

    class _Big(_Bytes):
        def chunks(self, max: int, /) -> Iterator[bytes]:
            yield self.data

        def views(self, max: int, /) -> Iterator[bytes]:
            yield self.data

    checked = contents.check(_Big(b"x" * 2500), None, what="x")
    assert [len(p) for p in checked.chunks(1000)] == [1000, 1000, 500]


def test_signature_sha256_reads_only_sha256_signatures() -> None:
    """`sha256:<base64>` gives hex; other algorithms or malformed values give None."""
    digest = hashlib.sha256(b"atom").digest()
    assert contents.signature_sha256("sha256:" + base64.b64encode(digest).decode()) == digest.hex()
    assert contents.signature_sha256("") is None
    assert contents.signature_sha256("md5:AAAA") is None
    assert contents.signature_sha256("sha256:not base64!") is None


@pytest.mark.parametrize(
    ("path", "normal"),
    [("/", "/"), ("", "/"), ("a/b", "/a/b"), ("/a//./b/", "/a/b"), ("/ünï/cødé", "/ünï/cødé")],
)
def test_paths_normalize_to_absolute(path: str, normal: str) -> None:
    """Volume paths become absolute from the root; `.` and empty segments go."""
    assert contents.normalize_path(path) == normal


@pytest.mark.parametrize("path", ["/a/../b", "..", "/a\\b", "/a\x00b", "/" + "a" * 5000])
def test_unsafe_paths_are_invalid(path: str) -> None:
    """`..`, a backslash, NUL, or an absurd length is INVALID_PATH, never looked up."""
    with pytest.raises(InvalidPath):
        contents.normalize_path(path)


def test_stable_content_is_not_hashed_twice() -> None:
    """`stable` (memory-tier bytes, immutable) skips the second hash: the send pass does not
    check again, which only content that cannot change may rely on."""
    source = _Bytes(b"a" * 3000)
    checked = contents.check(source, None, what="x", stable=True)
    source.data = b"b" * 3000  # impossible for real stable content; shows no re-hash happens
    assert b"".join(checked.chunks(1000)) == source.data
    assert source.reads == 2


def test_a_file_truncated_between_the_passes_is_cache_file_changed(tmp_path: Path) -> None:
    """A package file that shrinks after the hash pass ends the send pass with CacheFileChanged
    (ABORTED, as under Load), not a crash and not a silently short atom."""
    atom = bytes(range(256)) * (3 * 4096)  # 3 MiB
    raw = w.write_indexed({}, {"a": atom}, {}, v3=False)
    path = tmp_path / "p.webc"
    path.write_bytes(raw)
    with formats.open_package(path) as container:
        content = container.get_atom("a")
        assert content is not None
        checked = contents.check(content, None, what="atom 'a'")
        os.truncate(path, len(raw) - 2 * contents.CHUNK)
        received: list[bytes] = []

        def drain() -> None:
            received.extend(bytes(piece) for piece in checked.chunks())

        with pytest.raises(CacheFileChanged):
            drain()
    assert sum(map(len, received)) < len(atom)


class _Reused(_Bytes):
    """A `Readable` whose views are one buffer, filled again for each: what `views` allows."""

    def views(self, max: int, /) -> Iterator[bytes | memoryview]:
        buffer = bytearray(max)
        for start in range(0, len(self.data), max):
            piece = self.data[start : start + max]
            buffer[: len(piece)] = piece
            yield memoryview(buffer)[: len(piece)]


def test_the_pass_that_holds_a_piece_back_reads_pieces_that_stay_valid() -> None:
    """The hash pass may read views of a reused buffer; the send pass, which holds each piece
    back until it has read the next, reads `chunks`, so what it sends is the content's bytes
    even when its views reuse one buffer."""
    data = os.urandom(5500)
    checked = contents.check(_Reused(data), hashlib.sha256(data).hexdigest(), what="x")
    assert checked.sha256 == hashlib.sha256(data).hexdigest()  # views are fine for a hash
    assert [bytes(piece) for piece in checked.chunks(1000)] == [
        data[i : i + 1000] for i in range(0, len(data), 1000)
    ]
