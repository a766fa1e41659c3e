"""Request bytes that are not a valid message, and ids too long to echo: a clear
INVALID_ARGUMENT with its ErrorInfo, logged and counted like any bad request, never UNKNOWN or
INTERNAL with a traceback (grpc parsing the request before the call starts did that)."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_status import rpc_status

from tests.conftest import HELLO, Running, load_request
from tests.reliability.conftest import error_info

CORRUPT = b"\xff\xff\xff"  # a field tag with no end: not a message of any type
BAD_UTF8 = b"\x0a\x06\x0a\x04\x0a\x02\xff\xfe"  # LoadRequest.summary.dist.webc_url, not UTF-8

SERVICE = "/pkgloader.v1.PackageLoaderService"


def _refused(call: grpc.RpcError) -> str:
    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT, (call.code(), call.details())
    assert "not a valid message" in (call.details() or "")
    assert "<class" not in (call.details() or "")
    return str(error_info(call).reason)


@pytest.mark.parametrize("body", [CORRUPT, BAD_UTF8], ids=["corrupt", "bad-utf8"])
def test_bytes_that_are_no_message_are_invalid_argument_on_every_kind_of_call(
    server: Running, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    channel = server.channel
    calls = {
        # server stream, ours
        "Load": lambda: list(channel.unary_stream(f"{SERVICE}/Load", None, None)(body, timeout=30)),
        # unary, ours
        "Evict": lambda: channel.unary_unary(f"{SERVICE}/Evict", None, None)(body, timeout=30),
        # unary, grpcio-health-checking's servicer
        "Check": lambda: channel.unary_unary("/grpc.health.v1.Health/Check", None, None)(
            body, timeout=30
        ),
        # bidi stream, grpcio-reflection's servicer
        "ServerReflectionInfo": lambda: list(
            channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None, None
            )(iter([body]), timeout=30)
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert _refused(refused.value) == "INVALID_ARGUMENT", name
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    registry = server.app.metrics.registry
    for name in calls:
        labels = {"method": name, "code": "INVALID_ARGUMENT"}
        assert registry.get_sample_value("pkgloader_rpc_duration_seconds_count", labels), labels
    # Nothing changed: the server still answers a good Load.
    package, _ = server.load(HELLO.url, HELLO.sha256)
    assert package.webc_sha256 == HELLO.sha256


def test_a_package_id_too_long_to_echo_is_invalid_argument(server: Running) -> None:
    long_id = "wasmer/" + "x" * 9000
    with pytest.raises(grpc.RpcError) as refused:
        list(
            server.stub.Load(load_request(HELLO.url, HELLO.sha256, package_id=long_id), timeout=30)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "package_id is 9007 characters long" in (refused.value.details() or "")
    assert rpc_status.from_call(refused.value) is not None  # type: ignore[arg-type]
    # An id of a real length is echoed as it came.
    package, _ = server.load(HELLO.url, HELLO.sha256, package_id="wasmer/hello@1.0.0")
    assert package.package_id == "wasmer/hello@1.0.0"
