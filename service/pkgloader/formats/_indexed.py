"""webc v2 and v3 (doc §3.2, §3.3): an index section, then sections located by its spans.

The two versions differ only in a 32-byte hash after each section's tag (v3) and in the volume
header records (see ``_volume_header``).
"""

from __future__ import annotations

from ._binary import Cursor
from ._cbor import decode_cbor
from ._errors import FormatError
from ._parsed import Parsed
from ._source import Region
from ._volume import FileNode, Volume
from ._volume_header import parse_volume_header

TAG_MANIFEST = 1
TAG_INDEX = 2
TAG_ATOMS = 3
TAG_VOLUME = 4

_CHECKSUMS = ("checksum-none", "checksum-sha256")


class _Section:
    __slots__ = ("checksum", "declared_hash", "label", "payload")

    def __init__(
        self, label: str, payload: Region, declared_hash: bytes | None, checksum: bytes | None
    ) -> None:
        self.label = label
        self.payload = payload
        self.declared_hash = declared_hash  # v3: the hash stored after the tag
        self.checksum = checksum  # the index's checksum-sha256 value, if any


def parse_indexed(data: Region, *, v3: bool) -> Parsed:
    name = "webc v3" if v3 else "webc v2"
    head = Cursor(data, name, pos=8)
    tag = head.u8("index tag")
    if tag != TAG_INDEX:
        raise FormatError(f"{name}: the first section has tag {tag}, expected {TAG_INDEX} (index)")
    index_len = head.u64("index length")
    index = _dict(decode_cbor(head.take(index_len, "index"), f"{name} index"), f"{name} index")

    def section(key: str, entry: object, expected_tag: int) -> _Section:
        label = f"{name} section {key}"
        entry = _dict(entry, f"{name} index entry {key}")
        span = _dict(entry.get("span"), f"{label} span")
        start, length = span.get("start"), span.get("len")
        if not isinstance(start, int) or not isinstance(length, int) or start < 0 or length < 0:
            raise FormatError(f"{label}: span must hold non-negative integers start and len")
        if start + length > len(data):
            raise FormatError(
                f"{label}: span [{start}, {start + length}) runs past the end of the "
                f"{len(data)}-byte file"
            )
        checksum_entry = _dict(entry.get("checksum"), f"{label} checksum")
        checksum_tag = checksum_entry.get("tag")
        if checksum_tag not in _CHECKSUMS:
            raise FormatError(f"{label}: unknown checksum tag {checksum_tag!r}")
        checksum_value = checksum_entry.get("value")
        if not isinstance(checksum_value, bytes):
            raise FormatError(f"{label}: checksum value must be a byte string")
        cursor = Cursor(data, label, pos=start, end=start + length)
        found = cursor.u8("tag")
        if found != expected_tag:
            raise FormatError(f"{label}: has tag {found}, expected {expected_tag}")
        declared = bytes(cursor.take(32, "section hash")) if v3 else None
        payload = cursor.skip(cursor.u64("payload length"), "payload")
        return _Section(
            label,
            payload,
            declared,
            checksum_value if checksum_tag == "checksum-sha256" else None,
        )

    for key in ("manifest", "atoms"):
        if key not in index:
            raise FormatError(f"{name} index: no {key} entry")
    manifest_section = section("manifest", index["manifest"], TAG_MANIFEST)
    manifest = decode_cbor(manifest_section.payload.read(), f"{name} manifest")

    atoms_section = section("atoms", index["atoms"], TAG_ATOMS)
    cursor = Cursor(atoms_section.payload, atoms_section.label)
    header = cursor.take(cursor.u64("header length"), "header")
    atoms_data = cursor.skip(cursor.u64("data length"), "data")
    atoms_root = parse_volume_header(header, atoms_data, v3=v3, what="atoms")
    atoms: dict[str, Region] = {}
    for atom_name, node in atoms_root.children.items():
        if isinstance(node, FileNode):  # directories in the atoms header are ignored
            if not node.in_bounds:
                raise FormatError(
                    f"{atoms_section.label}: atom {atom_name!r} spans bytes "
                    f"[{node.start}, {node.end}), outside the {len(atoms_data)} data bytes"
                )
            atoms[atom_name] = atoms_data.sub(node.start, node.size)

    # Kept only so ``validate`` can check the atoms' header hashes like any volume's.
    atoms_volume = Volume("(atoms)", atoms_root, expose_hashes=False)
    sections = [manifest_section, atoms_section]
    volumes: dict[str, Volume] = {}
    names_in_payload: dict[str, str] = {}
    for raw_key, entry in _dict(index.get("volumes", {}), f"{name} index volumes").items():
        if not isinstance(raw_key, str):
            raise FormatError(f"{name} index: volume name {raw_key!r} is not a string")
        key = raw_key
        vol = section(f"volume {key!r}", entry, TAG_VOLUME)
        sections.append(vol)
        cursor = Cursor(vol.payload, vol.label)
        raw_name = bytes(cursor.take(cursor.u64("name length"), "name"))
        try:
            names_in_payload[key] = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{vol.label}: the volume name is not UTF-8") from None
        header = cursor.take(cursor.u64("header length"), "header")
        volume_data = cursor.skip(cursor.u64("data length"), "data")
        root = parse_volume_header(header, volume_data, v3=v3, what=f"volume {key!r}")
        volumes[key] = Volume(key, root, expose_hashes=v3)

    def problems() -> list[str]:
        found: list[str] = []
        for sec in sections:
            digest = sec.payload.sha256()
            if sec.declared_hash is not None and sec.declared_hash != digest:
                found.append(
                    f"{sec.label}: section hash {sec.declared_hash.hex()} does not match the "
                    f"payload's sha256 {digest.hex()}"
                )
            if sec.checksum is not None and sec.checksum != digest:
                found.append(
                    f"{sec.label}: index checksum {sec.checksum.hex()} does not match the "
                    f"payload's sha256 {digest.hex()}"
                )
        for key, in_payload in names_in_payload.items():
            if in_payload != key:
                found.append(f"{name} volume {key!r}: the section names itself {in_payload!r}")
        for volume in (atoms_volume, *volumes.values()):
            found.extend(volume.problems(file_hashes=True, merkle=v3))
        return found

    return Parsed(
        format="webc-v3" if v3 else "webc-v2",
        version="003" if v3 else "002",
        manifest=manifest,
        atoms=dict(sorted(atoms.items())),
        volumes=volumes,
        problems=problems,
    )


def _dict(value: object, what: str) -> dict[object, object]:
    if not isinstance(value, dict):
        raise FormatError(f"{what} must be a CBOR map, found {type(value).__name__}")
    return value
