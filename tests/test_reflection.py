"""Reflection serves the proto's comments, through grpcio-reflection's public seams only."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, struct_pb2, timestamp_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pkgloader.rpc.reflection import commented_files

from tests.conftest import Running

OURS = "pkgloader/v1/package_loader.proto"


def ask(channel: grpc.Channel, **request: str) -> list[descriptor_pb2.FileDescriptorProto]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [response] = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=10
    )
    assert response.HasField("file_descriptor_response"), response
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


def comments(proto: descriptor_pb2.FileDescriptorProto) -> list[str]:
    return [loc.leading_comments for loc in proto.source_code_info.location]


@pytest.mark.parametrize(
    "request_",
    [
        {"file_by_filename": OURS},
        {"file_containing_symbol": "pkgloader.v1.PackageLoaderService"},
        {"file_containing_symbol": "pkgloader.v1.LoadRequest"},
        {"file_containing_symbol": "pkgloader.v1.PackageLoaderService.Load"},
    ],
    ids=["by-filename", "by-service", "by-message", "by-method"],
)
def test_every_way_of_asking_for_our_file_gets_its_comments(
    server: Running, request_: dict[str, str]
) -> None:
    """By file name or by any symbol in it, our file comes with its source comments, and its
    dependencies (well-known types) come from the descriptor pool as before."""
    files = {f.name: f for f in ask(server.channel, **request_)}
    assert any("Loads packages for other services" in c for c in comments(files[OURS]))
    assert any("The package to load." in c for c in comments(files[OURS]))
    assert "google/protobuf/duration.proto" in files


def test_a_method_is_found_in_its_services_file_and_the_request_echoed(server: Running) -> None:
    """What `grpcurl describe Service.Method` (or `Enum.VALUE`) asks: the file of a method,
    ours or not, and of an enum value; each
    response echoes the request as the client sent it; an unknown name is still NOT_FOUND."""
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    asked = [
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="pkgloader.v1.PackageLoaderService.Evict"
        ),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.health.v1.Health.Check"
        ),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="pkgloader.v1.PackageLoaderService.Nope"
        ),
    ]
    asked.append(
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="pkgloader.v1.HashValidation.HASH_VALIDATION_FAIL"
        )
    )
    ours, health, unknown, value = stub.ServerReflectionInfo(iter(asked), timeout=10)
    assert [r.original_request for r in (ours, health, unknown, value)] == asked
    assert OURS in [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in value.file_descriptor_response.file_descriptor_proto
    ]
    names = [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in ours.file_descriptor_response.file_descriptor_proto
    ]
    assert OURS in names
    [raw] = health.file_descriptor_response.file_descriptor_proto
    assert descriptor_pb2.FileDescriptorProto.FromString(raw).name == "grpc_health/v1/health.proto"
    assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_other_files_are_served_unchanged(server: Running) -> None:
    """A file that is not ours (health) comes from the pool, as grpcio-reflection sends it."""
    [health] = ask(server.channel, file_containing_symbol="grpc.health.v1.Health")
    assert health.name == "grpc_health/v1/health.proto"
    assert health.service[0].name == "Health"


def test_a_pool_of_the_commented_files_would_lose_the_comments() -> None:
    """Why CommentedReflection rewrites answers instead of passing grpcio-reflection a pool: the
    pool's descriptors drop source info when serialized (CopyToProto, upb). If this starts to
    fail, an upgrade made the public `pool=` route work: use it and delete the rewriting."""
    pool = descriptor_pool.DescriptorPool()
    for module in (duration_pb2, struct_pb2, timestamp_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    pool.AddSerializedFile(commented_files()[OURS])
    copied = descriptor_pb2.FileDescriptorProto()
    pool.FindFileByName(OURS).CopyToProto(copied)
    assert comments(copied) == []
