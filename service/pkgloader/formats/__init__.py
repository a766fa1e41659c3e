"""pkgloader.formats: a pure-Python reader for Wasmer packages (webc v1/v2/v3 and tar.gz).

It depends only on the standard library and ``cbor2``; it knows nothing of gRPC, caching or
HTTP. Start with ``open_package``; every failure caused by the bytes is a ``FormatError``.
"""

from ._container import Container, open_package
from ._detect import detect
from ._errors import DetectError, FormatError
from ._json import JSON, to_jsonable
from ._manifest import Atom, Binding, Command, Dependency, Manifest
from ._tarball import TarballLimits
from ._volume import DirEntry, Metadata, Volume

__all__ = [
    "JSON",
    "Atom",
    "Binding",
    "Command",
    "Container",
    "Dependency",
    "DetectError",
    "DirEntry",
    "FormatError",
    "Manifest",
    "Metadata",
    "TarballLimits",
    "Volume",
    "detect",
    "open_package",
    "to_jsonable",
]
