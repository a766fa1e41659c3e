"""Resolve over gRPC against a registry on 127.0.0.1, package folders and URLs: nodes, edges,
commands, mounts, and every failure with its status, ErrorInfo reason and the reference's words."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from pkgloader.rpc.servicer import resolution_from_proto, resolution_to_proto
from pkgloader_client import pb
from pytest_httpserver import HTTPServer

from tests.conftest import COWSAY, DASH, HELLO, STATIC, WABT, Running
from tests.resolve._registry import Registry, package


def resolve(server: Running, specifier: str) -> pb.ResolveResponse:
    return server.stub.Resolve(pb.ResolveRequest(specifier=specifier), timeout=30)


def failure(server: Running, specifier: str) -> tuple[grpc.StatusCode, str, str, dict[str, str]]:
    """(code, reason, message, metadata) of a Resolve that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        resolve(server, specifier)
    error = caught.value
    [(_, raw)] = [m for m in error.trailing_metadata() if m[0] == "grpc-status-details-bin"]
    info = error_details_pb2.ErrorInfo()
    status_pb2.Status.FromString(raw).details[0].Unpack(info)
    return error.code(), info.reason, error.details(), dict(info.metadata)


def nodes(response: pb.ResolveResponse) -> list[str]:
    return [n.id for n in response.resolution.nodes]


def edges(response: pb.ResolveResponse) -> list[tuple[str, str, str]]:
    return [(getattr(e, "from"), e.to, e.alias) for e in response.resolution.edges]


def commands(response: pb.ResolveResponse) -> list[tuple[str, str, str]]:
    return [(c.name, c.package, c.original_name) for c in response.resolution.commands]


def mounts(response: pb.ResolveResponse) -> list[tuple[str, str, str, str]]:
    return [
        (m.mount_path, m.package, m.volume, m.original_path) for m in response.resolution.mounts
    ]


# -- the registry ------------------------------------------------------------------------------


def test_chain_four_deep_takes_the_newest_unarchived_match(
    with_registry: Callable[..., Running], registry: Registry
) -> None:
    """dash → coreutils (^1.0.16: 1.0.17) → base (^0.3: 0.3.1, 0.3.2 is archived) → libc."""
    server = with_registry()
    response = resolve(server, "sharrattj/dash")
    assert response.resolution.root == "sharrattj/dash@1.0.18"
    assert nodes(response) == [
        "sharrattj/dash@1.0.18",
        "sharrattj/coreutils@1.0.17",
        "wasmer/base@0.3.1",
        "wasmer/libc@1.2.0",
    ]
    assert edges(response) == [
        ("sharrattj/dash@1.0.18", "sharrattj/coreutils@1.0.17", "coreutils"),
        ("sharrattj/coreutils@1.0.17", "wasmer/base@0.3.1", "base"),
        ("wasmer/base@0.3.1", "wasmer/libc@1.2.0", "libc"),
    ]
    root = response.resolution.nodes[0]
    assert (root.dist.webc_sha256, root.dist.webc_url) == (
        DASH.sha256,
        registry.file_url("sharrattj--dash@1.0.18-v2"),
    )
    # The root's `dash` shadows coreutils' `dash`; name order, as the reference's map.
    assert commands(response) == [
        ("dash", "sharrattj/dash@1.0.18", "dash"),
        ("ldd", "wasmer/libc@1.2.0", "ldd"),
        ("ls", "sharrattj/coreutils@1.0.17", "ls"),
        ("sh", "wasmer/base@0.3.1", "sh"),
    ]
    assert response.resolution.entrypoint == "dash"
    # v1 packages without `fs` get the default atom volume at /; v3 ones only what they declare.
    assert mounts(response) == [
        ("/", "sharrattj/dash@1.0.18", "atom", "/"),
        ("/", "sharrattj/coreutils@1.0.17", "atom", "/"),
        ("/etc", "wasmer/base@0.3.1", "/etc", ""),
    ]
    assert list(response.warnings) == []


def test_diamond_has_one_node_per_package_and_an_edge_per_alias(
    with_registry: Callable[..., Running],
) -> None:
    """app → left, right → base: base appears once, reached by two aliases; `from` → package."""
    response = resolve(with_registry(), "test/app@^1")
    assert nodes(response) == [
        "test/app@1.0.0",
        "test/left@1.1.0",
        "test/right@1.0.0",
        "test/base@1.3.0",
    ]
    assert edges(response) == [
        ("test/app@1.0.0", "test/left@1.1.0", "left"),
        ("test/app@1.0.0", "test/right@1.0.0", "right"),
        ("test/left@1.1.0", "test/base@1.3.0", "base"),
        ("test/right@1.0.0", "test/base@1.3.0", "core"),
    ]
    assert mounts(response) == [("/data", "test/left@1.1.0", "/data", "/share")]
    # No entrypoint anywhere: the root's only command.
    assert response.resolution.entrypoint == "app"


def test_v3_distribution_is_preferred_and_the_fixture_mounts_its_settings(
    with_registry: Callable[..., Running], registry: Registry
) -> None:
    """The registry lists v2 and v3 files; v3 is taken, and a v3 package gets no default `/`."""
    response = resolve(with_registry(), "wasmer-tests/volume-static-webserver@0.1")
    root = response.resolution.nodes[0]
    assert (root.id, root.dist.webc_sha256) == (
        "wasmer-tests/volume-static-webserver@0.1.0",
        STATIC.sha256,
    )
    # 1.1.0 is archived: ^1 takes 1.0.0.
    assert nodes(response)[1:] == ["wasmer/static-web-server@1.0.0"]
    assert edges(response) == [
        (
            "wasmer-tests/volume-static-webserver@0.1.0",
            "wasmer/static-web-server@1.0.0",
            "wasmer/static-web-server",
        )
    ]
    assert commands(response) == [
        ("script", "wasmer-tests/volume-static-webserver@0.1.0", "script"),
        ("webserver", "wasmer/static-web-server@1.0.0", "webserver"),
    ]
    assert response.resolution.entrypoint == "script"
    assert mounts(response) == [
        ("/settings", "wasmer-tests/volume-static-webserver@0.1.0", "/settings", "")
    ]


def test_cycle_is_failed_precondition_with_the_reference_words(
    with_registry: Callable[..., Running],
) -> None:
    """ping → pong → ping: FAILED_PRECONDITION, DEPENDENCY_CYCLE, the cycle spelled out."""
    code, reason, message, metadata = failure(with_registry(), "test/ping")
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DEPENDENCY_CYCLE")
    assert message == (
        "Dependency cycle detected: test/ping@1.0.0 → test/pong@1.0.0 → test/ping@1.0.0"
    )
    assert metadata["cycle"] == "test/ping@1.0.0 → test/pong@1.0.0 → test/ping@1.0.0"


def test_two_versions_of_one_name_is_failed_precondition(
    with_registry: Callable[..., Running],
) -> None:
    """left takes base 1.3.0, ~1.2.3 takes 1.2.3: the reference refuses to merge them."""
    code, reason, message, metadata = failure(with_registry(), "test/dup")
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DUPLICATE_VERSIONS")
    assert message == "Multiple versions of test/base were found 1.2.3, 1.3.0"
    assert metadata["package"] == "test/base"


@pytest.mark.parametrize(
    ("specifier", "reason", "message"),
    [
        (
            "test/nope",
            "PACKAGE_NOT_FOUND",
            'Unable to find "test/nope@*" in the registry: Not found',
        ),
        (
            "test/broken",
            "PACKAGE_NOT_FOUND",
            'Unable to find "test/nope@^1" in the registry: Not found',
        ),
        (
            "test/base@^9",
            "NO_MATCHING_VERSION",
            'Unable to find "test/base@^9" in the registry: The package was found, but no '
            "published versions matched the constraint",
        ),
        (
            "wasmer/base@=0.3.2",
            "NO_MATCHING_VERSION",
            'Unable to find "wasmer/base@=0.3.2" in the registry: The only version satisfying '
            "the constraint, 0.3.2, is archived",
        ),
        (
            "wasmer/static-web-server@>=1.1",
            "NO_MATCHING_VERSION",
            'Unable to find "wasmer/static-web-server@>=1.1" in the registry: The only version '
            "satisfying the constraint, 1.1.0, is archived",
        ),
    ],
)
def test_unknown_names_and_unmatched_versions_are_not_found(
    with_registry: Callable[..., Running], specifier: str, reason: str, message: str
) -> None:
    """A name no source knows (root or dependency), or no unarchived match: NOT_FOUND."""
    code, got_reason, got_message, metadata = failure(with_registry(), specifier)
    assert (code, got_reason, got_message) == (grpc.StatusCode.NOT_FOUND, reason, message)
    assert metadata["specifier"]


@pytest.mark.parametrize(
    "specifier",
    ["", "not a name!", "wasmer/python@^x.1", 'a"b/c', "../x.webc", "sha256:abc", "ftp://h/x"],
)
def test_malformed_specifier_is_invalid_argument_and_asks_nobody(
    with_registry: Callable[..., Running], registry: Registry, specifier: str
) -> None:
    """A malformed specifier: INVALID_ARGUMENT, INVALID_SPECIFIER, and no registry request."""
    code, reason, message, _ = failure(with_registry(), specifier)
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SPECIFIER")
    assert message
    assert registry.requests == []


def test_registry_query_is_the_reference_query_with_its_headers(
    make_server: Callable[..., Running], registry: Registry
) -> None:
    """One POST per name with the §9a query text (checked by the registry), JSON content type,
    the service's User-Agent, and the download fetcher's own Authorization (tokens file)."""
    authority = f"127.0.0.1:{registry.server.port}"
    server = make_server(registry_url=registry.url, tokens={authority: "s3cret"})
    resolve(server, "test/app")
    assert len(registry.requests) == 4  # app, left, right, base: each name once
    _, headers = registry.requests[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("pkgloader/")
    fetcher = server.app.loader.fetchers.http
    expected = fetcher.headers(httpx.URL(registry.url)).get("Authorization")
    assert headers.get("Authorization") == expected


def test_answers_are_reused_within_the_ttl(
    with_registry: Callable[..., Running], registry: Registry
) -> None:
    """A second Resolve within PKGLOADER_REGISTRY_TTL asks the registry nothing."""
    server = with_registry(registry_ttl=3600.0)
    first = resolve(server, "test/app")
    count = len(registry.requests)
    assert resolve(server, "test/app") == first
    assert len(registry.requests) == count


def test_registry_down_serves_a_stale_answer_with_a_warning(
    with_registry: Callable[..., Running], registry: Registry
) -> None:
    """Expired answers are served, with a warning each, while the registry replies 503."""
    server = with_registry(registry_ttl=1e-9)  # every answer is stale at once
    fresh = resolve(server, "test/app")
    registry.down_status = 503
    stale = resolve(server, "test/app")
    assert stale.resolution == fresh.resolution
    assert len(stale.warnings) == 4
    assert all("is unavailable" in w and "503 Service Unavailable" in w for w in stale.warnings)
    assert 'using its answer for "test/app" from' in stale.warnings[0]


def test_registry_down_with_nothing_cached_is_unavailable(
    with_registry: Callable[..., Running], registry: Registry
) -> None:
    """A 503 and no cached answer: UNAVAILABLE, REGISTRY_UNAVAILABLE."""
    registry.down_status = 503
    code, reason, message, metadata = failure(with_registry(), "test/app")
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "REGISTRY_UNAVAILABLE")
    assert message == (
        f'Unable to query the registry for "test/app": "{registry.url}" replied with '
        "503 Service Unavailable"
    )
    assert metadata["url"] == registry.url


def test_unreachable_registry_is_unavailable(make_server: Callable[..., Running]) -> None:
    """Nothing listens at the registry's port: UNAVAILABLE, REGISTRY_UNAVAILABLE."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server(registry_url=f"http://127.0.0.1:{port}/graphql")
    code, reason, message, _ = failure(server, "test/app")
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "REGISTRY_UNAVAILABLE")
    assert message.startswith('Unable to query the registry for "test/app": ')


def test_registry_refusing_the_query_is_failed_precondition(
    with_registry: Callable[..., Running], registry: Registry
) -> None:
    """A 401 from the registry: FAILED_PRECONDITION, REGISTRY_REJECTED, the status named."""
    registry.down_status = 401
    code, reason, message, metadata = failure(with_registry(), "test/app")
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REGISTRY_REJECTED")
    assert message.endswith("replied with 401 Unauthorized")
    assert metadata["status"] == "401"


def test_registry_answer_nested_past_the_json_parser_is_unavailable_not_internal(
    with_registry: Callable[..., Running], registry: Registry
) -> None:
    """A reply nested deeper than Python's json recursion limit is a malformed reply
    (UNAVAILABLE, REGISTRY_UNAVAILABLE), not a RecursionError that surfaces as INTERNAL."""
    (registry.root / "test--deep.json").write_text("[" * 100_000 + "]" * 100_000)
    code, reason, message, _ = failure(with_registry(), "test/deep")
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "REGISTRY_UNAVAILABLE")
    assert message.endswith("Unable to deserialize the response")


def test_version_whose_manifest_nests_past_the_json_parser_is_skipped(
    with_registry: Callable[..., Running], registry: Registry
) -> None:
    """A webcManifest nested deeper than the json parser's limit is undecodable metadata: that
    version is skipped like any other that does not decode, never INTERNAL."""
    registry.publish("test/deepman", [("1.0.0", package("test/deepman", "1.0.0"), None)])
    path = registry.root / "test--deepman.json"
    answer = json.loads(path.read_text())
    dist = answer["data"]["getPackage"]["versions"][0]["v2"]
    dist["webcManifest"] = "[" * 100_000 + "]" * 100_000
    path.write_text(json.dumps(answer))
    code, reason, _, _ = failure(with_registry(), "test/deepman")
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NO_MATCHING_VERSION")


def test_registry_outside_the_upstream_policy_is_never_contacted(
    make_server: Callable[..., Running], registry: Registry
) -> None:
    """The registry is an upstream like any other: loopback needs PKGLOADER_UPSTREAM_ALLOW."""
    server = make_server(registry_url=registry.url, upstream_allow=())
    code, reason, _, _ = failure(server, "test/app")
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "UPSTREAM_BLOCKED")
    assert registry.requests == []


def test_hash_specifier_asks_the_registry_when_not_cached(
    with_registry: Callable[..., Running], registry: Registry
) -> None:
    """sha256:<hex> not in the cache: getPackageRelease(hash) answers, the id is the hash."""
    sha = registry.publish_release(WABT.data, "wabt")
    response = resolve(with_registry(), f"sha256:{sha.upper()}")
    [node] = response.resolution.nodes
    assert (node.id, node.dist.webc_sha256, node.dist.webc_url) == (
        f"sha256:{sha}",
        sha,
        registry.file_url("wabt"),
    )
    assert len(response.resolution.commands) == 6
    assert not response.resolution.HasField("entrypoint")  # six commands, no entrypoint


def test_hash_specifier_of_a_cached_package_needs_no_registry(
    with_registry: Callable[..., Running], registry: Registry
) -> None:
    """A package in the cache resolves by hash with the registry down, under its own wapm id."""
    server = with_registry()
    server.load(WABT.url, WABT.sha256)
    registry.down_status = 503
    response = resolve(server, f"sha256:{WABT.sha256}")
    [node] = response.resolution.nodes
    # A cached package's origin is not recorded: an empty URL, loaded by its hash.
    assert (node.id, node.dist.webc_sha256, node.dist.webc_url, node.dist.webc_size) == (
        "wasmer/wabt@1.0.37",
        WABT.sha256,
        "",
        WABT.size,
    )
    assert mounts(response) == [("/", "wasmer/wabt@1.0.37", "atom", "/")]
    assert registry.requests == []


def test_unknown_hash_is_not_found(with_registry: Callable[..., Running]) -> None:
    """A hash neither the cache nor the registry knows: NOT_FOUND, PACKAGE_NOT_FOUND."""
    code, reason, message, _ = failure(with_registry(), "sha256:" + "ab" * 32)
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "PACKAGE_NOT_FOUND")
    assert message == f'Unable to find "sha256:{"ab" * 32}" in the registry: Not found'


# -- package folders: no network at all ------------------------------------------------------


def _folder(tmp_path: Path) -> Path:
    """A package folder under the file roots: real fixtures (linked, not copied) under their
    package names, and packages the webc writers build."""
    folder = tmp_path / "files" / "packages"
    folder.mkdir(parents=True)
    os.symlink(STATIC.path, folder / "wasmer-tests--volume-static-webserver@0.1.0.webc")
    os.symlink(DASH.path, folder / "sharrattj--dash@1.0.18.webc")
    os.symlink(COWSAY.path, folder / "wiqar--cowsay@0.3.0.webc")
    os.symlink(HELLO.path, folder / "wasmer--hello@0.1.0.webc")
    for version in ("1.0.0", "1.4.2", "2.0.0"):
        (folder / f"wasmer--static-web-server@{version}.webc").write_bytes(
            package("wasmer/static-web-server", version, commands=("webserver",), v3=True)
        )
    (folder / "notes.txt").write_text("not a package")
    (folder / "bad--version@one.webc").write_bytes(b"x")
    return folder


def test_folder_tree_resolves_with_no_network(
    make_server: Callable[..., Running], tmp_path: Path
) -> None:
    """No registry, no upstream allowed: the v3 fixture and its dependency from the folder."""
    folder = _folder(tmp_path)
    server = make_server(package_dirs=(folder,), upstream_allow=(), registry_url="")
    response = resolve(server, "wasmer-tests/volume-static-webserver")
    # The fixture's wapm annotation has no name: its id is its hash.
    root = f"sha256:{STATIC.sha256}"
    dependency = "wasmer/static-web-server@1.4.2"  # ^1: the newest 1.x file
    assert nodes(response) == [root, dependency]
    assert edges(response) == [(root, dependency, "wasmer/static-web-server")]
    dist = response.resolution.nodes[0].dist
    assert (dist.webc_url, dist.webc_sha256, dist.webc_size) == (
        (folder / "wasmer-tests--volume-static-webserver@0.1.0.webc").absolute().as_uri(),
        STATIC.sha256,
        STATIC.size,
    )
    assert commands(response) == [
        ("script", root, "script"),
        ("webserver", dependency, "webserver"),
    ]
    assert mounts(response) == [("/settings", root, "/settings", "")]
    # The folder's node is loadable as it is: its file:// URL lies under the file roots.
    package_, _ = server.load(dist.webc_url, dist.webc_sha256)
    assert package_.format == "webc-v3"


def test_folder_tar_gz_gets_no_default_mount_and_v1_does(
    make_server: Callable[..., Running], tmp_path: Path
) -> None:
    """cowsay (tar.gz: the v3 family) mounts nothing by default; hello (v1) mounts atom at /."""
    server = make_server(package_dirs=(_folder(tmp_path),))
    cowsay = resolve(server, "wiqar/cowsay@0.3.0")
    assert nodes(cowsay) == [f"sha256:{COWSAY.sha256}"]  # the converted manifest has no name
    assert mounts(cowsay) == []
    assert not cowsay.resolution.HasField("entrypoint")  # two commands, none named
    code, reason, message, _ = failure(server, "wasmer/hello")
    # hello's dependency is in no folder.
    assert (code, reason, message) == (
        grpc.StatusCode.NOT_FOUND,
        "PACKAGE_NOT_FOUND",
        'Unable to find "sharrattj/static-web-server@^1" in the registry: Not found',
    )


def test_folder_without_a_match_is_no_matching_version(
    make_server: Callable[..., Running], tmp_path: Path
) -> None:
    """A name the folder has, but no version matching: NOT_FOUND, NO_MATCHING_VERSION."""
    server = make_server(package_dirs=(_folder(tmp_path),))
    code, reason, _, _ = failure(server, "wasmer/static-web-server@^3")
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NO_MATCHING_VERSION")


def test_folder_outside_the_file_roots_is_refused(
    make_server: Callable[..., Running], tmp_path: Path
) -> None:
    """A package folder outside PKGLOADER_FILE_ROOTS is not read: PERMISSION_DENIED."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "a--b@1.0.0.webc").write_bytes(package("a/b", "1.0.0"))
    server = make_server(package_dirs=(folder,))
    code, reason, _, _ = failure(server, "a/b")
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "FILE_OUTSIDE_ROOTS")


def test_registry_first_then_folders(with_registry: Callable[..., Running], tmp_path: Path) -> None:
    """A name the registry does not know falls through to the folders (MultiSource order);
    one both know comes from the registry."""
    folder = _folder(tmp_path)
    (folder / "test--base@9.0.0.webc").write_bytes(package("test/base", "9.0.0", v3=True))
    server = with_registry(package_dirs=(folder,))
    assert nodes(resolve(server, "wiqar/cowsay")) == [f"sha256:{COWSAY.sha256}"]
    # The registry knows test/base but has no 9.x: no match there, so the folder answers.
    assert nodes(resolve(server, "test/base@9")) == ["test/base@9.0.0"]
    # Both know wasmer/static-web-server: the registry's 1.0.0 wins over the folder's 1.4.2.
    assert nodes(resolve(server, "wasmer/static-web-server@1")) == [
        "wasmer/static-web-server@1.0.0"
    ]


# -- URLs ------------------------------------------------------------------------------------


def test_url_specifier_is_downloaded_once_and_cached_by_its_hash(
    make_server: Callable[..., Running], httpserver: HTTPServer
) -> None:
    """A URL: downloaded through the loader with no expected hash; the computed sha256 names
    it in the cache, where a Load by that hash then finds it."""
    httpserver.expect_request("/wabt.webc").respond_with_data(WABT.data)
    server = make_server()
    url = httpserver.url_for("/wabt.webc")
    response = resolve(server, url)
    [node] = response.resolution.nodes
    assert (node.id, node.dist.webc_url, node.dist.webc_sha256, node.dist.webc_size) == (
        "wasmer/wabt@1.0.37",
        url,
        WABT.sha256,
        WABT.size,
    )
    assert [c.name for c in response.resolution.commands] == sorted(
        ["wat2wasm", "wast2json", "wasm2wat", "wasm-interp", "wasm-validate", "wasm-strip"]
    )
    assert (server.app.settings.cache_dir / f"{WABT.sha256}.bin").read_bytes() == WABT.data
    loaded, _ = server.load(url, WABT.sha256)
    assert loaded.source in (pb.SOURCE_MEMORY, pb.SOURCE_DISK)
    assert len(httpserver.log) == 1


def test_file_url_specifier_and_url_errors(
    make_server: Callable[..., Running], httpserver: HTTPServer
) -> None:
    """A file:// URL under the roots resolves; a 404 keeps Load's NOT_FOUND and reason; a file
    outside the roots is PERMISSION_DENIED; bytes that are no package are FAILED_PRECONDITION."""
    server = make_server()
    response = resolve(server, WABT.url)
    assert nodes(response) == ["wasmer/wabt@1.0.37"]
    assert response.resolution.nodes[0].dist.webc_url == WABT.url
    httpserver.expect_request("/missing").respond_with_data("no", status=404)
    httpserver.expect_request("/junk").respond_with_data(b"not a package at all")
    assert failure(server, httpserver.url_for("/missing"))[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "UPSTREAM_NOT_FOUND",
    )
    assert failure(server, "file:///etc/hostname")[:2] == (
        grpc.StatusCode.PERMISSION_DENIED,
        "FILE_OUTSIDE_ROOTS",
    )
    assert failure(server, httpserver.url_for("/junk"))[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_PACKAGE",
    )


# -- the message itself ----------------------------------------------------------------------


def test_resolution_json_from_grpcurl_style_printing_can_be_sent_back(
    with_registry: Callable[..., Running],
) -> None:
    """The Resolution as JSON (what grpcurl prints) parses back to the same message, and to
    the same domain resolution, which validates."""
    from google.protobuf import json_format

    response = resolve(with_registry(), "sharrattj/dash")
    text = json_format.MessageToJson(response.resolution)
    again = json_format.Parse(text, pb.Resolution())
    assert again == response.resolution
    domain = resolution_from_proto(again)
    assert resolution_to_proto(domain) == response.resolution


def test_resolution_naming_an_unknown_node_is_refused() -> None:
    """A caller's resolution whose edge names no node: INVALID_ARGUMENT (for LoadTree)."""
    from pkgloader.errors import InvalidRequest

    message = pb.Resolution(
        root="a/b@1.0.0",
        nodes=[pb.ResolvedNode(id="a/b@1.0.0", dist=pb.DistributionInfo(webc_sha256="0" * 64))],
        edges=[pb.ResolvedEdge(**{"from": "a/b@1.0.0", "to": "c/d@1.0.0", "alias": "d"})],
    )
    with pytest.raises(InvalidRequest, match=r"c/d@1\.0\.0, which is not among its nodes"):
        resolution_from_proto(message)


def test_cycles_are_named_along_their_edges_from_the_node_nearest_the_root(
    make_server: Callable[..., Running], tmp_path: Path
) -> None:
    """root → a → b → c → a is spelled a → b → c → a; a package using itself, p → p."""
    folder = tmp_path / "files" / "cycles"
    folder.mkdir(parents=True)
    for name, use in [
        ("root", {"a": "t/a@1"}),
        ("a", {"b": "t/b@1"}),
        ("b", {"c": "t/c@1"}),
        ("c", {"a": "t/a@1"}),
        ("self", {"me": "t/self@1"}),
    ]:
        (folder / f"t--{name}@1.0.0.webc").write_bytes(
            package(f"t/{name}", "1.0.0", use=use, v3=True)
        )
    server = make_server(package_dirs=(folder,))
    code, reason, message, _ = failure(server, "t/root")
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DEPENDENCY_CYCLE")
    assert message == "Dependency cycle detected: t/a@1.0.0 → t/b@1.0.0 → t/c@1.0.0 → t/a@1.0.0"
    assert failure(server, "t/self")[2] == "Dependency cycle detected: t/self@1.0.0 → t/self@1.0.0"


def test_a_graph_larger_than_the_limit_is_resource_exhausted(tmp_path: Path) -> None:
    """The resolver stops at max_packages nodes rather than growing without bound."""
    from pkgloader.errors import ResourceExhausted
    from pkgloader.fetch.file import FileFetcher
    from pkgloader.resolve import DirectorySource, MultiSource, Resolver

    folder = tmp_path / "chain"
    folder.mkdir()
    for i in range(5):
        use = {"next": f"t/p{i + 1}@1"} if i < 4 else {}
        (folder / f"t--p{i}@1.0.0.webc").write_bytes(package(f"t/p{i}", "1.0.0", use=use))
    source = MultiSource([DirectorySource((folder,), FileFetcher((tmp_path,)))])
    assert len(Resolver(source).resolve("t/p0").resolution.nodes) == 5
    with pytest.raises(ResourceExhausted, match="more than 3 packages"):
        Resolver(source, max_packages=3).resolve("t/p0")


def test_folder_changes_are_seen_by_the_next_resolve(
    make_server: Callable[..., Running], tmp_path: Path
) -> None:
    """Listings and summaries are remembered, but a file added or rewritten is seen at once."""
    folder = _folder(tmp_path)
    server = make_server(package_dirs=(folder,))
    assert nodes(resolve(server, "wasmer/static-web-server@1")) == [
        "wasmer/static-web-server@1.4.2"
    ]
    (folder / "wasmer--static-web-server@1.5.0.webc").write_bytes(
        package("wasmer/static-web-server", "1.5.0", v3=True)
    )
    assert nodes(resolve(server, "wasmer/static-web-server@1")) == [
        "wasmer/static-web-server@1.5.0"
    ]
    # Rewritten in place with another manifest: its new commands are what resolves.
    (folder / "wasmer--static-web-server@1.5.0.webc").write_bytes(
        package("wasmer/static-web-server", "1.5.0", commands=("serve", "stop"), v3=True)
    )
    assert [c[0] for c in commands(resolve(server, "wasmer/static-web-server@1"))] == [
        "serve",
        "stop",
    ]


def test_resolve_settings_are_validated_at_start_up(tmp_path: Path) -> None:
    """A registry URL that is no http(s) URL, or a package folder outside the file roots,
    stops start-up with a message naming the variable."""
    from pkgloader.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="PKGLOADER_REGISTRY_URL"):
        Settings.load({"PKGLOADER_REGISTRY_URL": "ftp://registry.example/graphql"})
    with pytest.raises(SettingsError, match=r"PKGLOADER_PACKAGE_DIRS: .* is not under"):
        Settings.load(
            {"PKGLOADER_PACKAGE_DIRS": str(tmp_path / "a"), "PKGLOADER_FILE_ROOTS": "/srv"}
        )
    settings = Settings.load(
        {
            "PKGLOADER_PACKAGE_DIRS": f"{tmp_path}/a:{tmp_path}/b",
            "PKGLOADER_FILE_ROOTS": str(tmp_path),
            "PKGLOADER_REGISTRY_URL": "https://registry.wasmer.io/graphql",
            "PKGLOADER_REGISTRY_TTL": "60",
        }
    )
    assert settings.package_dirs == (tmp_path.resolve() / "a", tmp_path.resolve() / "b")
    assert (settings.registry_url, settings.registry_ttl) == (
        "https://registry.wasmer.io/graphql",
        60.0,
    )
