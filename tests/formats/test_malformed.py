"""Malformed input: every failure is a FormatError with a useful message, never a crash."""

from __future__ import annotations

import gzip
import io
import tarfile
from typing import Any

import cbor2
import pkgloader.formats._tarball as tarball_module
import pytest
from pkgloader.formats import (
    DetectError,
    FormatError,
    TarballLimits,
    detect,
    open_package,
)
from pkgloader.formats import writer as w

from ._helpers import COWSAY, open_and_exercise

# ------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<html><body>", "not a package: expected gzip magic or b'\\x00webc', found b'<html'"),
        (b"\x00webc004" + bytes(100), "Unsupported WEBC version, 004"),
        (b"\x00webc0", "the webc header ends"),
        (b"", "found b''"),
        (b"\x1f", "found b'\\x1f'"),
    ],
)
def test_detect_errors_name_what_was_found(data: bytes, message: str) -> None:
    """detect() and open_package() raise DetectError naming the bytes that were found."""
    with pytest.raises(DetectError, match=message.replace("\\", "\\\\").replace("(", r"\(")):
        detect(data)
    with pytest.raises(DetectError):
        open_package(data)


def test_empty_file_is_a_detect_error(tmp_path: Any) -> None:
    """An empty file cannot be mmapped; it is reported as not a package."""
    path = tmp_path / "empty.webc"
    path.write_bytes(b"")
    with pytest.raises(DetectError, match="empty"):
        open_package(path)


def test_missing_file_is_an_os_error(tmp_path: Any) -> None:
    """A path that does not exist raises FileNotFoundError, not a format error."""
    with pytest.raises(FileNotFoundError):
        open_package(tmp_path / "nope.webc")


# ------------------------------------------------------------------------- truncation


def test_every_truncation_of_hello(hello_bytes: bytes) -> None:
    """Cutting hello at any offset gives a FormatError or a smaller consistent package."""
    for end in range(len(hello_bytes)):
        open_and_exercise(hello_bytes[:end])


def test_every_truncation_of_the_v3_sample(webserver_bytes: bytes) -> None:
    """Cutting the v3 sample at any offset always raises FormatError (spans run past the end)."""
    for end in range(len(webserver_bytes)):
        with pytest.raises(FormatError):
            open_package(webserver_bytes[:end])


def test_every_single_byte_flip_in_hello_structure(hello_bytes: bytes) -> None:
    """Flipping each byte of hello's manifest and volume headers never escapes FormatError."""
    for offset in range(1308, 1535):
        data = bytearray(hello_bytes)
        data[offset] ^= 0xFF
        open_and_exercise(bytes(data))


def test_every_single_byte_flip_in_the_v3_sample(webserver_bytes: bytes) -> None:
    """Flipping each byte of the v3 sample (index, headers, data) never escapes FormatError."""
    for offset in range(len(webserver_bytes)):
        data = bytearray(webserver_bytes)
        data[offset] ^= 0x41
        open_and_exercise(bytes(data))


# ------------------------------------------------------------------------- lengths


def v1_with_body(body: bytes) -> bytes:
    return w.write_v1({}, {}, {})[:1308] + body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (w.uleb128(2**63) + b"\xa0", "manifest needs 9223372036854775808 bytes"),
        (b"\xff" * 11, "not a valid ULEB128"),
        (w.uleb128(1) + b"\xa0" + w.uleb128(10**12), "atoms volume needs"),
        (w.uleb128(1) + b"\xa0" + b"\x01\x00" + w.uleb128(10**15) + b"x", "volume name needs"),
        (
            w.uleb128(1) + b"\xa0" + b"\x01\x00" + b"\x01x" + w.uleb128(2**40),
            "volume 'x' needs",
        ),
    ],
    ids=["manifest", "uleb-overlong", "atoms", "volume-name", "volume"],
)
def test_v1_lengths_past_the_end(body: bytes, message: str) -> None:
    """A v1 length pointing past the end is reported, without allocating the declared size."""
    with pytest.raises(FormatError, match=message):
        open_package(v1_with_body(body))


def test_v1_header_shorter_than_fixed_part() -> None:
    """A v1 file that ends inside the 1308-byte header is a FormatError."""
    with pytest.raises(FormatError, match="webc v1 header"):
        open_package(b"\x00webc001" + b"-" * 16 + bytes(100))


def test_v1_unknown_checksum_type() -> None:
    """An unknown v1 checksum type is rejected."""
    data = bytearray(w.write_v1({}, {}, {}))
    data[8:24] = b"md5-------------"
    with pytest.raises(FormatError, match="unknown checksum type"):
        open_package(bytes(data))


def test_v1_level_length_past_the_header() -> None:
    """A v1 level whose declared length exceeds the header is a FormatError."""
    header, data = w.v1_volume_parts({"f": b"abc"})
    forged = w.u64(2**60) + header[8:]
    blob = w.uleb128(len(forged)) + forged + data
    body = w.uleb128(1) + b"\xa0" + b"\x01\x00" + b"\x01v" + w.uleb128(len(blob)) + blob
    with pytest.raises(FormatError, match="level entries needs"):
        open_package(v1_with_body(body))


@pytest.mark.parametrize("v3", [False, True], ids=["v2", "v3"])
def test_indexed_index_length_past_the_end(v3: bool) -> None:
    """A v2/v3 index length larger than the file is a FormatError."""
    raw = bytearray(w.write_indexed({}, {}, {}, v3=v3))
    raw[9:17] = w.u64(2**64 - 1)
    with pytest.raises(FormatError, match="index needs"):
        open_package(bytes(raw))


@pytest.mark.parametrize("v3", [False, True], ids=["v2", "v3"])
def test_indexed_span_past_the_end(v3: bool) -> None:
    """An index span beyond the end of the file is a FormatError naming the section."""
    raw = w.write_indexed({}, {}, {"v": {"f": b"x"}}, v3=v3)
    index = cbor2.loads(raw[17:])
    index["volumes"]["v"]["span"]["len"] = 10**12
    encoded = cbor2.dumps(index)
    room = int.from_bytes(raw[9:17], "little")
    assert len(encoded) <= room
    forged = raw[:17] + encoded.ljust(room, b"\x00") + raw[17 + room :]
    with pytest.raises(FormatError, match="section volume 'v': span"):
        open_package(forged)


@pytest.mark.parametrize("v3", [False, True], ids=["v2", "v3"])
def test_indexed_section_with_wrong_tag(v3: bool) -> None:
    """A span that lands on a section of another kind is rejected by its tag."""
    raw = w.write_indexed({}, {}, {}, v3=v3)
    index = cbor2.loads(raw[17:])
    index["manifest"] = index["atoms"]
    room = int.from_bytes(raw[9:17], "little")
    forged = raw[:17] + cbor2.dumps(index).ljust(room, b"\x00") + raw[17 + room :]
    with pytest.raises(FormatError, match="has tag 3, expected 1"):
        open_package(forged)


@pytest.mark.parametrize(
    "index",
    [
        [],
        {"manifest": 1, "atoms": 2},
        {"atoms": {}},
        {"manifest": {"span": {"start": -1, "len": 0}}},
    ],
    ids=["array", "scalar-entries", "no-manifest", "negative-span"],
)
def test_indexed_bad_index_shapes(index: object) -> None:
    """An index that is not the documented map is a FormatError."""
    encoded = cbor2.dumps(index)
    raw = b"\x00webc003" + bytes([2]) + w.u64(len(encoded)) + encoded
    with pytest.raises(FormatError):
        open_package(raw)


# ------------------------------------------------------------------------- directory trees


def test_v1_cyclic_directory_is_rejected() -> None:
    """A v1 directory entry pointing back at the root level is detected as a cycle."""
    header, data = w.v1_volume_parts({"d": {"f": b"x"}})
    forged = bytearray(header)
    forged[16:24] = w.u64(0)  # the root's first entry now points at the root level itself
    blob = w.uleb128(len(forged)) + bytes(forged) + data
    body = w.uleb128(1) + b"\xa0" + b"\x01\x00" + b"\x01v" + w.uleb128(len(blob)) + blob
    with pytest.raises(FormatError, match="already in use"):
        open_package(v1_with_body(body))


@pytest.mark.parametrize("v3", [False, True], ids=["v2", "v3"])
def test_indexed_cyclic_directory_is_rejected(v3: bool) -> None:
    """A v2/v3 directory entry pointing back at the root record is detected as a cycle."""
    header, data = w.volume_header({"d": {"f": b"x"}}, v3=v3)
    first_entry = 65 if v3 else 9
    forged = header[:first_entry] + w.u64(0) + header[first_entry + 8 :]
    payload = w.u64(1) + b"v" + w.u64(len(forged)) + forged + w.u64(len(data)) + data
    raw = w.assemble(cbor2.dumps({}), w.atoms_payload({}, v3=v3), {"v": payload}, v3=v3)
    with pytest.raises(FormatError, match="already in use"):
        open_package(raw)


def deep_tree(depth: int) -> w.Tree:
    tree: w.Tree = {"f": b"leaf"}
    for _ in range(depth):
        tree = {"d": tree}
    return tree


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_deep_directories_are_rejected(version: str) -> None:
    """Directories nested 300 deep exceed the depth limit: FormatError, not RecursionError."""
    tree = deep_tree(300)
    if version == "v1":
        raw = w.write_v1({}, {}, {"v": tree})
    else:
        raw = w.write_indexed({}, {}, {"v": tree}, v3=version == "v3")
    with pytest.raises(FormatError, match="nested deeper"):
        open_package(raw)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_moderately_deep_directories_are_fine(version: str) -> None:
    """Directories nested 100 deep are read normally."""
    tree = deep_tree(100)
    if version == "v1":
        raw = w.write_v1({}, {}, {"v": tree})
    else:
        raw = w.write_indexed({}, {}, {"v": tree}, v3=version == "v3")
    with open_package(raw) as c:
        assert list(c.volumes()["v"].files()) == [("/d" * 100 + "/f", 4)]


def test_v1_entry_with_bad_utf8_is_skipped() -> None:
    """A v1 entry whose name is not UTF-8 is skipped, as the reference reader does."""
    header, data = w.v1_volume_parts({"ab": b"1", "ok": b"2"})
    forged = header.replace(b"ab", b"\xff\xfe")
    blob = w.uleb128(len(forged)) + forged + data
    body = w.uleb128(1) + b"\xa0" + b"\x01\x00" + b"\x01v" + w.uleb128(len(blob)) + blob
    with open_package(v1_with_body(body)) as c:
        assert list(c.volumes()["v"].files()) == [("/ok", 1)]


@pytest.mark.parametrize("v3", [False, True], ids=["v2", "v3"])
def test_indexed_entry_with_bad_utf8_is_rejected(v3: bool) -> None:
    """A v2/v3 entry or volume name that is not UTF-8 is a FormatError."""
    header, data = w.volume_header({"ab": b"1"}, v3=v3)
    forged = header.replace(b"ab", b"\xff\xfe")
    payload = w.u64(1) + b"v" + w.u64(len(forged)) + forged + w.u64(len(data)) + data
    raw = w.assemble(cbor2.dumps({}), w.atoms_payload({}, v3=v3), {"v": payload}, v3=v3)
    with pytest.raises(FormatError, match="not UTF-8"):
        open_package(raw)
    payload = w.u64(1) + b"\xff" + w.u64(len(header)) + header + w.u64(len(data)) + data
    raw = w.assemble(cbor2.dumps({}), w.atoms_payload({}, v3=v3), {"v": payload}, v3=v3)
    with pytest.raises(FormatError, match="not UTF-8"):
        open_package(raw)


@pytest.mark.parametrize("name", [b"..", b".", b"a/b", b""])
def test_entry_names_that_are_not_a_single_segment_are_rejected(name: bytes) -> None:
    """Entry names such as '..', '.', 'a/b' or '' could alias other paths: FormatError."""
    header, data = w.volume_header({"zz": b"1"}, v3=True)
    forged = header.replace(w.u64(2) + b"zz", w.u64(len(name)) + name)
    payload = w.u64(1) + b"v" + w.u64(len(forged)) + forged + w.u64(len(data)) + data
    raw = w.assemble(cbor2.dumps({}), w.atoms_payload({}, v3=True), {"v": payload}, v3=True)
    with pytest.raises(FormatError):
        open_package(raw)


def test_file_range_out_of_bounds_is_reported_not_fatal() -> None:
    """A volume file placed past the data opens, read_file raises and validate() names it."""
    header, data = w.volume_header({"f": b"abc"}, v3=False)
    forged = header.replace(w.u64(0) + w.u64(3), w.u64(0) + w.u64(1000))
    payload = w.u64(1) + b"v" + w.u64(len(forged)) + forged + w.u64(len(data)) + data
    raw = w.assemble(cbor2.dumps({}), w.atoms_payload({}, v3=False), {"v": payload}, v3=False)
    with open_package(raw) as c:
        with pytest.raises(FormatError, match="outside"):
            c.volumes()["v"].read_file("/f")
        (problem,) = c.validate()
        assert "file '/f' spans bytes [0, 1000)" in problem


def test_atom_out_of_bounds_is_fatal() -> None:
    """An atom placed past the atoms data fails at open: atoms are handed out as views."""
    header, data = w.volume_header({"a": b"\x00asm"}, v3=True)
    forged = header.replace(w.u64(0) + w.u64(4), w.u64(0) + w.u64(99))
    atoms = w.u64(len(forged)) + forged + w.u64(len(data)) + data
    raw = w.assemble(cbor2.dumps({}), atoms, {}, v3=True)
    with pytest.raises(FormatError, match="atom 'a' spans"):
        open_package(raw)


# ------------------------------------------------------------------------- manifests


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (b"\x80", "must be a map, found list"),
        (b"\x01", "must be a map, found int"),
        (b"\x9b" + (2**62).to_bytes(8, "big"), "declares 4611686018427387904 items"),
        (b"\xbb" + (2**62).to_bytes(8, "big"), "declares 4611686018427387904 items"),
        (b"\x5b" + (2**62).to_bytes(8, "big"), "needs 4611686018427387904 bytes"),
        (b"\xa1\x61a\x62\xff\xfe", "not UTF-8"),
        (b"\x81" * 200 + b"\x00", "nested deeper"),
        (b"\xa1\x81\x00\x00", "unsupported map key"),
        (b"\xff", "unexpected break"),
        (b"\x1c", "reserved"),
        (cbor2.dumps({"commands": {"x": {"annotations": {}}}}), "has no runner"),
        (cbor2.dumps({"commands": {"x": {"runner": 1}}}), "runner must be a string"),
        (cbor2.dumps({"atoms": {"x": {"kind": "k"}}}), "has no signature"),
        (cbor2.dumps({"atoms": []}), "atoms must be a map"),
        (cbor2.dumps({"entrypoint": 3}), "entrypoint must be a string"),
        (cbor2.dumps({"use": {"x": 1}}), "must be a string or a manifest"),
        (cbor2.dumps({"use": {"x": {"package": {}}}}), "Unable to determine a package"),
        (cbor2.dumps({"bindings": {}}), "bindings must be an array"),
        (cbor2.dumps({"bindings": [{"name": "b"}]}), "has no kind"),
        (cbor2.dumps({1: 2}), "non-string key"),
    ],
)
def test_bad_manifests(manifest: bytes, message: str) -> None:
    """Manifests of the wrong shape, hostile lengths or bad UTF-8 raise FormatError."""
    for raw in (
        v1_with_body(w.uleb128(len(manifest)) + manifest + b"\x01\x00"),
        w.assemble(manifest, w.atoms_payload({}, v3=True), {}, v3=True),
    ):
        with pytest.raises(FormatError, match=message):
            open_package(raw)


# ------------------------------------------------------------------------- tar.gz


def make_tarball(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, content in members:
            if content is not None:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return gzip.compress(buffer.getvalue(), mtime=0)


def regular(name: str, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), content


WAPM = b'[package]\nname = "a/b"\nversion = "1.0.0"\ndescription = "d"\n'


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (regular("../evil", b"x"), "'..' path segment"),
        (regular("a/../../evil", b"x"), "'..' path segment"),
        (regular("/etc/passwd", b"x"), "absolute path"),
        (special("link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (special("hard", tarfile.LNKTYPE, "wapm.toml"), "hard link"),
        (special("dev", tarfile.CHRTYPE), "device"),
        (special("blk", tarfile.BLKTYPE), "device"),
        (special("fifo", tarfile.FIFOTYPE), "fifo"),
        (regular("wapm.toml", b"again"), "appears twice"),
    ],
)
def test_tarball_rejects_unsafe_members(member: tuple[tarfile.TarInfo, Any], message: str) -> None:
    """Members that could escape the root or are not plain files are rejected by name."""
    raw = make_tarball([regular("wapm.toml", WAPM), member])
    with pytest.raises(FormatError, match=message):
        open_package(raw)


def test_tarball_member_limit() -> None:
    """A member larger than the per-member limit is rejected before it is read."""
    raw = make_tarball([regular("wapm.toml", WAPM), regular("big.bin", b"\x00" * 5000)])
    with pytest.raises(FormatError, match="over the 4096-byte limit per member"):
        open_package(raw, limits=TarballLimits(max_member_bytes=4096))
    with open_package(raw) as c:  # the default limits accept it
        assert dict(c.volumes()["metadata"].files())["/big.bin"] == 5000


def test_tarball_total_and_count_limits() -> None:
    """The total size and the number of members are bounded too."""
    members = [regular("wapm.toml", WAPM)] + [regular(f"f{i}", b"x" * 100) for i in range(20)]
    raw = make_tarball(members)
    with pytest.raises(FormatError, match="add up to more than the 1000-byte limit"):
        open_package(raw, limits=TarballLimits(max_total_bytes=1000))
    with pytest.raises(FormatError, match="more than 10 members"):
        open_package(raw, limits=TarballLimits(max_members=10))


def test_tarball_gzip_bomb_in_metadata_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decompressed bytes are capped even when no member declares them (a huge pax header)."""
    info = tarfile.TarInfo("wapm.toml")
    info.pax_headers = {"comment": "x" * (3 * 2**20)}
    raw = make_tarball([(info, WAPM)])
    # The cap is the total limit plus a fixed allowance for tar metadata; shrink both.
    monkeypatch.setattr(tarball_module, "_METADATA_ALLOWANCE", 2**20)
    with pytest.raises(FormatError, match="decompresses to more than"):
        open_package(raw, limits=TarballLimits(max_total_bytes=0))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x1f\x8b" + b"garbage" * 10, "cannot decode"),
        (COWSAY.read_bytes()[:5000], "cannot decode"),
        (gzip.compress(b"not a tar archive at all" * 100), "cannot decode"),
        (make_tarball([regular("README.md", b"hi")]), 'Unable to find the "wasmer.toml"'),
        (make_tarball([regular("pkg/wasmer.toml", WAPM)]), 'Unable to find the "wasmer.toml"'),
        (make_tarball([regular("wasmer.toml", b"[package\n")]), "wasmer.toml:"),
        (make_tarball([regular("wasmer.toml", b"\xff\xfe")]), "not UTF-8"),
        (
            make_tarball([regular("wasmer.toml", b'[[module]]\nname = "m"\nsource = "m.wasm"\n')]),
            "not in the archive",
        ),
        (
            make_tarball([regular("wasmer.toml", b'[dependencies]\n"a/b" = "not a version"\n')]),
            "invalid version requirement",
        ),
    ],
    ids=["garbage", "truncated", "not-tar", "no-manifest", "nested-manifest", "bad-toml",
         "bad-utf8", "missing-module", "bad-version"],
)  # fmt: skip
def test_tarball_decode_and_manifest_errors(raw: bytes, message: str) -> None:
    """gzip/tar decoding errors and unusable wasmer.toml files are FormatErrors."""
    with pytest.raises(FormatError, match=message):
        open_package(raw)
