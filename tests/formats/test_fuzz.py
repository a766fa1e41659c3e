"""Property tests: random mutations of the real packages only ever raise FormatError."""

from __future__ import annotations

import gzip
import io
import tarfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ._helpers import COWSAY, DASH, HELLO, WABT, WEBSERVER, open_and_exercise

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SMALL = {"hello": HELLO.read_bytes(), "webserver": WEBSERVER.read_bytes()}
# Where the structure of the big samples lives (headers, manifests, volume headers); mutating
# atom bytes only changes hashes, which the validate() tests cover.
DASH_BYTES = DASH.read_bytes()
WABT_BYTES = WABT.read_bytes()
HOT = {
    "dash": (DASH_BYTES, [(0, 1730), (334_135, len(DASH_BYTES))]),
    "wabt": (WABT_BYTES, [(0, 3125 + 3 + 239), (3_418_337, 3_418_337 + 1_754 + 200)]),
}


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    """A few random edits of sample ``name``, aimed at the byte ranges where structure lives."""
    data, ranges = SOURCES[name]
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        start, end = draw(st.sampled_from(ranges))
        hi = min(end, len(buf)) - 1
        lo = min(start, hi)
        at = draw(st.integers(max(lo, 0), max(hi, 0)))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if action == "flip":
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            buf[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x1E, 0x1F, 0x9B, 0xBB]))
        elif action == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del buf[at : at + draw(st.integers(1, 8))]
        else:
            del buf[at:]
        if len(buf) < 9:
            break
    return bytes(buf)


@FUZZ
@given(st.sampled_from(["hello", "webserver"]).flatmap(mutated))
def test_mutated_small_samples(data: bytes) -> None:
    """Mutations anywhere in hello (v1) and the v3 sample raise FormatError or parse cleanly."""
    open_and_exercise(data)


@FUZZ
@given(st.sampled_from(["dash", "wabt"]).flatmap(mutated))
def test_mutated_large_v1_samples(data: bytes) -> None:
    """Mutations of dash's and wabt's headers and volume headers never escape FormatError."""
    open_and_exercise(data)


def cowsay_tar() -> bytes:
    return gzip.decompress(COWSAY.read_bytes())


COWSAY_TAR = cowsay_tar()
# The tar headers of the four members (512-byte blocks before each member's data) and the
# wapm.toml contents are where structure lives.
TAR_HOT = [(0, 1536), (len(COWSAY_TAR) - 3000, len(COWSAY_TAR))]
COWSAY_GZ = COWSAY.read_bytes()

SOURCES: dict[str, tuple[bytes, list[tuple[int, int]]]] = {
    "hello": (SMALL["hello"], [(0, len(SMALL["hello"]))]),
    "webserver": (SMALL["webserver"], [(0, len(SMALL["webserver"]))]),
    **HOT,
    "cowsay.tar": (COWSAY_TAR, TAR_HOT),
    # The gzip header and the first deflate blocks (the tar headers and wapm.toml live there).
    "cowsay.tar.gz": (COWSAY_GZ, [(0, 4096)]),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated("cowsay.tar"))
def test_mutated_cowsay_tar(data: bytes) -> None:
    """Mutations of cowsay's tar headers and wapm.toml (recompressed) only raise FormatError."""
    open_and_exercise(gzip.compress(data, compresslevel=1, mtime=0))


@settings(max_examples=100, deadline=None)
@given(mutated("cowsay.tar.gz"))
def test_mutated_gzip_stream(data: bytes) -> None:
    """Mutations of the compressed stream itself only raise FormatError."""
    open_and_exercise(data)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet="ab./", min_size=1, max_size=10),
            st.binary(max_size=20),
            st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE]),
        ),
        max_size=6,
    ),
    st.sampled_from([b'[package]\nname="a/b"\nversion="1.0.0"\n', b"[package\n", b""]),
)
def test_random_tar_layouts(members: list[tuple[str, bytes, bytes]], manifest: bytes) -> None:
    """Arbitrary member names, types and manifests in a tar.gz only ever raise FormatError."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("wasmer.toml")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(content) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(content) if kind == tarfile.REGTYPE else None)
    open_and_exercise(gzip.compress(buffer.getvalue(), mtime=0))
