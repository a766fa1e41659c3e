"""The real sample packages (read in place, never copied) and a helper that touches everything."""

from __future__ import annotations

from pathlib import Path

from pkgloader.formats import Container, FormatError, open_package

SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "packages"
HELLO = SAMPLES / "hello-0.1.0-665d2ddc-80e6-4845-85d3-4587b1693bb7.webc"
DASH = SAMPLES / "dash-1.0.18-f0d13233-bcda-4cf1-9a23-3460bffaae2a.webc"
WABT = SAMPLES / "wabt-1.0.37.wasmer"
WEBSERVER = SAMPLES / "wasmer-tests--volume-static-webserver@0.1.0.webc"
COWSAY = SAMPLES / "cowsay-0.3.0.tar.gz"
ALL_SAMPLES = [HELLO, DASH, WABT, WEBSERVER, COWSAY]


def exercise(container: Container) -> None:
    """Call every read API on every atom, volume, directory and file."""
    container.manifest.raw  # noqa: B018 - touching it is the point
    container.webc_hash  # noqa: B018
    container.checksum_valid  # noqa: B018
    for atom in container.atoms().values():
        bytes(atom[:16])
    for name, volume in container.volumes().items():
        container.get_volume(name)
        _ = volume.file_count, volume.total_bytes
        pending = ["/"]
        while pending:
            path = pending.pop()
            volume.metadata(path)
            for entry in volume.read_dir(path) or []:
                child = path.rstrip("/") + "/" + entry.name
                if entry.is_dir:
                    pending.append(child)
                else:
                    try:
                        content = volume.read_file(child)
                    except FormatError:
                        continue  # a file placed outside the data is reported, not fatal
                    assert content is not None
                    bytes(content[:16])
    container.validate()


def open_and_exercise(data: bytes) -> None:
    """Parse ``data`` and use all of it; only ``FormatError`` may escape."""
    try:
        container = open_package(data)
    except FormatError:
        return
    try:
        exercise(container)
    except FormatError:
        pass
    finally:
        container.close()
