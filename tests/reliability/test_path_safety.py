"""Path safety: file:// URLs never read outside the roots, and the cache serves, lists and
deletes only real entries (`<64 lowercase hex>.bin`, regular files), whatever else is planted.

Every test ends by checking that a sentinel tree outside the roots is byte for byte unchanged.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from pkgloader_client import pb

from tests.conftest import COWSAY, DASH, FIXTURES, HELLO, STATIC, WABT, Running
from tests.reliability.conftest import assert_cache_sound, error_info, snapshot_tree


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside every root, holding real packages an attacker would like served."""
    folder = tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    (folder / "secret.webc").write_bytes(HELLO.data)
    (folder / "sub" / "dash.webc").write_bytes(DASH.data)
    (folder / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return folder


@pytest.fixture
def guarded(
    make_server: Callable[..., Running], outside: Path
) -> tuple[Running, Path, Callable[[], None]]:
    """(server, its writable file root, check-nothing-outside-changed)."""
    server = make_server()
    root = server.app.settings.file_roots[1]
    before = snapshot_tree(outside)

    def unchanged() -> None:
        assert snapshot_tree(outside) == before

    return server, root, unchanged


def refused(server: Running, url: str, sha: str, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        server.load(url, sha)
    assert caught.value.code() == code, (url, caught.value.details())
    error_info(caught.value)  # every refusal carries its ErrorInfo
    return caught.value


# -- file:// ---------------------------------------------------------------------------------


TRAVERSALS = [
    "{root}/../outside/secret.webc",
    "{root}/./../outside/secret.webc",
    "{root}/sub/../../outside/secret.webc",
    "{root}/%2e%2e/outside/secret.webc",
    "{root}/%2E%2E/outside/secret.webc",
    "{root}/.%2e/outside/secret.webc",
    "{root}/..%2foutside/secret.webc",
    "{root}/..%2Foutside%2Fsecret.webc",
    "{root}%2f..%2foutside%2fsecret.webc",
    "{root}/../../../../../../../../{outside}/secret.webc",
    "{outside}/secret.webc",
    "{fixtures}/../../../{outside}/secret.webc",
]


@pytest.mark.parametrize("template", TRAVERSALS)
def test_dot_dot_in_any_encoding_is_permission_denied(guarded, outside, template) -> None:
    """`..` plain, percent-encoded in any case, or hidden in %2f: resolved first, then refused."""
    server, root, unchanged = guarded
    path = template.format(root=root, outside=str(outside).lstrip("/"), fixtures=FIXTURES)
    url = "file:///" + path.replace("//", "/").lstrip("/")
    err = refused(server, url, HELLO.sha256, grpc.StatusCode.PERMISSION_DENIED)
    assert error_info(err).reason == "FILE_OUTSIDE_ROOTS"
    assert assert_cache_sound(server.app.settings.cache_dir) == []
    unchanged()


def test_double_encoding_is_decoded_once_only(guarded, outside) -> None:
    """%252e%252e is the literal name "%2e%2e" inside the root, not a way up: NOT_FOUND."""
    server, root, unchanged = guarded
    refused(
        server,
        f"file://{root}/%252e%252e/outside/secret.webc",
        HELLO.sha256,
        grpc.StatusCode.NOT_FOUND,
    )
    unchanged()


@pytest.mark.parametrize(
    "make_link",
    [
        lambda root, out: (root / "abs.webc", out / "secret.webc", "abs.webc"),
        lambda root, out: (root / "rel.webc", Path("../outside/secret.webc"), "rel.webc"),
        lambda root, out: (root / "dir", out / "sub", "dir/dash.webc"),
        lambda root, out: (root / "dev", Path("/dev/zero"), "dev"),
        lambda root, out: (root / "etc", Path("/etc/passwd"), "etc"),
    ],
    ids=["absolute", "relative", "directory", "dev-zero", "etc-passwd"],
)
def test_symlinks_leading_out_of_a_root_are_refused(guarded, outside, make_link) -> None:
    """A symlink (to a file, a folder, a device) is judged by where it really leads."""
    server, root, unchanged = guarded
    link, target, name = make_link(root, outside)
    link.symlink_to(target)
    err = refused(server, f"file://{root}/{name}", HELLO.sha256, grpc.StatusCode.PERMISSION_DENIED)
    assert error_info(err).reason == "FILE_OUTSIDE_ROOTS"
    unchanged()


def test_symlink_inside_the_root_to_a_file_inside_it_is_served(guarded) -> None:
    """The check is about where a path leads, not about symlinks as such."""
    server, root, unchanged = guarded
    (root / "real.webc").write_bytes(STATIC.data)
    (root / "alias.webc").symlink_to("real.webc")
    _, content = server.load(f"file://{root}/alias.webc", STATIC.sha256, include_content=True)
    assert content == STATIC.data
    unchanged()


def test_symlink_loop_is_not_found_without_hanging(guarded) -> None:
    """A symlink loop under a root fails cleanly (ELOOP), not INTERNAL, not a hang."""
    server, root, unchanged = guarded
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    refused(server, f"file://{root}/a", HELLO.sha256, grpc.StatusCode.NOT_FOUND)
    unchanged()


def test_special_files_inside_a_root_are_refused(guarded) -> None:
    """A device node, a FIFO, a socket, a folder under a root: never read, never hang."""
    server, root, unchanged = guarded
    specials = []
    try:
        os.mknod(root / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        specials.append(("zero", grpc.StatusCode.PERMISSION_DENIED))
    except PermissionError:
        pass  # no CAP_MKNOD here; /dev/zero itself is covered through symlinks and directly
    os.mkfifo(root / "fifo")
    specials.append(("fifo", grpc.StatusCode.PERMISSION_DENIED))
    (root / "folder").mkdir()
    specials.append(("folder", grpc.StatusCode.PERMISSION_DENIED))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "sock"))
    specials.append(("sock", grpc.StatusCode.NOT_FOUND))  # open() of a socket: ENXIO
    try:
        for name, code in specials:
            refused(server, f"file://{root}/{name}", HELLO.sha256, code)
        refused(server, f"file://{root}", HELLO.sha256, grpc.StatusCode.PERMISSION_DENIED)
        refused(server, "file:///dev/zero", HELLO.sha256, grpc.StatusCode.PERMISSION_DENIED)
    finally:
        listener.close()
    assert assert_cache_sound(server.app.settings.cache_dir) == []
    unchanged()


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file://example.invalid/{root}/x.webc", grpc.StatusCode.INVALID_ARGUMENT),
        ("file://{root}/x.webc%00.png", grpc.StatusCode.INVALID_ARGUMENT),
        ("file:relative.webc", grpc.StatusCode.INVALID_ARGUMENT),
        ("file://localhost{root}/missing.webc", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_odd_file_urls_fail_clearly(guarded, url: str, code) -> None:
    """A host, a NUL byte, no absolute path: INVALID_ARGUMENT; `localhost` is the local host."""
    server, root, unchanged = guarded
    refused(server, url.format(root=root), HELLO.sha256, code)
    unchanged()


def test_forbidden_path_is_refused_even_when_its_hash_is_cached(guarded, outside) -> None:
    """The cache never launders a forbidden URL: the path is judged before the lookup."""
    server, _, unchanged = guarded
    server.load(HELLO.url, HELLO.sha256)  # now in memory and on disk
    refused(
        server,
        f"file://{outside}/secret.webc",
        HELLO.sha256,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    unchanged()


# -- what lives in the cache folder ------------------------------------------------------------


def plant(cache: Path, outside: Path) -> dict[str, str]:
    """Put every kind of non-entry in the cache folder; returns name → kind."""
    planted = {
        HELLO.sha256.upper() + ".bin": "uppercase name, right bytes",
        HELLO.sha256 + ".BIN": "uppercase suffix",
        HELLO.sha256: "no suffix",
        HELLO.sha256 + ".bin.part": "extra suffix",
        HELLO.sha256[:63] + ".bin": "63 digits",
        HELLO.sha256 + "0.bin": "65 digits",
        " " + HELLO.sha256 + ".bin": "leading space",
        "." + HELLO.sha256 + ".bin": "hidden",
        "notes.txt": "an operator's file",
    }
    for name in planted:
        (cache / name).write_bytes(HELLO.data)
    # Symlinks at real entry names, leading out of the cache to valid package bytes.
    (cache / f"{DASH.sha256}.bin").symlink_to(outside / "sub" / "dash.webc")
    planted[f"{DASH.sha256}.bin"] = "symlink to a file outside"
    (cache / f"{WABT.sha256}.bin").symlink_to(outside / "sub")
    planted[f"{WABT.sha256}.bin"] = "symlink to a folder outside"
    (cache / f"{COWSAY.sha256}.bin").mkdir()
    (cache / f"{COWSAY.sha256}.bin" / "inner").write_bytes(COWSAY.data)
    planted[f"{COWSAY.sha256}.bin"] = "folder"
    os.mkfifo(cache / f"{STATIC.sha256}.bin")
    planted[f"{STATIC.sha256}.bin"] = "fifo"
    return planted


def test_planted_names_are_never_listed_served_or_retained_away(make_server, outside: Path) -> None:
    """Scan lists none of them, Retain deletes none of them, and nothing outside changes."""
    server = make_server(read_timeout=2.0)
    cache = server.app.settings.cache_dir
    assert cache is not None
    before = snapshot_tree(outside)
    planted = plant(cache, outside)
    server.load(HELLO.url, HELLO.sha256)  # one real entry
    scanned = [e.cache_path for r in server.stub.Scan(pb.ScanRequest()) for e in r.entries]
    assert scanned == [f"{HELLO.sha256}.bin"]
    dry = server.stub.Retain(pb.RetainRequest(max_total_bytes=0, dry_run=True))
    assert [e.cache_path for e in dry.removed] == [f"{HELLO.sha256}.bin"]
    done = server.stub.Retain(
        pb.RetainRequest(
            max_total_bytes=0, keep_sha256=[STATIC.sha256], remove_sha256=[DASH.sha256]
        )
    )
    assert [e.cache_path for e in done.removed] == [f"{HELLO.sha256}.bin"]
    assert (done.kept_files, done.kept_bytes) == (0, 0)
    assert set(planted) <= set(os.listdir(cache))
    assert snapshot_tree(outside) == before


@pytest.mark.parametrize("fixture", [DASH, WABT, COWSAY, STATIC], ids=lambda f: f.name[:6])
def test_a_planted_non_file_at_an_entry_name_is_never_served(
    make_server, outside: Path, fixture
) -> None:
    """A symlink, folder or FIFO named like the entry: the Load downloads, gets the right bytes."""
    server = make_server(read_timeout=2.0)
    cache = server.app.settings.cache_dir
    assert cache is not None
    before = snapshot_tree(outside)
    plant(cache, outside)
    package, content = server.load(fixture.url, fixture.sha256, include_content=True)
    assert package.source == pb.SOURCE_DOWNLOAD
    assert content == fixture.data
    assert snapshot_tree(outside) == before


def test_validate_cache_never_follows_or_prunes_planted_links(make_server, outside: Path) -> None:
    """ValidateCache(PRUNE, deep) checks names of any case, never symlinks, folders or FIFOs."""
    server = make_server()
    cache = server.app.settings.cache_dir
    assert cache is not None
    before = snapshot_tree(outside)
    planted = plant(cache, outside)
    (cache / ("AB" * 32 + ".bin")).write_bytes(b"not what the name says")
    report = server.stub.ValidateCache(
        pb.ValidateCacheRequest(mode=pb.CACHE_VALIDATION_PRUNE, deep=True)
    )
    assert [m.source for m in report.mismatches] == ["AB" * 32 + ".bin"]
    assert report.checked_files == 2  # the uppercase HELLO and the liar; nothing else
    assert not (cache / ("AB" * 32 + ".bin")).exists()
    assert set(planted) <= set(os.listdir(cache))
    assert snapshot_tree(outside) == before


def test_evict_all_of_a_planted_entry_name_fails_cleanly(make_server, outside: Path) -> None:
    """Evict(ALL) of hashes whose names are a symlink or a folder: no INTERNAL, targets intact."""
    server = make_server()
    cache = server.app.settings.cache_dir
    assert cache is not None
    before = snapshot_tree(outside)
    plant(cache, outside)
    codes = {}
    for fixture in (DASH, WABT, COWSAY, STATIC):
        request = pb.EvictRequest(webc_sha256=[fixture.sha256], scope=pb.EVICT_SCOPE_ALL)
        try:
            server.stub.Evict(request)
        except grpc.RpcError as err:
            codes[fixture.name] = (err.code(), err.details())
    assert codes == {}
    assert (cache / f"{COWSAY.sha256}.bin" / "inner").read_bytes() == COWSAY.data
    assert snapshot_tree(outside) == before


def test_a_memory_hit_never_stamps_a_file_through_a_planted_symlink(
    make_server, outside: Path
) -> None:
    """Renewing last use touches the entry itself: a symlink swapped in leads nowhere."""
    server = make_server(touch_interval=0.001)
    cache = server.app.settings.cache_dir
    assert cache is not None
    server.load(HELLO.url, HELLO.sha256)  # in memory now, and on disk
    os.utime(outside / "secret.webc", (1_000_000, 1_000_000))
    entry = cache / f"{HELLO.sha256}.bin"
    entry.unlink()
    entry.symlink_to(outside / "secret.webc")
    before = snapshot_tree(outside)
    assert server.load(HELLO.url, HELLO.sha256)[0].source == pb.SOURCE_MEMORY
    assert snapshot_tree(outside) == before
