"""The servicer on the production server (`app.create_server`, one module-scoped instance): what
Load returns for the fixtures, health, Scan, reflection.

These once ran through pytest-grpc's fixtures. The plugin is gone: its server fixtures build a
bare `grpc.server` from a servicer and interceptors (not the production wiring: no limits,
pools, options, health or reflection), its `grpc_addr` probes a port on `localhost` and
releases it (racy, and not always 127.0.0.1), and its fake-server mode imports grpc's private
modules; what was left (a channel and a stub for an address) is two lines here."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pkgloader_client import PackageLoaderServiceStub, pb

from tests.conftest import COWSAY, STATIC, load_request, running, test_settings


@pytest.fixture(scope="module")
def grpc_channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    with running(test_settings(tmp_path_factory.mktemp("servicer"))) as server:
        yield server.channel


@pytest.fixture(scope="module")
def grpc_stub(grpc_channel: grpc.Channel) -> PackageLoaderServiceStub:
    return PackageLoaderServiceStub(grpc_channel)


def test_load_returns_the_v3_manifest(grpc_stub: PackageLoaderServiceStub) -> None:
    """Load of the v3 fixture returns its entrypoint, command annotations and dependency."""
    first = next(iter(grpc_stub.Load(load_request(STATIC.url, STATIC.sha256))))
    manifest = first.package.manifest
    assert manifest.entrypoint == "script"
    [command] = manifest.commands
    assert command.runner == "https://webc.org/runner/wasi"
    assert command.annotations["atom"]["dependency"] == "wasmer/static-web-server"
    assert list(command.annotations["wasi"]["main-args"]) == ["-w", "/settings/config.toml"]
    assert [(d.alias, d.spec) for d in manifest.dependencies] == [
        ("wasmer/static-web-server", "wasmer/static-web-server@^1")
    ]
    assert {v.name: (v.files, v.bytes) for v in first.package.volumes} == {
        "/settings": (1, 3139),
        "metadata": (0, 0),
    }


def test_load_returns_the_converted_tarball_manifest(grpc_stub: PackageLoaderServiceStub) -> None:
    """Load of cowsay.tar.gz returns wasmer's converted manifest (atoms, runners, no entrypoint)."""
    manifest = next(iter(grpc_stub.Load(load_request(COWSAY.url, COWSAY.sha256)))).package.manifest
    assert not manifest.HasField("entrypoint")
    assert [(c.name, c.runner) for c in manifest.commands] == [
        ("cowsay", "https://webc.org/runner/wasi"),
        ("cowthink", "https://webc.org/runner/wasi"),
    ]
    [atom] = manifest.atoms
    assert (atom.name, atom.kind, atom.signature, atom.size) == (
        "cowsay",
        "https://webc.org/kind/wasm",
        "sha256:DPmhiSNXCg5261eTUi3BIvAc/aJttGj+nD+bGhQkVQo=",
        1058629,
    )
    assert manifest.package["wapm"]["repository"] == "https://github.com/wapm-packages/cowsay"


def test_health_is_serving(grpc_channel: grpc.Channel) -> None:
    """The standard health service answers SERVING on the same port."""
    stub = health_pb2_grpc.HealthStub(grpc_channel)
    response = stub.Check(
        health_pb2.HealthCheckRequest(service="pkgloader.v1.PackageLoaderService")
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_scan_after_loads(grpc_stub: PackageLoaderServiceStub) -> None:
    """The module's loads are listed by Scan."""
    next(iter(grpc_stub.Load(load_request(COWSAY.url, COWSAY.sha256))))
    hashes = {e.webc_sha256 for r in grpc_stub.Scan(pb.ScanRequest()) for e in r.entries}
    assert COWSAY.sha256 in hashes


def test_reflection_serves_the_proto_comments(grpc_channel: grpc.Channel) -> None:
    """Reflection sends our file with its source comments (grpcurl describe shows the docs)."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="pkgloader.v1.PackageLoaderService"
    )
    [response] = stub.ServerReflectionInfo(iter([request]))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    [ours] = [f for f in files if f.name == "pkgloader/v1/package_loader.proto"]
    comments = [loc.leading_comments for loc in ours.source_code_info.location]
    assert any("Loads packages for other services" in c for c in comments)
    assert any("The package to load." in c for c in comments)
