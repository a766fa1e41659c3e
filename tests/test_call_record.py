"""The typed call record (`rpc.calls`): current in every kind of handler, on grpc's worker
threads, and the one thing the access log and the metrics read."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pkgloader import app as app_module
from pkgloader.app import SERVER_OPTIONS
from pkgloader.logs import JsonFormatter
from pkgloader.rpc import calls
from pkgloader.rpc.auth import TokenAuth
from pkgloader.rpc.calls import CallRecord
from pkgloader.rpc.interceptors import CallInterceptor, CallLimits
from pkgloader.rpc.server import Server

from tests.conftest import COWSAY, Running, load_request, test_settings

_SERVICE = "t.Records"


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    record = calls.current_or_none()
    assert record is not None
    record.package_id = "unary"
    return record.request_id.encode()


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    # Each step runs where grpc resumes the generator; the record must be this call's each time.
    for n in range(3):
        record = calls.current_or_none()
        assert record is not None
        record.sent_bytes += 1
        yield f"{record.request_id}:{n}:{threading.current_thread().name}".encode()


_CLOSED = threading.Event()


def _endless(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    try:
        while True:
            yield b"x" * 1024
    finally:
        record = calls.current_or_none()
        if record is not None and record.request_id == "gone":
            _CLOSED.set()


def _client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    record = calls.current_or_none()
    assert record is not None
    record.packages = sum(1 for _ in requests)
    return record.request_id.encode()


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for request in requests:
        record = calls.current_or_none()
        assert record is not None
        yield record.request_id.encode() + b"/" + request


@pytest.fixture
def record_server() -> Iterator[tuple[str, list[CallRecord]]]:
    """The real interceptor, with auth on, in front of one (blocking) handler of each kind."""
    seen: list[CallRecord] = []
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        "Endless": grpc.unary_stream_rpc_method_handler(_endless),
    }
    pool = futures.ThreadPoolExecutor(4, thread_name_prefix="rpc")

    def make() -> tuple[aio.Server, int]:
        server = aio.server(
            interceptors=[
                CallInterceptor(
                    observers=[seen.append], auth=TokenAuth({"good": "reader"}), pool=pool
                )
            ],
            options=SERVER_OPTIONS,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        return server, server.add_insecure_port("127.0.0.1:0")

    server, port = Server.build(make)
    server.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        server.stop(None).wait()
        pool.shutdown(wait=False)


_GOOD = (("authorization", "Bearer good"),)


def _ids(request_id: str) -> tuple[tuple[str, str], ...]:
    return (*_GOOD, ("x-request-id", request_id))


def test_the_record_is_current_in_unary_and_streaming_handlers(
    record_server: tuple[str, list[CallRecord]],
) -> None:
    """A unary handler and every step of a streaming generator see their own call's record; what
    they write reaches the observers."""
    address, seen = record_server
    with grpc.insecure_channel(address) as channel:
        assert (
            channel.unary_unary(f"/{_SERVICE}/Unary", None, None)(b"", metadata=_ids("u-1"))
            == b"u-1"
        )
        items = list(
            channel.unary_stream(f"/{_SERVICE}/Stream", None, None)(b"", metadata=_ids("s-1"))
        )
        bidi = channel.stream_stream(f"/{_SERVICE}/Bidi", None, None)(
            iter([b"a", b"b"]), metadata=_ids("b-1")
        )
        assert list(bidi) == [b"b-1/a", b"b-1/b"]
    assert [i.decode().split(":")[:2] for i in items] == [["s-1", "0"], ["s-1", "1"], ["s-1", "2"]]
    assert all(i.decode().split(":")[2].startswith("rpc") for i in items)  # grpc's workers
    by_id = {r.request_id: r for r in seen}
    assert by_id["u-1"].package_id == "unary"
    assert (by_id["u-1"].role, by_id["u-1"].code) == ("reader", "OK")
    assert by_id["s-1"].sent_bytes == 3
    assert by_id["b-1"].method == f"/{_SERVICE}/Bidi"


def test_concurrent_streams_never_see_each_others_record(
    record_server: tuple[str, list[CallRecord]],
) -> None:
    """Many streams at once on 4 worker threads: each generator step sees its own call's id."""
    address, _ = record_server
    with grpc.insecure_channel(address) as channel:
        stream = channel.unary_stream(f"/{_SERVICE}/Stream", None, None)
        calls_ = [stream(b"", metadata=_ids(f"c-{n}")) for n in range(24)]
        for n, call in enumerate(calls_):
            assert {i.decode().split(":")[0] for i in call} == {f"c-{n}"}


def test_a_client_streaming_method_is_authenticated_and_logged(
    record_server: tuple[str, list[CallRecord]], caplog: pytest.LogCaptureFixture
) -> None:
    """Fail closed: a client-streaming method goes through the same path as the others: no token,
    UNAUTHENTICATED (the handler never runs); with one, its record is filled, logged, observed."""
    address, seen = record_server
    caplog.set_level(logging.INFO, logger="pkgloader.access")
    with grpc.insecure_channel(address) as channel:
        method = channel.stream_unary(f"/{_SERVICE}/ClientStream", None, None)
        with pytest.raises(grpc.RpcError) as refused:
            method(iter([b"x"]), metadata=(("x-request-id", "anon"),))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert method(iter([b"1", b"2", b"3"]), metadata=_ids("cs-1")) == b"cs-1"
    by_id = {r.request_id: r for r in seen}
    assert (by_id["anon"].code, by_id["anon"].reason) == ("UNAUTHENTICATED", "UNAUTHENTICATED")
    assert by_id["anon"].packages is None  # the handler did not run
    assert (by_id["cs-1"].code, by_id["cs-1"].packages, by_id["cs-1"].role) == ("OK", 3, "reader")
    lines = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "pkgloader.access"
    ]
    assert {(line["request_id"], line["status"]) for line in lines} == {
        ("anon", "UNAUTHENTICATED"),
        ("cs-1", "OK"),
    }


def test_a_load_fills_one_record_that_the_log_and_metrics_share(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """The production server: a content Load's record gives the log its fields and the metrics
    their counts (served bytes, the Load counter by source)."""
    caplog.set_level(logging.INFO, logger="pkgloader.access")
    registry = server.app.metrics.registry
    list(server.stub.Load(load_request(COWSAY.url, COWSAY.sha256, include_content=True)))
    [line] = [r for r in caplog.records if r.name == "pkgloader.access"]
    entry: dict[str, Any] = json.loads(JsonFormatter().format(line))
    assert (entry["sent_bytes"], entry["source"]) == (COWSAY.size, "download")
    assert registry.get_sample_value("pkgloader_served_bytes_total") == COWSAY.size
    labels = {"source": "download", "outcome": "OK"}
    assert registry.get_sample_value("pkgloader_loads_total", labels) == 1


def test_a_stream_the_client_leaves_closes_the_servicers_generator_in_its_call(
    record_server: tuple[str, list[CallRecord]],
) -> None:
    """The client cancels an endless stream: the servicer's generator is closed (its `finally`
    runs, and sees its own call's record) and the call is recorded as CANCELLED."""
    address, seen = record_server
    _CLOSED.clear()
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_stream(f"/{_SERVICE}/Endless", None, None)(b"", metadata=_ids("gone"))
        assert next(iter(call)) == b"x" * 1024
        call.cancel()
        assert _CLOSED.wait(30)
    deadline = time.monotonic() + 30
    while not any(r.request_id == "gone" for r in seen) and time.monotonic() < deadline:
        time.sleep(0.05)  # a poll with a deadline: the record is observed after the close
    [record] = [r for r in seen if r.request_id == "gone"]
    assert record.code == "CANCELLED"


def test_the_production_server_authenticates_a_client_streaming_service(tmp_path: Path) -> None:
    """`create_server` with a further service of a client-streaming method: the production
    interceptor refuses it without a token and runs it, with the caller's role, with one."""
    app = app_module.build(test_settings(tmp_path, auth_tokens={"good": "reader"}))
    handler = grpc.method_handlers_generic_handler(
        _SERVICE, {"ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream)}
    )
    server, port = app_module.create_server(app, services=[handler])
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.stream_unary(f"/{_SERVICE}/ClientStream", None, None)
            with pytest.raises(grpc.RpcError) as refused:
                method(iter([b"x"]), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert method(iter([b"1", b"2"]), metadata=_ids("prod-1"), timeout=30) == b"prod-1"
    finally:
        server.stop(None).wait()
        app.close()
    labels = {"method": "ClientStream", "code": "UNAUTHENTICATED"}
    registry = app.metrics.registry
    assert registry.get_sample_value("pkgloader_rpc_duration_seconds_count", labels) == 1
    labels["code"] = "OK"
    assert registry.get_sample_value("pkgloader_rpc_duration_seconds_count", labels) == 1


def _unimplemented(request: bytes, context: grpc.ServicerContext) -> bytes:
    # What grpc's generated servicer bases do for a method the servicer does not implement.
    context.set_code(grpc.StatusCode.UNIMPLEMENTED)
    context.set_details("Method not implemented!")
    raise NotImplementedError("Method not implemented!")


def _unimplemented_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"first"
    context.set_code(grpc.StatusCode.UNIMPLEMENTED)
    context.set_details("the rest is not implemented")
    raise NotImplementedError("the rest")


def _refusing_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
    context.set_details("not now")
    yield from ()


def _set_then_abort(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    context.set_details("tentative")
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied")
    raise AssertionError("abort returned")


def _set_then_fail(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    yield b"first"
    raise ValueError("a bug after a tentative code")


#: Blocking behaviours that end with a status of their own, served beside ours.
_STATUS_HANDLERS = {
    "Unimplemented": grpc.unary_unary_rpc_method_handler(_unimplemented),
    "UnimplementedStream": grpc.unary_stream_rpc_method_handler(_unimplemented_stream),
    "Refusing": grpc.unary_stream_rpc_method_handler(_refusing_stream),
    "SetThenAbort": grpc.unary_unary_rpc_method_handler(_set_then_abort),
    "SetThenFail": grpc.unary_stream_rpc_method_handler(_set_then_fail),
}


@contextlib.contextmanager
def _serving(tmp_path: Path, handlers: dict[str, Any]) -> Iterator[tuple[app_module.App, Any]]:
    """The production server with `handlers` served beside ours (`create_server(services=)`),
    and a channel to it."""
    app = app_module.build(test_settings(tmp_path))
    generic = grpc.method_handlers_generic_handler(_SERVICE, handlers)
    server, port = app_module.create_server(app, services=[generic])
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield app, channel
    finally:
        server.stop(None).wait()
        app.close()


def _unary_error(channel: Any, name: str) -> grpc.RpcError:
    """The error a unary call of `name` ends with."""
    with pytest.raises(grpc.RpcError) as failed:
        channel.unary_unary(f"/{_SERVICE}/{name}", None, None)(b"", timeout=30)
    return failed.value


def _error_after_first(channel: Any, name: str) -> grpc.RpcError:
    """The error a stream of `name` ends with, after its first message (b"first")."""
    stream = iter(channel.unary_stream(f"/{_SERVICE}/{name}", None, None)(b"", timeout=30))
    assert next(stream) == b"first"
    with pytest.raises(grpc.RpcError) as failed:
        next(stream)
    return failed.value


def test_a_code_a_blocking_behaviour_set_is_its_status_raised_or_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A blocking behaviour that sets a code and then raises (grpc's generated bases) or
    returns answers with that code, as grpc's own servers do: not INTERNAL, and nothing
    logged as an unexpected error. Health's List, unimplemented by grpcio's servicer, is one."""
    with _serving(tmp_path, _STATUS_HANDLERS) as (app, channel):
        unary = _unary_error(channel, "Unimplemented")
        assert unary.code() == grpc.StatusCode.UNIMPLEMENTED
        assert unary.details() == "Method not implemented!"
        streamed = _error_after_first(channel, "UnimplementedStream")
        assert streamed.code() == grpc.StatusCode.UNIMPLEMENTED
        assert streamed.details() == "the rest is not implemented"
        with pytest.raises(grpc.RpcError) as refused:
            list(channel.unary_stream(f"/{_SERVICE}/Refusing", None, None)(b"", timeout=30))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details() == "not now"
        health_stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as listed:
            health_stub.List(health_pb2.HealthListRequest(), timeout=30)
        assert listed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    for method, code in (
        ("Unimplemented", "UNIMPLEMENTED"),
        ("UnimplementedStream", "UNIMPLEMENTED"),
        ("Refusing", "FAILED_PRECONDITION"),
        ("List", "UNIMPLEMENTED"),
    ):
        labels = {"method": method, "code": code}
        assert (
            app.metrics.registry.get_sample_value("pkgloader_rpc_duration_seconds_count", labels)
            == 1
        ), labels


def test_abort_after_a_set_code_and_a_bug_after_one_keep_their_own_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only NotImplementedError turns a set code into the status: an abort's own status wins
    over a code set before it, and any other exception after a set code is still an error of
    ours, INTERNAL and logged with its traceback."""
    with _serving(tmp_path, _STATUS_HANDLERS) as (_, channel):
        aborted = _unary_error(channel, "SetThenAbort")
        assert aborted.code() == grpc.StatusCode.PERMISSION_DENIED
        assert aborted.details() == "denied"
        assert _error_after_first(channel, "SetThenFail").code() == grpc.StatusCode.INTERNAL
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.exc_info[1] for r in errors if r.exc_info] != []
    assert all(isinstance(r.exc_info[1], ValueError) for r in errors if r.exc_info)


def test_calls_beyond_max_calls_are_refused_at_once_and_health_is_not_counted() -> None:
    """`CallLimits.max_calls`: with one blocking call running and a limit of one, the next
    business call is RESOURCE_EXHAUSTED (TOO_MANY_STREAMS) at once, not queued; health and
    reflection are not counted; once the first ends, calls are taken again."""
    release = threading.Event()
    entered = threading.Event()

    def blocks(request: bytes, context: grpc.ServicerContext) -> bytes:
        entered.set()
        release.wait(30)
        return b"done"

    def quick(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"quick"

    seen: list[CallRecord] = []
    pool = futures.ThreadPoolExecutor(4, thread_name_prefix="rpc")
    limits = CallLimits(
        content_streams_per_connection=1, send_timeout=30, infra_streams=1, max_calls=1
    )
    handlers = {
        "Blocks": grpc.unary_unary_rpc_method_handler(blocks),
        "Quick": grpc.unary_unary_rpc_method_handler(quick),
    }

    def make() -> tuple[aio.Server, int]:
        server = aio.server(
            interceptors=[CallInterceptor(observers=[seen.append], limits=limits, pool=pool)],
            options=SERVER_OPTIONS,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # type: ignore[attr-defined]
        return server, server.add_insecure_port("127.0.0.1:0")

    server, port = Server.build(make)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            first = channel.unary_unary(f"/{_SERVICE}/Blocks", None, None).future(b"", timeout=30)
            assert entered.wait(30)
            quick_call = channel.unary_unary(f"/{_SERVICE}/Quick", None, None)
            with pytest.raises(grpc.RpcError) as refused:
                quick_call(b"", timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Health is not a business call: not counted, not refused.
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                health_pb2.HealthCheckRequest.SerializeToString,
                health_pb2.HealthCheckResponse.FromString,
            )
            answer = check(health_pb2.HealthCheckRequest(), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            release.set()
            assert first.result() == b"done"
            assert quick_call(b"", timeout=30) == b"quick"
    finally:
        release.set()
        server.stop(None).wait()
        pool.shutdown(wait=False)
    refusals = [r for r in seen if r.code == "RESOURCE_EXHAUSTED"]
    assert [(r.method, r.reason) for r in refusals] == [(f"/{_SERVICE}/Quick", "TOO_MANY_STREAMS")]
