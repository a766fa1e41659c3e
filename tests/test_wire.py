"""The wire module (`rpc.wire`): one registration path for every RPC, and the per-package metadata
cache, kept outside the domain object and charged to the memory tier."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from pkgloader import app as app_module
from pkgloader.rpc import wire
from pkgloader.rpc.servicer import PackageLoaderServicer
from pkgloader_client import PackageLoaderServiceStub, pb

from tests.conftest import DASH, HELLO, load_request, test_settings


def test_every_method_of_the_proto_is_registered_with_its_kind() -> None:
    """`wire.handlers` makes one handler per method the service descriptor declares, of the
    descriptor's streaming kind, each bound to the servicer's method of that name."""
    servicer = PackageLoaderServicer.__new__(PackageLoaderServicer)
    table = wire.handlers(servicer)
    declared = {m.name: (m.client_streaming, m.server_streaming) for m in wire.SERVICE.methods}
    assert set(table) == set(declared)
    assert len(declared) >= 10
    for name, (client_streaming, server_streaming) in declared.items():
        handler = table[name]
        assert (handler.request_streaming, handler.response_streaming) == (
            client_streaming,
            server_streaming,
        )
        behaviour = next(
            b
            for b in (
                handler.unary_unary,
                handler.unary_stream,
                handler.stream_unary,
                handler.stream_stream,
            )
            if b is not None
        )
        assert behaviour == getattr(servicer, name)
        assert handler.response_serializer is wire.serialize


class _Recorder:
    """What a generated `add_..._to_server` calls on a server, recorded."""

    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)


def test_other_packages_services_are_added_as_generic_handlers_only() -> None:
    """Health's and reflection's generated registration reaches the server as a generic
    handler only (grpcio's asyncio server waits on one pending request per registered method
    for every call it accepts). Fails when an upgrade of their generated code stops adding the
    generic handler, which would leave the service unserved."""
    recorder = _Recorder()
    server: Any = wire.GenericOnly(recorder)  # type: ignore[arg-type]
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    reflected = reflection.ReflectionServicer([reflection.SERVICE_NAME])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflected, server)
    assert recorder.registered == []
    assert len(recorder.generic) == 2
    health_handler, reflection_handler = recorder.generic
    assert health_handler.service(_Details("/grpc.health.v1.Health/Check")) is not None
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert reflection_handler.service(_Details(method)) is not None


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


def test_our_service_is_registered_as_a_generic_handler_only() -> None:
    recorder = _Recorder()
    servicer = PackageLoaderServicer.__new__(PackageLoaderServicer)
    wire.register(servicer, recorder)  # type: ignore[arg-type]
    assert recorder.registered == []
    [generic] = recorder.generic
    assert generic.service(_Details("/pkgloader.v1.PackageLoaderService/Load")) is not None


def test_handlers_offered_only_as_registered_methods_are_served_as_a_generic_handler() -> None:
    """Generated code that registered methods without adding a generic handler (not today's)
    would still have its service served."""
    recorder = _Recorder()
    server: Any = wire.GenericOnly(recorder)  # type: ignore[arg-type]
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_registered_method_handlers("t.Only", {"Echo": handler})
    assert recorder.registered == []
    [generic] = recorder.generic
    assert generic.service(_Details("/t.Only/Echo")) is handler


def test_health_and_reflection_answer_on_the_production_server(tmp_path: Path) -> None:
    """Served through generic handlers only, every method of health and reflection still
    resolves: Check, Watch's first answer, and reflection's service list (List is not
    implemented by grpcio-health-checking's asyncio servicer: its generated base sets
    UNIMPLEMENTED and raises, which is the answer, not an INTERNAL of ours)."""
    app = app_module.build(test_settings(tmp_path))
    server, port = app_module.create_server(app)
    server.start()
    app_module.set_serving(app, True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            serving = health_pb2.HealthCheckResponse.SERVING
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
            watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=10)
            assert next(watch).status == serving
            watch.cancel()
            with pytest.raises(grpc.RpcError) as listed:
                stub.List(health_pb2.HealthListRequest(), timeout=10)
            assert listed.value.code() == grpc.StatusCode.UNIMPLEMENTED
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            [answer] = list(reflect.ServerReflectionInfo(iter([request]), timeout=10))
            names = {s.name for s in answer.list_services_response.service}
            assert "pkgloader.v1.PackageLoaderService" in names
            assert "grpc.health.v1.Health" in names
    finally:
        server.stop(None).wait()
        app.close()


def test_ready_made_bytes_and_messages_serialize_alike() -> None:
    """One serializer for every response: message bytes pass through, messages are serialized;
    a framed chunk parses as the message protobuf would have built."""
    message = pb.LoadResponse(chunk=b"x" * 300)
    assert wire.serialize(message) == message.SerializeToString()
    [framed] = wire.chunk_messages([b"x" * 300])
    assert wire.serialize(framed) is framed
    assert pb.LoadResponse.FromString(framed) == message
    assert pb.GetAtomResponse.FromString(framed).chunk == b"x" * 300


class _Messages(PackageLoaderServicer):
    """Yields parsed messages instead of the ready-made bytes: the same registration serves it."""

    def Load(self, request: Any, context: Any) -> Iterator[Any]:  # type: ignore[override]
        for item in super()._load(request, context):
            yield pb.LoadResponse.FromString(item)


@contextlib.contextmanager
def _served(
    tmp_path: Path, kind: type[PackageLoaderServicer]
) -> Iterator[tuple[app_module.App, wire.MetadataCache, Any]]:
    """The production server with a servicer of `kind` whose metadata cache the test can see."""
    app = app_module.build(test_settings(tmp_path))
    cache = wire.MetadataCache()
    servicer = kind(app.loader, app.maintenance, wire=cache)
    server, port = app_module.create_server(app, servicer=servicer)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield app, cache, PackageLoaderServiceStub(channel)
    finally:
        channel.close()
        server.stop(None).wait()
        app.close()


@pytest.fixture
def built(tmp_path: Path) -> Iterator[tuple[app_module.App, wire.MetadataCache, Any]]:
    with _served(tmp_path, _Messages) as parts:
        yield parts


def test_a_servicer_that_yields_messages_is_served_the_same(
    built: tuple[app_module.App, wire.MetadataCache, Any],
) -> None:
    """A servicer yielding messages (a subclass) and the real one yielding bytes answer alike."""
    _, _, stub = built
    responses = list(stub.Load(load_request(HELLO.url, HELLO.sha256, include_content=True)))
    assert responses[0].package.webc_sha256 == HELLO.sha256
    assert responses[0].package.manifest.dependencies[0].alias == "static-web-server"
    assert b"".join(r.chunk for r in responses[1:]) == HELLO.data


def test_kept_metadata_is_charged_to_the_memory_tier_and_leaves_with_the_package(
    built: tuple[app_module.App, wire.MetadataCache, Any],
) -> None:
    """The first Load keeps the package's serialized metadata in the wire cache (not on the
    package) and the memory tier charges it once; evicted from memory, the kept bytes go too."""
    app, cache, stub = built
    memory = app.loader.memory
    list(stub.Load(load_request(DASH.url, DASH.sha256)))  # download, admitted to memory
    stored = memory.get(DASH.sha256)
    assert stored is not None
    assert stored.memo == {}  # the domain object holds no serialized protobuf
    kept = cache.metadata(stored)
    first = next(iter(stub.Load(load_request(DASH.url, DASH.sha256)))).package
    assert first.manifest.atoms
    assert first.source == pb.SOURCE_MEMORY
    charged = memory.charge_of(DASH.sha256)
    assert charged == DASH.size + stored.container.retained_bytes + len(kept) + wire._KEPT_OVERHEAD
    list(stub.Load(load_request(DASH.url, DASH.sha256)))
    assert memory.charge_of(DASH.sha256) == charged  # charged once, not per Load
    assert len(cache) == 1
    stub.Evict(pb.EvictRequest(webc_sha256=[DASH.sha256], scope=pb.EVICT_SCOPE_MEMORY))
    del stored, kept
    gc.collect()
    assert len(cache) == 0


def test_a_memory_hit_reuses_its_whole_message_per_package_id(tmp_path: Path) -> None:
    """Warm Loads (the production servicer's memory-hit path) answer from one kept message per
    package: the same bytes again for the same package_id, rebuilt for another one, and charged
    to the memory tier once, whichever id it holds."""
    with _served(tmp_path, PackageLoaderServicer) as (app, cache, stub):

        def package(package_id: str) -> Any:
            request = load_request(DASH.url, DASH.sha256)
            request.summary.package_id = package_id
            return next(iter(stub.Load(request, timeout=30))).package

        assert package("").source == pb.SOURCE_DOWNLOAD
        # The first memory hit keeps the memory tier's package's metadata (on the pool), the
        # next one, answered on the event loop, its whole message.
        assert package("wasmer/dash@1").source == pb.SOURCE_MEMORY
        before = app.loader.memory.charge_of(DASH.sha256)
        built = package("wasmer/dash@1")
        assert built.source == pb.SOURCE_MEMORY
        stored = app.loader.memory.get(DASH.sha256)
        assert stored is not None
        charged = app.loader.memory.charge_of(DASH.sha256)
        kept = cache.metadata(stored)
        assert charged - before == len(kept) + wire._HIT_FIELDS + wire._KEPT_OVERHEAD
        again = package("wasmer/dash@1")
        assert again == built
        other = package("wasmer/dash@^1")
        assert other.package_id == "wasmer/dash@^1"
        other.package_id = built.package_id
        assert other == built  # only the id differs
        assert app.loader.memory.charge_of(DASH.sha256) == charged
        assert package("x" * 200).package_id == "x" * 200  # too long to keep, still answered
        assert app.loader.memory.charge_of(DASH.sha256) == charged
