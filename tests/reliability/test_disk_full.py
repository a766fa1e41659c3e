"""Disk full: the cache on a small real tmpfs, filled while a download streams into it.

The tests mount tmpfs themselves (they run as root in CI); they skip, saying why, only where
mounting is impossible.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from pkgloader_client import pb

from tests.conftest import COWSAY, DASH, HELLO, STATIC, Running
from tests.reliability.conftest import Conn, assert_cache_sound, error_info

KiB = 1024


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs volumes under tmp_path (`mount -t tmpfs -o <options>`)."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"vol{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            why = f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}"
            # CI runs as root on the same kind of machine: there a skip would hide a failure.
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_to(volume: Path, leave: int) -> Path:
    """Write a filler file so that about `leave` bytes stay free; returns it."""
    filler = volume / "filler"
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(free_bytes(volume) - leave, 0))
    return filler


def test_cache_full_mid_download_is_resource_exhausted_and_leaves_nothing(
    tmpfs, make_server: Callable[..., Running], upstream
) -> None:
    """A download that outgrows the volume: CACHE_FULL, no partial file; then space is freed."""
    volume = tmpfs("size=2m")
    server = make_server(cache_dir=volume / "cache")
    cache = volume / "cache"
    up = upstream(lambda c: c.respond(200, DASH.data))
    filler = fill_to(volume, 128 * KiB)  # DASH is 328 KiB: the disk fills mid-stream
    with pytest.raises(grpc.RpcError) as caught:
        server.load(up.url(), DASH.sha256)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "CACHE_FULL"
    assert "no space left" in caught.value.details()
    assert assert_cache_sound(cache) == []
    assert len(up.seen) == 1  # a full disk is not retried
    # A smaller package still fits in what is left.
    package, content = server.load(HELLO.url, HELLO.sha256, include_content=True)
    assert (package.cache_path, content) == (f"{HELLO.sha256}.bin", HELLO.data)
    # Once space is freed, the big one works too, and every Load after.
    filler.unlink()
    package, content = server.load(up.url(), DASH.sha256, include_content=True)
    assert content == DASH.data
    for fixture in (STATIC, COWSAY):
        assert server.load(fixture.url, fixture.sha256)[0].cache_path == f"{fixture.sha256}.bin"
    names = assert_cache_sound(cache)
    assert sorted(names) == sorted(f"{f.sha256}.bin" for f in (HELLO, DASH, STATIC, COWSAY))


def test_cache_full_in_every_position_of_the_stream(
    tmpfs, make_server: Callable[..., Running], upstream
) -> None:
    """The volume runs out at 0, 4 KiB, 64 KiB, 200 KiB into the body: the same clean failure."""
    volume = tmpfs("size=2m")
    server = make_server(cache_dir=volume / "cache", memory_cache_bytes=0)

    def slow(c: Conn) -> None:
        c.head(200, {"Content-Length": str(DASH.size)})
        c.trickle(DASH.data, step=16 * KiB, pause=0.001, limit=20)

    up = upstream(slow)
    for leave in (0, 4 * KiB, 64 * KiB, 200 * KiB):
        filler = fill_to(volume, leave)
        with pytest.raises(grpc.RpcError) as caught:
            server.load(up.url(f"/{leave}"), DASH.sha256)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
        assert error_info(caught.value).reason == "CACHE_FULL"
        assert assert_cache_sound(volume / "cache") == []
        filler.unlink()
    assert server.load(up.url("/last"), DASH.sha256)[0].source == pb.SOURCE_DOWNLOAD


def test_no_inode_left_for_a_temp_file_is_cache_full(
    tmpfs, make_server: Callable[..., Running]
) -> None:
    """A volume out of inodes (not bytes) fails the same way, before any download starts."""
    volume = tmpfs("size=8m,nr_inodes=8")
    server = make_server(cache_dir=volume / "cache")
    spare = 0
    while True:  # use up the inodes left, at most a handful
        try:
            (volume / f"inode{spare}").touch()
        except OSError:
            break
        spare += 1
        assert spare < 64
    with pytest.raises(grpc.RpcError) as caught:
        server.load(STATIC.url, STATIC.sha256)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "CACHE_FULL"
    for index in range(min(spare, 3)):  # a lease and a temp file need one inode each
        (volume / f"inode{index}").unlink()
    assert server.load(STATIC.url, STATIC.sha256)[0].cache_path == f"{STATIC.sha256}.bin"
    assert_cache_sound(volume / "cache")
