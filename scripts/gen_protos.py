"""Generate the Python stubs of `protos/` into the client distribution, or check they are current.

    python scripts/gen_protos.py          # (re)generate
    python scripts/gen_protos.py --check  # exit 1 when the committed stubs are stale

protoc writes absolute imports named after the proto path (`from pkgloader.v1 import ...`), which
would collide with the server's own `pkgloader` package; the stubs live under
`pkgloader_client._generated`, so those imports are rewritten to that prefix. That rewrite is the
only thing done to protoc's output.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "client" / "pkgloader_client" / "_generated"
PREFIX = "pkgloader_client._generated"
DESCRIPTORS = "descriptors.binpb"  # a FileDescriptorSet of protos/, with source comments
_IMPORT = re.compile(r"^(from|import) pkgloader\.v1\b", re.MULTILINE)


def _plugin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"{name} not found beside {sys.executable}: install mypy-protobuf")
    return str(path)


def _generate(into: Path) -> dict[str, str]:
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    argv = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={into}",
        f"--grpc_python_out={into}",
        # mypy-protobuf's stubs carry the proto comments and type the gRPC stubs too.
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out={into}",
        f"--mypy_grpc_out={into}",
        # The descriptors with their comments, for server reflection: the descriptors compiled
        # into the _pb2 modules carry no source info, so grpcurl would show no comments.
        f"--descriptor_set_out={into / DESCRIPTORS}",
        "--include_source_info",
        *protos,
    ]
    if protoc.main(argv) != 0:
        raise SystemExit("protoc failed")
    files: dict[str, bytes] = {DESCRIPTORS: (into / DESCRIPTORS).read_bytes()}
    for path in sorted(into.rglob("*.py*")):
        text = _IMPORT.sub(lambda m: f"{m.group(1)} {PREFIX}.pkgloader.v1", path.read_text())
        files[str(path.relative_to(into))] = text.encode()
    for package in {Path(name).parent for name in files if name.endswith(".py")}:
        for part in [package, *package.parents]:
            if str(part) != ".":
                files.setdefault(str(part / "__init__.py"), b"")
    return files


def _current() -> dict[str, bytes]:
    found = {
        str(p.relative_to(OUT)): p.read_bytes()
        for p in sorted(OUT.rglob("*.py*"))
        if p.name != "__init__.py" or p.parent != OUT
    }
    if (OUT / DESCRIPTORS).exists():
        found[DESCRIPTORS] = (OUT / DESCRIPTORS).read_bytes()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wanted = _generate(Path(tmp))
    if args.check:
        have = _current()
        if have != wanted:
            stale = sorted(
                set(have) ^ set(wanted) | {k for k in wanted if have.get(k) != wanted[k]}
            )
            print(
                f"generated stubs are stale: {', '.join(stale)}; run `make protos`", file=sys.stderr
            )
            return 1
        return 0
    for name, data in wanted.items():
        target = OUT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for name in set(_current()) - set(wanted):
        (OUT / name).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
