"""Package trees for LoadTree tests: packages built with the tests' webc writer, published as
real files (file:// under the server's roots) or served by a loopback upstream, and the
`Resolution` messages a caller would send."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pkgloader.formats.writer import write_indexed, write_v1
from pkgloader_client import pb

from tests.conftest import STATIC

WASI = "https://webc.org/runner/wasi"
WASM_KIND = "https://webc.org/kind/wasm"
#: The dependency the v3 fixture's `script` command takes its atom from (its `use` map's key and
#: its requirement `^1`).
STATIC_DEP_ALIAS = "wasmer/static-web-server"
STATIC_DEP_ID = "wasmer/static-web-server@1.2.0"
STATIC_ROOT_ID = f"sha256:{STATIC.sha256}"  # its wapm annotation has no name


def wasm(seed: str, size: int = 64) -> bytes:
    """A distinct atom: the wasm magic and version, then bytes derived from `seed`."""
    body = hashlib.shake_256(seed.encode()).digest(max(size - 8, 0))
    return b"\0asm\x01\0\0\0" + body


def signature(data: bytes) -> str:
    return "sha256:" + base64.b64encode(hashlib.sha256(data).digest()).decode()


def manifest(
    name: str | None,
    version: str | None,
    *,
    atoms: dict[str, bytes] | None = None,
    commands: dict[str, dict[str, Any]] | None = None,
    fs: list[dict[str, Any]] | None = None,
    use: dict[str, str] | None = None,
    entrypoint: str | None = None,
    signatures: dict[str, str] | None = None,
) -> dict[str, Any]:
    wapm = {} if name is None else {"name": name, "version": version}
    package: dict[str, Any] = {"wapm": wapm}
    if fs is not None:
        package["fs"] = fs
    out: dict[str, Any] = {"package": package}
    if atoms:
        out["atoms"] = {
            n: {"kind": WASM_KIND, "signature": (signatures or {}).get(n, signature(d))}
            for n, d in atoms.items()
        }
    if commands:
        out["commands"] = commands
    if use:
        out["use"] = use
    if entrypoint:
        out["entrypoint"] = entrypoint
    return out


def wasi_command(atom: str, dependency: str | None = None) -> dict[str, Any]:
    annotation: dict[str, Any] = {"name": atom}
    if dependency is not None:
        annotation["dependency"] = dependency
    return {"runner": WASI, "annotations": {"atom": annotation}}


def v3_package(
    name: str | None,
    version: str | None,
    *,
    atoms: dict[str, bytes] | None = None,
    volumes: dict[str, dict[str, Any]] | None = None,
    **manifest_fields: Any,
) -> bytes:
    atoms = atoms or {}
    return write_indexed(
        manifest(name, version, atoms=atoms, **manifest_fields),
        atoms,
        volumes or {"metadata": {}},
        v3=True,
    )


def v1_package(
    name: str,
    version: str,
    *,
    atoms: dict[str, bytes] | None = None,
    volumes: dict[str, dict[str, Any]] | None = None,
    **manifest_fields: Any,
) -> bytes:
    atoms = atoms or {}
    return write_v1(
        manifest(name, version, atoms=atoms, **manifest_fields),
        atoms,
        volumes or {"atom": {}, "metadata": {}},
    )


@dataclass(frozen=True)
class Published:
    id: str
    url: str
    sha256: str
    size: int


def publish(folder: Path, package_id: str, data: bytes) -> Published:
    """Write a package where the server's file roots reach it."""
    path = folder / (package_id.replace("/", "--").replace(":", "-") + ".webc")
    path.write_bytes(data)
    return Published(package_id, path.as_uri(), hashlib.sha256(data).hexdigest(), len(data))


def resolution(
    root: Published,
    others: list[Published] = (),  # type: ignore[assignment]
    *,
    edges: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    commands: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    mounts: list[tuple[str, str, str, str]] = (),  # type: ignore[assignment]
    entrypoint: str | None = None,
) -> pb.Resolution:
    """A Resolution message: edges (from, to, alias), commands (name, package, original name),
    mounts (mount path, package, volume, original path)."""
    message = pb.Resolution(
        root=root.id,
        nodes=[
            pb.ResolvedNode(
                id=p.id,
                dist=pb.DistributionInfo(webc_url=p.url, webc_sha256=p.sha256, webc_size=p.size),
            )
            for p in [root, *others]
        ],
        edges=[pb.ResolvedEdge(**{"from": f, "to": t, "alias": a}) for f, t, a in edges],
        commands=[pb.ResolvedCommand(name=n, package=p, original_name=o) for n, p, o in commands],
        mounts=[
            pb.ResolvedMount(mount_path=m, package=p, volume=v, original_path=o)
            for m, p, v, o in mounts
        ],
    )
    if entrypoint is not None:
        message.entrypoint = entrypoint
    return message


#: The dependency's atom and its bytes (larger than one 1 MiB chunk, so it streams in pieces).
WEBSERVER_ATOM = wasm("static-web-server", 1_500_000)


def static_webserver_dependency() -> bytes:
    """`wasmer/static-web-server`, as the v3 fixture's manifest asks for it: an atom `webserver`
    and the command of the same name that runs it."""
    return v3_package(
        "wasmer/static-web-server",
        "1.2.0",
        atoms={"webserver": WEBSERVER_ATOM},
        commands={"webserver": wasi_command("webserver")},
        entrypoint="webserver",
    )


@dataclass(frozen=True)
class StaticTree:
    root: Published
    dependency: Published
    resolution: pb.Resolution


def static_tree(folder: Path) -> StaticTree:
    """The v3 fixture with its dependency, and the resolution wasmer's resolver would produce:
    the root's `script`, the dependency's `webserver`, the root's `/settings` volume."""
    root = Published(STATIC_ROOT_ID, STATIC.url, STATIC.sha256, STATIC.size)
    dependency = publish(folder, STATIC_DEP_ID, static_webserver_dependency())
    return StaticTree(
        root,
        dependency,
        resolution(
            root,
            [dependency],
            edges=[(root.id, dependency.id, STATIC_DEP_ALIAS)],
            commands=[
                ("script", root.id, "script"),
                ("webserver", dependency.id, "webserver"),
            ],
            mounts=[("/settings", root.id, "/settings", "")],
            entrypoint="script",
        ),
    )


def tree_request(
    res: pb.Resolution | None = None,
    *,
    specifier: str = "",
    summary: pb.PackageSummary | None = None,
    include_atoms: bool = False,
) -> pb.LoadTreeRequest:
    request = pb.LoadTreeRequest(include_atoms=include_atoms)
    if summary is not None:
        request.summary.CopyFrom(summary)
    else:
        request.specifier = specifier or (res.root if res is not None else "")
    if res is not None:
        request.resolution.CopyFrom(res)
    return request
