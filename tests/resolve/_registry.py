"""A Wasmer registry on 127.0.0.1 for the Resolve tests: pytest-httpserver answering the
registry's GraphQL queries (doc §9a) from JSON files, one per package name, and serving the
package files themselves.

Every package it lists is a real package file: the real fixtures, or packages the tests' webc
writers build; the `webcManifest` it answers is the file's own manifest, read by parsing it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pkgloader import formats
from pkgloader.resolve._registry import QUERY_BY_HASH, QUERY_BY_NAME
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.formats._writers import write_indexed, write_v1

WASM = b"\0asm\x01\0\0\0"
WASI = "https://webc.org/runner/wasi"


def package(
    name: str | None,
    version: str | None,
    *,
    use: dict[str, str] | None = None,
    commands: tuple[str, ...] = (),
    entrypoint: str | None = None,
    fs: list[dict[str, Any]] | None = None,
    v3: bool = False,
    volumes: dict[str, Any] | None = None,
) -> bytes:
    """A real package file: webc v1 (the v2 family) or v3, one atom per command."""
    wapm: dict[str, Any] = {}
    if name is not None:
        wapm["name"] = name
    if version is not None:
        wapm["version"] = version
    annotations: dict[str, Any] = {"wapm": wapm}
    if fs is not None:
        annotations["fs"] = fs
    atoms = {c: WASM + c.encode() for c in commands}
    manifest: dict[str, Any] = {"package": annotations}
    if use:
        manifest["use"] = use
    if atoms:
        manifest["atoms"] = {
            n: {
                "kind": "https://webc.org/kind/wasm",
                "signature": "sha256:" + base64.b64encode(hashlib.sha256(a).digest()).decode(),
            }
            for n, a in atoms.items()
        }
        manifest["commands"] = {
            c: {"runner": WASI, "annotations": {"atom": {"name": c}}} for c in commands
        }
    if entrypoint is not None:
        manifest["entrypoint"] = entrypoint
    if v3:
        return write_indexed(manifest, atoms, volumes or {"metadata": {}}, v3=True)
    return write_v1(manifest, atoms, volumes or {"atom": {"README": b"hi"}, "metadata": {}})


@dataclass
class Registry:
    """Files under `root`: `<namespace>--<name>.json` (a getPackage answer), `hash-<hex>.json`
    (a getPackageRelease answer), `files/<name>` (package bytes)."""

    server: HTTPServer
    root: Path
    #: Set to make every GraphQL request fail with this status (the registry is "down").
    down_status: int | None = None
    #: Every GraphQL request received: (query text, headers).
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return self.server.url_for("/graphql")

    def file_url(self, name: str) -> str:
        return self.server.url_for(f"/files/{name}")

    def add_file(self, name: str, data: bytes) -> tuple[str, str, str]:
        """Store a package file; (url, sha256, its manifest as JSON text)."""
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        (self.root / "files" / name).write_bytes(data)
        with formats.open_package(data) as container:
            manifest = json.dumps(container.manifest.raw)
        return self.file_url(name), hashlib.sha256(data).hexdigest(), manifest

    def publish(
        self,
        full_name: str,
        versions: list[tuple[str, bytes | None, bytes | None]],
        archived: tuple[str, ...] = (),
    ) -> dict[str, str]:
        """`versions`: (version, v2 file, v3 file). Returns version → sha256 of the file taken
        (v3 when there is one)."""
        namespace, _, name = full_name.partition("/")
        entries, taken = [], {}
        for version, v2, v3 in versions:
            entry: dict[str, Any] = {"version": version, "isArchived": version in archived}
            for key, data in (("v2", v2), ("v3", v3)):
                if data is None:
                    entry[key] = {
                        "piritaDownloadUrl": None,
                        "piritaSha256Hash": None,
                        "webcManifest": None,
                    }
                    continue
                url, sha, manifest = self.add_file(f"{namespace}--{name}@{version}-{key}", data)
                entry[key] = {
                    "piritaDownloadUrl": url,
                    "piritaSha256Hash": sha,
                    "webcManifest": manifest,
                }
                taken[version] = sha
            entries.append(entry)
        answer = {
            "data": {
                "getPackage": {"packageName": name, "namespace": namespace, "versions": entries},
                "info": {"defaultFrontend": "https://wasmer.io"},
            }
        }
        (self.root / f"{namespace}--{name}.json").write_text(json.dumps(answer))
        return taken

    def publish_release(self, data: bytes, name: str) -> str:
        url, sha, manifest = self.add_file(name, data)
        answer = {
            "data": {
                "getPackageRelease": {
                    "piritaManifest": manifest,
                    "isArchived": False,
                    "webcUrl": url,
                }
            }
        }
        (self.root / f"hash-{sha}.json").write_text(json.dumps(answer))
        return sha

    def handle(self, request: Request) -> Response:
        body = json.loads(request.get_data())
        query = body["query"]
        with self._lock:
            self.requests.append((query, dict(request.headers)))
        if self.down_status is not None:
            return Response("down", status=self.down_status)
        if match := re.search(r'getPackage\(name: "([^"]*)"\)', query):
            assert query == QUERY_BY_NAME.replace("$NAME", match.group(1))
            path = self.root / (match.group(1).replace("/", "--", 1) + ".json")
            empty = {"data": {"getPackage": None, "info": {"defaultFrontend": "x"}}}
        elif match := re.search(r'getPackageRelease\(hash: "([^"]*)"\)', query):
            assert query == QUERY_BY_HASH.replace("$HASH", match.group(1))
            path = self.root / f"hash-{match.group(1)}.json"
            empty = {"data": {"getPackageRelease": None}}
        else:
            return Response(json.dumps({"errors": [{"message": "unknown query"}]}), status=400)
        text = path.read_text() if path.is_file() else json.dumps(empty)
        return Response(text, content_type="application/json")

    def serve_files(self, request: Request) -> Response:
        name = request.path.removeprefix("/files/")
        return Response((self.root / "files" / name).read_bytes())


def start_registry(httpserver: HTTPServer, root: Path) -> Registry:
    registry = Registry(httpserver, root)
    root.mkdir(parents=True, exist_ok=True)
    httpserver.expect_request("/graphql", method="POST").respond_with_handler(registry.handle)
    httpserver.expect_request(re.compile(r"^/files/.*")).respond_with_handler(registry.serve_files)
    return registry
