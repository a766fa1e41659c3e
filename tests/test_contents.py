"""GetAtom, ReadFile and ListDirectory against a real server on port 0, on every fixture and format
(webc v1, v2, v3, tar.gz): bytes equal the reader's, hashes and signatures checked, corrupt content
refused with DATA_LOSS, every NOT_FOUND and INVALID_ARGUMENT with its reason."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from pkgloader import contents, formats
from pkgloader.formats import writer as w
from pkgloader_client import pb

from tests.conftest import ALL, COWSAY, DASH, STATIC, Running, load_request, sha256
from tests.test_load import error_info, expect_error


@dataclass(frozen=True)
class Pkg:
    """A package the tests load by file:// URL: a fixture, or one written by the tests."""

    name: str
    path: Path
    sha256: str

    @property
    def url(self) -> str:
        return self.path.as_uri()


def _signed(atoms: dict[str, bytes]) -> dict[str, Any]:
    return {
        "package": {"wapm": {"name": "test/contents", "version": "1.0.0"}},
        "atoms": {
            name: {
                "kind": "https://webc.org/kind/wasm",
                "signature": "sha256:" + base64.b64encode(hashlib.sha256(data).digest()).decode(),
            }
            for name, data in atoms.items()
        },
    }


ATOMS = {"big": b"\0asm" + bytes(range(256)) * 5000, "small": b"\0asm\x01\0\0\0"}  # 1.2 MiB
TREE = {
    "README.md": b"# written by the tests\n",
    "lib": {"a.py": b"print('a')\n", "deep": {"b.bin": bytes(range(256)) * 4100}},
    "empty": {},
}


def _write(folder: Path, name: str, data: bytes) -> Pkg:
    path = folder / name
    path.write_bytes(data)
    return Pkg(name, path, sha256(data))


@pytest.fixture
def packages(tmp_path: Path) -> list[Pkg]:
    """The five real fixtures, plus a webc v2 and a v3 package with signed atoms and nested trees
    (no v2 fixture exists), written under the server's file root."""
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    written = [
        _write(files, f"written-{v}.webc", w.write_indexed(_signed(ATOMS), ATOMS, vols, v3=v3))
        for v, v3, vols in (
            ("v2", False, {"atom": TREE, "metadata": {}}),
            ("v3", True, {"/data": TREE}),
        )
    ]
    return [Pkg(f.name, f.path, f.sha256) for f in ALL] + written


def get_atom(server: Running, sha: str, name: str, **kw: Any) -> tuple[pb.ContentInfo, bytes]:
    items = list(
        server.stub.GetAtom(pb.GetAtomRequest(webc_sha256=sha, atom_name=name, **kw), timeout=60)
    )
    return _split(items)


def read_file(server: Running, sha: str, volume: str, path: str, **kw: Any) -> tuple[Any, bytes]:
    request = pb.ReadFileRequest(webc_sha256=sha, volume=volume, path=path, **kw)
    return _split(list(server.stub.ReadFile(request, timeout=60)))


def list_dir(
    server: Running, sha: str, volume: str, path: str = "/", recursive: bool = False, **kw: Any
) -> pb.ListDirectoryResponse:
    request = pb.ListDirectoryRequest(
        webc_sha256=sha, volume=volume, path=path, recursive=recursive, **kw
    )
    response: pb.ListDirectoryResponse = server.stub.ListDirectory(request, timeout=60)
    return response


def _split(items: list[Any]) -> tuple[pb.ContentInfo, bytes]:
    assert items[0].WhichOneof("item") == "info"
    assert all(i.WhichOneof("item") == "chunk" for i in items[1:])
    assert all(len(i.chunk) <= 1024 * 1024 for i in items[1:])
    return items[0].info, b"".join(i.chunk for i in items[1:])


def reason_of(call: Callable[[], object], code: grpc.StatusCode) -> str:
    return error_info(expect_error(call, code)).reason


def _files(volume: formats.Volume) -> dict[str, bytes]:
    return {path: bytes(volume.read_file(path) or b"") for path, _ in volume.files()}


def test_every_atom_of_every_format_streams_the_readers_bytes(
    server: Running, packages: list[Pkg]
) -> None:
    """Each atom of v1, v2, v3 and tar.gz packages arrives with the reader's bytes, its computed
    sha256, and the manifest's signature and kind, which the sha256 matches."""
    seen = 0
    for pkg in packages:
        server.load(pkg.url, pkg.sha256)
        with formats.open_package(pkg.path) as container:
            for atom in container.manifest.atoms:
                info, data = get_atom(server, pkg.sha256, atom.name)
                expected = bytes(container.get_atom(atom.name) or b"")
                assert data == expected, (pkg.name, atom.name)
                assert info.name == atom.name
                assert info.size == len(expected)
                assert info.sha256 == hashlib.sha256(expected).hexdigest()
                assert info.signature == atom.signature
                assert info.kind == atom.kind
                assert contents.signature_sha256(atom.signature) == info.sha256
                seen += 1
    assert seen >= 1 + 7 + 1 + 2 + 2  # dash, wabt, cowsay, both written packages


def test_every_file_of_every_volume_reads_back_and_lists(
    server: Running, packages: list[Pkg]
) -> None:
    """A recursive listing of each volume names exactly the reader's files, with sizes; ReadFile
    of each listed path gives the reader's bytes and their sha256."""
    for pkg in packages:
        server.load(pkg.url, pkg.sha256)
        with formats.open_package(pkg.path) as container:
            for name, volume in container.volumes().items():
                expected = _files(volume)
                listing = list_dir(server, pkg.sha256, name, "/", recursive=True)
                assert not listing.truncated
                assert listing.total_entries == len(listing.entries)
                listed = {e.path: e for e in listing.entries if e.kind == pb.ENTRY_KIND_FILE}
                assert set(listed) == set(expected), (pkg.name, name)
                for path, data in list(expected.items())[:25]:
                    assert listed[path].size == len(data)
                    info, got = read_file(server, pkg.sha256, name, path)
                    assert got == data, (pkg.name, name, path)
                    assert info.sha256 == hashlib.sha256(data).hexdigest()
                    assert info.size == len(data)
                    assert info.name == path
                    assert info.volume == name


def test_listing_is_one_level_unless_recursive(server: Running, packages: list[Pkg]) -> None:
    """Without `recursive` a directory's own entries, with kinds; each path is absolute and is
    what ListDirectory/ReadFile accept."""
    v2 = next(p for p in packages if p.name == "written-v2.webc")
    server.load(v2.url, v2.sha256)
    top = list_dir(server, v2.sha256, "atom")
    kinds = {e.path: e.kind for e in top.entries}
    assert kinds == {
        "/README.md": pb.ENTRY_KIND_FILE,
        "/empty": pb.ENTRY_KIND_DIRECTORY,
        "/lib": pb.ENTRY_KIND_DIRECTORY,
    }
    lib = list_dir(server, v2.sha256, "atom", "/lib")
    assert [e.path for e in lib.entries] == ["/lib/a.py", "/lib/deep"]
    deep = list_dir(server, v2.sha256, "atom", "lib/deep/")  # relative and trailing slash
    assert [(e.path, e.size) for e in deep.entries] == [("/lib/deep/b.bin", 256 * 4100)]
    assert list_dir(server, v2.sha256, "atom", "/empty").entries == []
    everything = list_dir(server, v2.sha256, "atom", "", recursive=True)
    assert len(everything.entries) == everything.total_entries == 6


def test_v3_listing_carries_recorded_hashes_and_modified_times(server: Running) -> None:
    """webc v3 records each file's sha256 and modified time; the listing and ReadFile pass them."""
    server.load(STATIC.url, STATIC.sha256)
    listing = list_dir(server, STATIC.sha256, "/settings", "/", recursive=True)
    config = next(e for e in listing.entries if e.path == "/config.toml")
    info, data = read_file(server, STATIC.sha256, "/settings", "/config.toml")
    assert config.sha256 == info.sha256 == hashlib.sha256(data).hexdigest()
    assert config.modified.seconds == info.modified.seconds == 1725977743


def test_a_v3_time_of_zero_is_no_time(server: Running, tmp_path: Path) -> None:
    """A v3 entry whose modified time is 0 (none recorded) has `modified` unset in ReadFile and
    ListDirectory, not 1970-01-01; a recorded time beside it still comes through."""
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    tree = {"stamped.txt": b"a\n", "plain.txt": b"b\n", "dir": {"x.txt": b"c\n"}}
    data = w.write_indexed(
        _signed({}), {}, {"/data": tree}, v3=True, modified={"/data": {"/stamped.txt": 1700000000}}
    )
    pkg = _write(files, "zero-times.webc", data)
    server.load(pkg.url, pkg.sha256)
    listing = list_dir(server, pkg.sha256, "/data", "/", recursive=True)
    stamps = {
        e.path: e.modified.seconds if e.HasField("modified") else None for e in listing.entries
    }
    assert stamps == {
        "/stamped.txt": 1700000000,
        "/plain.txt": None,
        "/dir": None,
        "/dir/x.txt": None,
    }
    plain, _ = read_file(server, pkg.sha256, "/data", "/plain.txt")
    assert not plain.HasField("modified")
    stamped, _ = read_file(server, pkg.sha256, "/data", "/stamped.txt")
    assert stamped.modified.seconds == 1700000000


def test_atom_not_found_lists_the_atoms_that_can_be_served(server: Running, tmp_path: Path) -> None:
    """GetAtom serves an atom of the atoms section the manifest omits, so its NOT_FOUND message
    lists that one too, not only the manifest's."""
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    manifest = _signed({"small": ATOMS["small"]})  # "extra" is in the section only
    atoms = {"small": ATOMS["small"], "extra": b"\0asm\x01\0\0\0extra"}
    pkg = _write(files, "extra-atom.webc", w.write_indexed(manifest, atoms, {}, v3=True))
    server.load(pkg.url, pkg.sha256)
    _, served = get_atom(server, pkg.sha256, "extra")
    assert served == atoms["extra"]
    err = expect_error(lambda: get_atom(server, pkg.sha256, "nope"), grpc.StatusCode.NOT_FOUND)
    assert error_info(err).reason == "ATOM_NOT_FOUND"
    assert "(atoms: extra, small)" in err.details()


def test_a_flipped_byte_in_a_signed_atom_is_data_loss(server: Running, tmp_path: Path) -> None:
    """A copy of a real package with one byte of a signed atom flipped loads (under its own new
    sha256), but GetAtom refuses the atom with DATA_LOSS before sending anything of it."""
    data = bytearray(DASH.data)
    with formats.open_package(DASH.path) as container:
        atom = bytes(container.get_atom("dash") or b"")
    start = data.find(atom[:4096])
    assert start > 0
    data[start + len(atom) // 2] ^= 0xFF
    corrupt = _write(tmp_path / "files", "dash-corrupt.webc", bytes(data))
    package, _ = server.load(corrupt.url, corrupt.sha256)
    assert package.manifest.atoms[0].signature.startswith("sha256:")
    received: list[Any] = []

    def drain() -> None:
        call = server.stub.GetAtom(
            pb.GetAtomRequest(webc_sha256=corrupt.sha256, atom_name="dash"), timeout=60
        )
        received.extend(call)

    err = expect_error(drain, grpc.StatusCode.DATA_LOSS)
    info = error_info(err)
    assert info.reason == "CONTENT_HASH_MISMATCH"
    assert info.metadata["expected_sha256"] == hashlib.sha256(atom).hexdigest()
    assert received == []  # not even the info item went out


def test_a_v3_file_that_does_not_match_its_recorded_hash_is_data_loss(
    server: Running, tmp_path: Path
) -> None:
    """ReadFile checks a v3 file against the sha256 its header records: a mismatch is DATA_LOSS."""
    raw = bytearray(w.write_indexed({}, {}, {"v": {"f.txt": b"UNIQUE-CONTENT-1234"}}, v3=True))
    raw[raw.find(b"UNIQUE-CONTENT-1234")] ^= 0x01
    pkg = _write(tmp_path / "files", "v3-corrupt.webc", bytes(raw))
    server.load(pkg.url, pkg.sha256)
    reason = reason_of(
        lambda: read_file(server, pkg.sha256, "v", "/f.txt"), grpc.StatusCode.DATA_LOSS
    )
    assert reason == "CONTENT_HASH_MISMATCH"


def test_not_found_cases_carry_their_reasons(server: Running) -> None:
    """A package not cached, a missing atom, volume or path: NOT_FOUND with the reason for each."""
    nf = grpc.StatusCode.NOT_FOUND
    missing = "ab" * 32
    assert reason_of(lambda: get_atom(server, missing, "x"), nf) == "PACKAGE_NOT_CACHED"
    assert reason_of(lambda: read_file(server, missing, "atom", "/a"), nf) == "PACKAGE_NOT_CACHED"
    assert reason_of(lambda: list_dir(server, missing, "atom"), nf) == "PACKAGE_NOT_CACHED"
    server.load(DASH.url, DASH.sha256)
    assert reason_of(lambda: get_atom(server, DASH.sha256, "nope"), nf) == "ATOM_NOT_FOUND"
    assert reason_of(lambda: read_file(server, DASH.sha256, "nope", "/a"), nf) == (
        "VOLUME_NOT_FOUND"
    )
    assert reason_of(lambda: list_dir(server, DASH.sha256, "nope"), nf) == "VOLUME_NOT_FOUND"
    assert reason_of(lambda: read_file(server, DASH.sha256, "atom", "/nope"), nf) == (
        "PATH_NOT_FOUND"
    )
    assert reason_of(lambda: list_dir(server, DASH.sha256, "atom", "/nope"), nf) == (
        "PATH_NOT_FOUND"
    )


def test_a_directory_is_not_a_file_and_a_file_not_a_directory(
    server: Running, packages: list[Pkg]
) -> None:
    """ReadFile of a directory and ListDirectory of a file are PATH_NOT_FOUND, saying why."""
    v2 = next(p for p in packages if p.name == "written-v2.webc")
    server.load(v2.url, v2.sha256)
    err = expect_error(
        lambda: read_file(server, v2.sha256, "atom", "/lib"), grpc.StatusCode.NOT_FOUND
    )
    assert error_info(err).reason == "PATH_NOT_FOUND"
    assert "directory" in (err.details() or "")
    err = expect_error(
        lambda: list_dir(server, v2.sha256, "atom", "/README.md"), grpc.StatusCode.NOT_FOUND
    )
    assert error_info(err).reason == "PATH_NOT_FOUND"
    assert "file" in (err.details() or "")


@pytest.mark.parametrize("path", ["/lib/../README.md", "..", "/lib\\a.py", "/lib/a.py\x00"])
def test_unsafe_paths_are_invalid_argument(server: Running, packages: list[Pkg], path: str) -> None:
    """A path with `..`, a backslash or NUL is INVALID_ARGUMENT for ReadFile and ListDirectory."""
    v2 = next(p for p in packages if p.name == "written-v2.webc")
    server.load(v2.url, v2.sha256)
    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(lambda: read_file(server, v2.sha256, "atom", path), bad) == "INVALID_PATH"
    assert reason_of(lambda: list_dir(server, v2.sha256, "atom", path), bad) == "INVALID_PATH"


def test_bad_hashes_and_disagreeing_summaries_are_invalid_argument(server: Running) -> None:
    """A malformed sha256, or a summary naming another package than webc_sha256, is refused."""
    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(lambda: get_atom(server, "xyz", "dash"), bad) == "INVALID_SHA256"
    assert reason_of(lambda: list_dir(server, "", "atom"), bad) == "INVALID_SHA256"
    summary = load_request(DASH.url, DASH.sha256).summary
    assert (
        reason_of(lambda: get_atom(server, COWSAY.sha256, "dash", summary=summary), bad)
        == "INVALID_ARGUMENT"
    )


def test_a_summary_loads_an_uncached_package_as_load_does(server: Running) -> None:
    """With a summary, a package not yet cached is loaded first (and then is cached)."""
    summary = load_request(DASH.url, DASH.sha256).summary
    assert server.app.loader.cached(DASH.sha256) is None
    info, data = get_atom(server, "", "dash", summary=summary)
    with formats.open_package(DASH.path) as container:
        assert data == bytes(container.get_atom("dash") or b"")
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    listing = list_dir(server, DASH.sha256, "atom", recursive=True, summary=summary)
    first = next(e.path for e in listing.entries if e.kind == pb.ENTRY_KIND_FILE)
    assert read_file(server, DASH.sha256, "atom", first)[1]  # cached now: no summary needed


def test_contents_are_read_from_the_disk_tier(
    make_server: Callable[..., Running], packages: list[Pkg]
) -> None:
    """A second server on the same cache, with nothing in memory, serves from the disk file; a
    server whose memory tier holds nothing reads every call through the disk."""
    first = make_server()
    v3 = next(p for p in packages if p.name == "written-v3.webc")
    first.load(v3.url, v3.sha256)
    second = make_server(memory_cache_bytes=0)
    info, data = get_atom(second, v3.sha256, "big")
    assert data == ATOMS["big"]
    assert info.sha256 == hashlib.sha256(ATOMS["big"]).hexdigest()
    assert read_file(second, v3.sha256, "/data", "/lib/deep/b.bin")[1] == bytes(range(256)) * 4100
    assert second.app.loader.memory.get(v3.sha256) is None


def test_a_huge_listing_is_truncated_with_its_total(server: Running, tmp_path: Path) -> None:
    """A volume with more entries than MAX_ENTRIES lists the first ones, `truncated`, and the
    total count, so the response stays bounded."""
    count = contents.MAX_ENTRIES + 50
    tree = {f"f{i:05d}": b"" for i in range(count)}
    pkg = _write(tmp_path / "files", "many.webc", w.write_indexed({}, {}, {"v": tree}, v3=False))
    server.load(pkg.url, pkg.sha256)
    listing = list_dir(server, pkg.sha256, "v", "/")
    assert listing.truncated
    assert listing.total_entries == count
    assert len(listing.entries) == contents.MAX_ENTRIES
    assert listing.ByteSize() < 4 * 1024 * 1024


def test_contents_calls_need_a_token_when_auth_is_on(make_server: Callable[..., Running]) -> None:
    """The new RPCs are reader calls: refused without a token, served with a reader's."""
    server = make_server(auth_tokens={"reader-token": "reader"})
    reader = (("authorization", "Bearer reader-token"),)
    server.stub.Load(load_request(DASH.url, DASH.sha256), metadata=reader, timeout=60).next()
    request = pb.ListDirectoryRequest(webc_sha256=DASH.sha256, volume="atom", path="/")
    err = expect_error(
        lambda: server.stub.ListDirectory(request, timeout=30), grpc.StatusCode.UNAUTHENTICATED
    )
    assert error_info(err).reason == "UNAUTHENTICATED"
    atom = pb.GetAtomRequest(webc_sha256=DASH.sha256, atom_name="dash")
    expect_error(
        lambda: list(server.stub.GetAtom(atom, timeout=30)), grpc.StatusCode.UNAUTHENTICATED
    )
    assert server.stub.ListDirectory(request, metadata=reader, timeout=30).entries
    assert list(server.stub.GetAtom(atom, metadata=reader, timeout=30))


def test_a_disk_atom_remembered_once_still_never_arrives_whole_when_damaged(
    make_server: Callable[..., Running], packages: list[Pkg]
) -> None:
    """From disk, an atom's verified sha256 is remembered after the first GetAtom, so later calls
    hash it once, while streaming: a cache file damaged in place after that is still refused
    (DATA_LOSS) before the atom's last chunk goes out."""
    server = make_server(memory_cache_bytes=0)
    v2 = next(p for p in packages if p.name == "written-v2.webc")
    package, _ = server.load(v2.url, v2.sha256)
    good = hashlib.sha256(ATOMS["big"]).hexdigest()
    assert get_atom(server, v2.sha256, "big") == (get_atom(server, v2.sha256, "big"))
    assert server.app.settings.cache_dir is not None
    cached = server.app.settings.cache_dir / package.cache_path
    raw = bytearray(cached.read_bytes())
    raw[raw.find(ATOMS["big"][:4096]) + len(ATOMS["big"]) // 2] ^= 0xFF
    cached.write_bytes(bytes(raw))  # the same size: only a hash can tell
    received: list[Any] = []

    def drain() -> None:
        request = pb.GetAtomRequest(webc_sha256=v2.sha256, atom_name="big")
        received.extend(server.stub.GetAtom(request, timeout=60))

    assert reason_of(drain, grpc.StatusCode.DATA_LOSS) == "CONTENT_HASH_MISMATCH"
    assert received[0].info.sha256 == good  # the remembered digest, told before the bytes
    assert 0 < sum(len(item.chunk) for item in received[1:]) < len(ATOMS["big"])
