"""LoadTree through the real gRPC API: commands to atoms across dependencies, mounts, atom
streams, the reference's INVALID_TREE failures, and a caller's resolution checked."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from pkgloader.formats import writer as w
from pkgloader_client import pb
from pytest_httpserver import HTTPServer

from tests._trees import (
    STATIC_DEP_ALIAS,
    STATIC_DEP_ID,
    STATIC_ROOT_ID,
    WASI,
    WEBSERVER_ATOM,
    Published,
    publish,
    resolution,
    static_tree,
    static_webserver_dependency,
    tree_request,
    v1_package,
    v3_package,
    wasi_command,
    wasm,
)
from tests.conftest import COWSAY, DASH, HELLO, STATIC, Running
from tests.test_load import error_info, expect_error

CHUNK = 1024 * 1024


def load_tree(
    server: Running, request: pb.LoadTreeRequest
) -> tuple[pb.BinaryPackage, list[pb.AtomChunk]]:
    responses = list(server.stub.LoadTree(request, timeout=60))
    assert responses[0].WhichOneof("item") == "package"
    assert all(r.WhichOneof("item") == "atom" for r in responses[1:])
    return responses[0].package, [r.atom for r in responses[1:]]


def atoms_by_hash(chunks: list[pb.AtomChunk]) -> dict[str, bytes]:
    """Reassemble the atom stream, checking each atom arrives whole, in order, once."""
    atoms: dict[str, bytearray] = {}
    order: list[str] = []
    for chunk in chunks:
        assert len(chunk.data) <= CHUNK
        if not order or order[-1] != chunk.atom_sha256:
            assert chunk.atom_sha256 not in atoms, "an atom was sent twice or interleaved"
            order.append(chunk.atom_sha256)
            atoms[chunk.atom_sha256] = bytearray()
        assert chunk.offset == len(atoms[chunk.atom_sha256])
        atoms[chunk.atom_sha256] += chunk.data
    return {k: bytes(v) for k, v in atoms.items()}


def fixture(f) -> Published:
    return Published(f"sha256:{f.sha256}", f.url, f.sha256, f.size)


def expect_invalid_tree(server: Running, request: pb.LoadTreeRequest, words: str) -> None:
    err = expect_error(lambda: load_tree(server, request), grpc.StatusCode.FAILED_PRECONDITION)
    assert error_info(err).reason == "INVALID_TREE"
    assert err.details() == words


@pytest.fixture
def files(tmp_path: Path) -> Path:
    return tmp_path / "files"  # one of the server's file roots (tests.conftest.test_settings)


# -- the v3 fixture and its dependency -------------------------------------------------------------


def test_static_webserver_script_runs_the_dependencys_webserver_atom(
    server: Running, files: Path
) -> None:
    """`script` (atom {name: webserver, dependency: wasmer/static-web-server}) maps through the
    edge of that alias to the dependency's atom; `/settings` mounts the root's own volume."""
    tree = static_tree(files)
    package, chunks = load_tree(server, tree_request(tree.resolution))
    assert package.id == STATIC_ROOT_ID
    assert list(package.package_ids) == [STATIC_ROOT_ID, STATIC_DEP_ID]
    assert package.entrypoint == "script"
    script, webserver = package.commands
    atom_sha = hashlib.sha256(WEBSERVER_ATOM).hexdigest()
    assert (script.name, script.declared_in, script.package) == (
        "script",
        STATIC_ROOT_ID,
        STATIC_DEP_ID,
    )
    assert (script.package_sha256, script.atom_name) == (tree.dependency.sha256, "webserver")
    assert (script.atom_sha256, script.atom_size) == (atom_sha, len(WEBSERVER_ATOM))
    assert script.runner == WASI
    assert json_format.MessageToDict(script.annotations)["wasi"]["main-args"] == [
        "-w",
        "/settings/config.toml",
    ]
    assert (webserver.declared_in, webserver.package, webserver.atom_sha256) == (
        STATIC_DEP_ID,
        STATIC_DEP_ID,
        atom_sha,
    )
    [mount] = package.mounts
    assert (mount.mount_path, mount.package, mount.package_sha256, mount.volume) == (
        "/settings",
        STATIC_ROOT_ID,
        STATIC.sha256,
        "/settings",
    )
    assert mount.original_path == "/"
    assert package.file_system_bytes == 3139  # /settings/config.toml
    assert [(p.id, p.webc_sha256, p.source) for p in package.packages] == [
        (STATIC_ROOT_ID, STATIC.sha256, pb.SOURCE_DOWNLOAD),
        (STATIC_DEP_ID, tree.dependency.sha256, pb.SOURCE_DOWNLOAD),
    ]
    assert chunks == []  # no atoms unless asked for


def test_atoms_stream_once_each_in_chunks_that_hash_to_atom_sha256(
    server: Running, files: Path
) -> None:
    """With include_atoms the one distinct atom (two commands run it) follows once, in ≤ 1 MiB
    chunks at increasing offsets, and its bytes are exactly the dependency's atom."""
    tree = static_tree(files)
    package, chunks = load_tree(server, tree_request(tree.resolution, include_atoms=True))
    assert len(chunks) == 2  # 1.5 MB: one full chunk and the rest
    atoms = atoms_by_hash(chunks)
    assert atoms == {package.commands[0].atom_sha256: WEBSERVER_ATOM}
    assert all(a.startswith(b"\0asm") for a in atoms.values())


def test_a_second_tree_comes_from_memory(server: Running, files: Path) -> None:
    """The packages of a tree are cached as Load caches them: a second LoadTree downloads none."""
    tree = static_tree(files)
    load_tree(server, tree_request(tree.resolution))
    package, _ = load_tree(server, tree_request(tree.resolution))
    assert [p.source for p in package.packages] == [pb.SOURCE_MEMORY, pb.SOURCE_MEMORY]


def test_what_a_warm_tree_remembers_is_charged_once_to_the_memory_tier(
    server: Running, files: Path
) -> None:
    """A tree's per-package facts (commands, atom digests, mounted bytes, annotations) are kept
    with the packages and charged to the memory tier on the first LoadTree; an identical second
    one adds nothing and answers the same."""
    tree = static_tree(files)
    memory = server.app.loader.memory
    packages = (tree.root, tree.dependency)
    for package in packages:
        server.load(package.url, package.sha256)
    loaded = [memory.charge_of(p.sha256) or 0 for p in packages]
    first, _ = load_tree(server, tree_request(tree.resolution))
    charged = [memory.charge_of(p.sha256) or 0 for p in packages]
    second, _ = load_tree(server, tree_request(tree.resolution))
    assert second == first
    assert all(c > before for c, before in zip(charged, loaded, strict=True))
    assert [memory.charge_of(p.sha256) for p in packages] == charged


def test_summary_root_must_match_the_resolution_root(server: Running, files: Path) -> None:
    """A summary names the root exactly; one that disagrees with the resolution is refused."""
    tree = static_tree(files)
    good = pb.PackageSummary(
        package_id="root", dist=pb.DistributionInfo(webc_url=STATIC.url, webc_sha256=STATIC.sha256)
    )
    package, _ = load_tree(server, tree_request(tree.resolution, summary=good))
    assert package.commands[0].package == STATIC_DEP_ID
    bad = pb.PackageSummary(
        dist=pb.DistributionInfo(webc_url=DASH.url, webc_sha256=DASH.sha256),
    )
    err = expect_error(
        lambda: load_tree(server, tree_request(tree.resolution, summary=bad)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "is not that of the resolution's root" in err.details()


# -- commands -----------------------------------------------------------------------------------


def test_v1_command_without_annotations_runs_the_atom_named_like_it(server: Running) -> None:
    """dash's command has empty annotations and a wasi@unstable_ runner: its own name is the atom;
    the v1 `atom` volume mounts at / like a v2 package's."""
    dash = fixture(DASH)
    res = resolution(
        dash,
        commands=[("dash", dash.id, "dash")],
        mounts=[("/", dash.id, "atom", "/")],
        entrypoint="dash",
    )
    package, chunks = load_tree(server, tree_request(res, include_atoms=True))
    [command] = package.commands
    assert (command.atom_name, command.atom_size) == ("dash", 332405)
    assert command.atom_sha256 == "ce4d85249665844ea9d882bda5efed67d127605735c7f5b674157804e624c9cc"
    assert atoms_by_hash(chunks)[command.atom_sha256][:4] == b"\0asm"
    [mount] = package.mounts
    assert (mount.volume, mount.original_path) == ("atom", "/")
    assert package.file_system_bytes == 1675  # /usr/coreutils/README.md


def test_legacy_first_atom_for_a_command_without_annotations(server: Running, files: Path) -> None:
    """A command with no annotations whose name is no atom runs the first atom in name order."""
    atoms = {"zeta": wasm("z"), "alpha": wasm("a")}
    pkg = publish(
        files,
        "old/tool@1.0.0",
        v1_package("old/tool", "1.0.0", atoms=atoms, commands={"sh": {"runner": WASI}}),
    )
    res = resolution(pkg, commands=[("sh", pkg.id, "sh")])
    package, _ = load_tree(server, tree_request(res))
    [command] = package.commands
    assert command.atom_name == "alpha"
    assert command.atom_sha256 == hashlib.sha256(atoms["alpha"]).hexdigest()


def test_wasi_atom_polyfill_with_a_dependency(server: Running, files: Path) -> None:
    """`wasi.atom: "dep:name"` (no `atom` annotation) resolves through the edge of `dep`."""
    lib_atom = wasm("lib")
    lib = publish(
        files,
        "acme/lib@2.0.0",
        v3_package(
            "acme/lib", "2.0.0", atoms={"core": lib_atom}, commands={"core": wasi_command("core")}
        ),
    )
    app = publish(
        files,
        "acme/app@1.0.0",
        v3_package(
            "acme/app",
            "1.0.0",
            commands={"run": {"runner": WASI, "annotations": {"wasi": {"atom": "lib:core"}}}},
            use={"lib": "acme/lib@2"},
        ),
    )
    res = resolution(
        app,
        [lib],
        edges=[(app.id, lib.id, "lib")],
        commands=[("run", app.id, "run"), ("core", lib.id, "core")],
    )
    package, _ = load_tree(server, tree_request(res))
    run = package.commands[0]
    assert (run.package, run.atom_name) == (lib.id, "core")
    assert run.atom_sha256 == hashlib.sha256(lib_atom).hexdigest()


def test_unsupported_runner_without_atom_is_skipped_with_a_warning(
    server: Running, files: Path
) -> None:
    """Only a command whose runner is neither WASI nor WCGI and that names no atom is skipped."""
    atom = wasm("game")
    pkg = publish(
        files,
        "acme/game@1.0.0",
        v3_package(
            "acme/game",
            "1.0.0",
            atoms={"game": atom},
            commands={
                "play": {"runner": "https://webc.org/runner/wasm4", "annotations": {}},
                "serve": {
                    "runner": "https://webc.org/runner/wcgi",
                    "annotations": {"wcgi": {"dialect": "rfc-3875"}},
                },
                "game": {"runner": "https://webc.org/runner/wasm4", "annotations": {}},
            },
        ),
    )
    res = resolution(
        pkg,
        commands=[(n, pkg.id, n) for n in ("play", "serve", "game")],
    )
    err = expect_error(
        lambda: load_tree(server, tree_request(res)), grpc.StatusCode.FAILED_PRECONDITION
    )
    # `serve` is WCGI, so its own name is its atom, and there is none of that name (with
    # annotations, so no legacy fallback either).
    assert "'serve' command uses the 'serve' atom" in err.details()
    res = resolution(pkg, commands=[(n, pkg.id, n) for n in ("play", "game")])
    package, _ = load_tree(server, tree_request(res))
    assert package.commands == []
    assert list(package.warnings) == [
        f'Skipping unsupported command "play" of "{pkg.id}" (runner https://webc.org/runner/wasm4)',
        f'Skipping unsupported command "game" of "{pkg.id}" (runner https://webc.org/runner/wasm4)',
    ]


# -- INVALID_TREE: the reference's failures, in its words ----------------------------------------


def test_missing_dependency_for_a_command(server: Running, files: Path) -> None:
    """An atom annotation naming an alias the package has no edge for."""
    pkg = publish(
        files,
        "acme/app@1.0.0",
        v3_package("acme/app", "1.0.0", commands={"run": wasi_command("x", "nowhere")}),
    )
    res = resolution(pkg, commands=[("run", pkg.id, "run")])
    expect_invalid_tree(
        server,
        tree_request(res),
        f'Unable to find the "nowhere" dependency for the "run" command in "{pkg.id}"',
    )


def test_shadowed_command(server: Running, files: Path) -> None:
    """The root's `run` takes its atom from a dependency whose own `run` it shadows, so nothing
    loads the dependency."""
    dep = publish(
        files,
        "acme/dep@1.0.0",
        v3_package(
            "acme/dep", "1.0.0", atoms={"run": wasm("d")}, commands={"run": wasi_command("run")}
        ),
    )
    app = publish(
        files,
        "acme/app@1.0.0",
        v3_package("acme/app", "1.0.0", commands={"run": wasi_command("run", "dep")}),
    )
    res = resolution(app, [dep], edges=[(app.id, dep.id, "dep")], commands=[("run", app.id, "run")])
    expect_invalid_tree(
        server,
        tree_request(res),
        f'The "run" command in "{app.id}" shadows an entry/command of the "dep" dependency. '
        "Rename the local command.",
    )


def test_missing_atom(server: Running, files: Path) -> None:
    """A command whose annotations name an atom the package does not hold."""
    pkg = publish(
        files,
        "acme/app@1.0.0",
        v3_package(
            "acme/app", "1.0.0", atoms={"real": wasm("r")}, commands={"run": wasi_command("ghost")}
        ),
    )
    res = resolution(pkg, commands=[("run", pkg.id, "run")])
    expect_invalid_tree(
        server,
        tree_request(res),
        f"The 'run' command uses the 'ghost' atom, but it isn't present in the package: {pkg.id})",
    )


def test_no_atom_at_all_for_a_legacy_command(server: Running, files: Path) -> None:
    """A command without annotations in a package with no atoms."""
    pkg = publish(
        files,
        "old/empty@1.0.0",
        v1_package("old/empty", "1.0.0", commands={"sh": {"runner": WASI}}),
    )
    res = resolution(pkg, commands=[("sh", pkg.id, "sh")])
    expect_invalid_tree(
        server,
        tree_request(res),
        f'The "sh" command in "{pkg.id}": container does not have any atom',
    )


def test_missing_command_metadata(server: Running) -> None:
    """A resolution naming a command its package does not declare."""
    dash = fixture(DASH)
    res = resolution(dash, commands=[("bash", dash.id, "bash")])
    expect_invalid_tree(
        server,
        tree_request(res),
        f'Unable to find the "bash" command metadata in the "{dash.id}" package',
    )


def test_missing_volume(server: Running) -> None:
    """A mount of a volume the package does not have."""
    static = fixture(STATIC)
    res = resolution(static, mounts=[("/data", static.id, "/data", "")])
    expect_invalid_tree(
        server,
        tree_request(res),
        f'The "{static.id}" package doesn\'t have a "/data" volume',
    )


@pytest.mark.parametrize(
    ("v2_like", "v3_like", "v2_volume", "v3_volume"),
    [(HELLO, STATIC, "atom", "/settings"), (DASH, COWSAY, "atom", "metadata")],
    ids=["v1+v3", "v1+tar.gz"],
)
def test_mixing_v2_and_v3_packages_in_the_mounts(
    server: Running, v2_like, v3_like, v2_volume: str, v3_volume: str
) -> None:
    """v1 counts as v2 and tar.gz as v3: one tree cannot mount both kinds."""
    a, b = fixture(v2_like), fixture(v3_like)
    res = resolution(
        a,
        [b],
        edges=[(a.id, b.id, "b")],
        mounts=[("/", a.id, v2_volume, "/"), ("/b", b.id, v3_volume, "")],
    )
    expect_invalid_tree(
        server,
        tree_request(res),
        "Mix of webc v2 and v3 in the same dependency tree is not supported; "
        f"v2: {a.id}, v3: {b.id}",
    )


def test_tarball_mounts_like_v3(server: Running) -> None:
    """A tar.gz package mounts its volume's root (as v3 does), whatever original_path says."""
    cowsay = fixture(COWSAY)
    res = resolution(
        cowsay,
        commands=[("cowsay", cowsay.id, "cowsay")],
        mounts=[("/doc", cowsay.id, "metadata", "/ignored")],
    )
    package, _ = load_tree(server, tree_request(res))
    [mount] = package.mounts
    assert (mount.mount_path, mount.volume, mount.original_path) == ("/doc", "metadata", "/")
    assert package.commands[0].atom_sha256 == (
        "0cf9a18923570a0e76eb5793522dc122f01cfda26db468fe9c3f9b1a1424550a"
    )


# -- bad input, corrupt atoms, failed loads ------------------------------------------------------


@pytest.mark.parametrize("where", ["edge", "mount", "command"])
def test_a_resolution_naming_an_unknown_node_is_invalid_argument(
    server: Running, files: Path, where: str
) -> None:
    """A caller's resolution is checked before anything loads."""
    tree = static_tree(files)
    res = pb.Resolution()
    res.CopyFrom(tree.resolution)
    if where == "edge":
        res.edges[0].to = "ghost/pkg@1.0.0"
    elif where == "mount":
        res.mounts[0].package = "ghost/pkg@1.0.0"
    else:
        res.commands[0].package = "ghost/pkg@1.0.0"
    err = expect_error(
        lambda: load_tree(server, tree_request(res)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "ghost/pkg@1.0.0" in err.details()
    assert server.app.loader.memory.get(STATIC.sha256) is None  # nothing was loaded


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("entrypoint", "nosuch", "entrypoint 'nosuch' is not one of its commands"),
        ("mount_path", "../../x", "mount path '../../x'"),
        ("mount_path", "/public/../../x", "mount path '/public/../../x'"),
        ("mount_path", "public", "mount path 'public'"),
        ("mount_path", "/a\x00b", "mount path '/a\\x00b'"),
    ],
)
def test_a_made_up_entrypoint_or_mount_path_is_invalid_argument(
    server: Running, files: Path, field: str, value: str, words: str
) -> None:
    """A caller's entrypoint must be one of its commands and its mount paths plain absolute
    paths; otherwise INVALID_ARGUMENT naming the value, before anything loads."""
    tree = static_tree(files)
    res = pb.Resolution()
    res.CopyFrom(tree.resolution)
    if field == "entrypoint":
        res.entrypoint = value
    else:
        res.mounts[0].mount_path = value
    err = expect_error(
        lambda: load_tree(server, tree_request(res)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error_info(err).reason == "INVALID_ARGUMENT"
    assert words in err.details()
    assert server.app.loader.memory.get(STATIC.sha256) is None  # nothing was loaded


def test_an_atom_that_does_not_match_its_signature_is_data_loss(
    server: Running, files: Path
) -> None:
    """The atom's bytes are hashed before anything is sent; a mismatch with the manifest's
    signature fails the call with DATA_LOSS and sends no item at all."""
    atom = wasm("real")
    pkg = publish(
        files,
        "acme/bad@1.0.0",
        v3_package(
            "acme/bad",
            "1.0.0",
            atoms={"run": atom},
            commands={"run": wasi_command("run")},
            signatures={"run": "sha256:" + "A" * 43 + "="},
        ),
    )
    res = resolution(pkg, commands=[("run", pkg.id, "run")])
    call = server.stub.LoadTree(tree_request(res, include_atoms=True), timeout=60)
    received: list[Any] = []
    with pytest.raises(grpc.RpcError) as caught:
        received.extend(call)
    assert received == []
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert error_info(caught.value).reason == "CONTENT_HASH_MISMATCH"
    assert "'run' atom of acme/bad@1.0.0" in caught.value.details()


def test_a_dependency_that_fails_to_load_keeps_loads_status(
    server: Running, httpserver: HTTPServer, files: Path
) -> None:
    """A package of the tree the upstream does not have is NOT_FOUND / UPSTREAM_NOT_FOUND, as
    Load says it."""
    tree = static_tree(files)
    res = pb.Resolution()
    res.CopyFrom(tree.resolution)
    httpserver.expect_request("/gone").respond_with_data("no", status=404)
    res.nodes[1].dist.webc_url = httpserver.url_for("/gone")
    err = expect_error(lambda: load_tree(server, tree_request(res)), grpc.StatusCode.NOT_FOUND)
    assert error_info(err).reason == "UPSTREAM_NOT_FOUND"


def test_a_wrongly_hashed_dependency_is_data_loss_like_load(server: Running, files: Path) -> None:
    """The loader's hash policy applies to every package of the tree."""
    tree = static_tree(files)
    res = pb.Resolution()
    res.CopyFrom(tree.resolution)
    res.nodes[1].dist.webc_sha256 = "0" * 64
    err = expect_error(lambda: load_tree(server, tree_request(res)), grpc.StatusCode.DATA_LOSS)
    assert error_info(err).reason == "HASH_MISMATCH"
    request = tree_request(res)
    request.hash_validation = pb.HASH_VALIDATION_WARN
    package, _ = load_tree(server, request)
    assert any("image hash mismatch" in w for w in package.warnings)


def test_static_dep_alias_is_the_fixtures_use_key() -> None:
    """The tree above is the one the fixture's manifest asks for (its `use` map and command)."""
    from pkgloader import formats

    with formats.open_package(STATIC.path) as container:
        assert [(d.alias, d.spec) for d in container.manifest.dependencies] == [
            (STATIC_DEP_ALIAS, "wasmer/static-web-server@^1")
        ]
        atom = container.manifest.commands[0].annotations["atom"]
        assert atom == {"name": "webserver", "dependency": STATIC_DEP_ALIAS}


# -- resolved by the server (no resolution given) ---------------------------------------------


@pytest.fixture
def package_dir(tmp_path: Path) -> Path:
    """A package folder (PKGLOADER_PACKAGE_DIRS) under the file roots, holding the dependency the
    v3 fixture's manifest asks for, under the name it asks for."""
    folder = tmp_path / "files" / "packages"
    folder.mkdir(parents=True)
    (folder / "wasmer--static-web-server@1.2.0.webc").write_bytes(static_webserver_dependency())
    return folder


def test_server_resolves_the_fixture_from_its_url_and_a_package_folder(
    make_server, package_dir: Path
) -> None:
    """LoadTree with only a specifier (the fixture's URL) resolves its `use` map offline, from
    the package folder: `script` runs the folder package's `webserver` atom."""
    server = make_server(package_dirs=(package_dir,))
    package, chunks = load_tree(server, tree_request(specifier=STATIC.url, include_atoms=True))
    assert package.id == STATIC_ROOT_ID
    assert list(package.package_ids) == [STATIC_ROOT_ID, STATIC_DEP_ID]
    script = package.commands[0]
    assert (script.name, script.package, script.atom_name) == ("script", STATIC_DEP_ID, "webserver")
    assert [(m.mount_path, m.package, m.volume) for m in package.mounts] == [
        ("/settings", STATIC_ROOT_ID, "/settings")
    ]
    assert atoms_by_hash(chunks) == {script.atom_sha256: WEBSERVER_ATOM}


def test_server_resolves_a_summary_root(make_server, package_dir: Path) -> None:
    """A root named by its summary is loaded as Load would, and its dependencies resolved."""
    server = make_server(package_dirs=(package_dir,))
    summary = pb.PackageSummary(
        package_id="static",
        dist=pb.DistributionInfo(webc_url=STATIC.url, webc_sha256=STATIC.sha256),
    )
    package, _ = load_tree(server, tree_request(summary=summary))
    assert package.commands[0].package == STATIC_DEP_ID
    bad = pb.PackageSummary(dist=pb.DistributionInfo(webc_url=STATIC.url, webc_sha256="0" * 64))
    err = expect_error(
        lambda: load_tree(server, tree_request(summary=bad)), grpc.StatusCode.DATA_LOSS
    )
    assert error_info(err).reason == "HASH_MISMATCH"


def test_an_unresolvable_dependency_keeps_resolves_status(server: Running) -> None:
    """Without the package folder the fixture's dependency is found nowhere: NOT_FOUND, as
    Resolve says it."""
    err = expect_error(
        lambda: load_tree(server, tree_request(specifier=STATIC.url)), grpc.StatusCode.NOT_FOUND
    )
    assert "wasmer/static-web-server" in err.details()


def _summary(url: str, sha: str) -> pb.PackageSummary:
    return pb.PackageSummary(dist=pb.DistributionInfo(webc_url=url, webc_sha256=sha))


class _CountingCommands(tuple):
    """A manifest's command tuple that counts how often it is walked."""

    walks = 0

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()


def test_commands_are_looked_up_by_name_not_by_a_scan_per_command(
    server: Running, files: Path
) -> None:
    """A tree of one package with 2,000 commands walks that package's command list a bounded
    number of times, not once per command: a scan per command made a crafted package with
    100,000 commands (a 10 MB file) hold a worker for minutes (quadratic)."""
    names = [f"c{i:05d}" for i in range(2000)]
    manifest = {
        "package": {"wapm": {"name": "test/many", "version": "1.0.0"}},
        "atoms": {"main": {"kind": "https://webc.org/kind/wasm", "signature": ""}},
        "commands": {
            n: {"runner": "https://webc.org/runner/wasi", "annotations": {"wasi": {"atom": "main"}}}
            for n in names
        },
    }
    data = w.write_indexed(manifest, {"main": b"\0asm\x01\0\0\0"}, {}, v3=True)
    path = files / "many.webc"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    list(server.stub.Load(pb.LoadRequest(summary=_summary(path.as_uri(), sha)), timeout=60))
    stored = server.app.loader.memory.get(sha)
    assert stored is not None
    container = stored.container
    container.manifest = dataclasses.replace(
        container.manifest, commands=_CountingCommands(container.manifest.commands)
    )
    _CountingCommands.walks = 0
    package, _ = load_tree(server, pb.LoadTreeRequest(summary=_summary(path.as_uri(), sha)))
    assert [c.name for c in package.commands] == names
    assert _CountingCommands.walks < 10
