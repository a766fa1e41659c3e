"""OpenTelemetry traces (issue 13.1): real OTLP receivers on 127.0.0.1 (the collector's
TraceService over gRPC, and OTLP/HTTP protobuf), a real server built from the OTEL_* variables
by the code path production uses (`app.build`), real Loads from a loopback upstream."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from pkgloader import traces, tracing
from pkgloader.logs import JsonFormatter
from pkgloader_client import SERVICE_NAME
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests._trees import static_tree, tree_request
from tests.conftest import DASH, HELLO, Running, Waiters, load_request
from tests.replicas import replicas

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
LOAD = f"/{SERVICE_NAME}/Load"
OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


@dataclass
class Span:
    """One received span, its ids in W3C hex."""

    name: str
    trace_id: str
    span_id: str
    parent: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace id, span id)
    resource: dict[str, Any]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Received:
    """What a receiver got, decoded; waited on, never slept for."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._changed = threading.Condition()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._changed:
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for s in scope.spans:
                        self.spans.append(
                            Span(
                                s.name,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                s.kind,
                                {a.key: _value(a.value) for a in s.attributes},
                                [(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                                resource,
                            )
                        )
            self._changed.notify_all()

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]

    def wait_for(self, check: Callable[[], bool], timeout: float = 30) -> bool:
        with self._changed:
            return self._changed.wait_for(check, timeout)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.received.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def otlp_grpc() -> Iterator[tuple[str, Received]]:
    """The collector's TraceService on 127.0.0.1, served by a grpc server in the test."""
    received = Received()
    server = grpc.server(
        futures.ThreadPoolExecutor(2, thread_name_prefix="otlp"),
        options=[("grpc.so_reuseport", 0)],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(None).wait()


@pytest.fixture
def otlp_http() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP (protobuf) receiver on 127.0.0.1: POST /v1/traces."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = self.path == "/v1/traces" and self.headers["Content-Type"] == (
                "application/x-protobuf"
            )
            if ok:
                received.add(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200 if ok else 400)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable from the outside leaks in; short export batches."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "pkgloader-under-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    return monkeypatch


def _traced_server(
    make_server: Callable[..., Running],
    otel_env: pytest.MonkeyPatch,
    endpoint: str,
    protocol: str,
    **overrides: Any,
) -> Running:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    server = make_server(**overrides)
    assert server.app.tracing is not None
    return server


def _flush(server: Running) -> None:
    assert server.app.tracing is not None
    assert server.app.tracing.provider.force_flush(30_000)


def _traceparent(span_id: str = PARENT_ID) -> tuple[tuple[str, str | bytes], ...]:
    return (
        ("traceparent", f"00-{TRACE_ID}-{span_id}-01"),
        ("baggage", "tenant=blue"),
    )


def _load(server: Running, url: str, sha: str, metadata: Any = None) -> None:
    responses = list(server.stub.Load(load_request(url, sha), timeout=60, metadata=metadata))
    assert responses[0].WhichOneof("item") == "package"


def _children(received: Received, parent: Span) -> dict[str, list[Span]]:
    out: dict[str, list[Span]] = {}
    for s in received.spans:
        if s.parent == parent.span_id and s.trace_id == parent.trace_id:
            out.setdefault(s.name, []).append(s)
    return out


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_load_continues_the_callers_trace_with_a_span_per_step(
    make_server, otel_env, otlp_grpc, otlp_http, httpserver: HTTPServer, protocol: str
) -> None:
    """Over either OTLP protocol: the server span continues the caller's traceparent; memory,
    disk, download, hash, parse and publish are its direct children, with the package's sha256,
    tier, bytes and upstream authority; the caller's baggage and trace reach the upstream."""
    endpoint, received = otlp_grpc if protocol == "grpc" else otlp_http
    server = _traced_server(make_server, otel_env, endpoint, protocol)
    httpserver.expect_request("/pkg").respond_with_data(DASH.data)

    _load(server, httpserver.url_for("/pkg"), DASH.sha256, _traceparent())
    _flush(server)

    [root] = [s for s in received.named(LOAD) if s.trace_id == TRACE_ID]
    assert root.parent == PARENT_ID
    assert root.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert root.resource["service.name"] == "pkgloader-under-test"
    assert root.attributes[traces.SHA256] == DASH.sha256
    assert root.attributes[traces.TIER] == "download"
    assert root.attributes[traces.BYTES] == DASH.size
    children = _children(received, root)
    assert children[traces.MEMORY][0].attributes[traces.HIT] is False
    assert children[traces.DISK][0].attributes[traces.HIT] is False
    [download] = children[traces.DOWNLOAD]
    assert download.attributes[traces.SHA256] == DASH.sha256
    assert download.attributes[traces.BYTES] == DASH.size
    assert download.attributes[traces.UPSTREAM] == f"127.0.0.1:{httpserver.port}"
    assert download.attributes["thread.name"].startswith("download")
    assert (root.trace_id, download.span_id) in root.links
    assert {s.attributes[traces.SHA256] for s in children[traces.PUBLISH]} == {DASH.sha256}
    assert len(children[traces.PUBLISH]) == 2  # the final hash, then the publish under it
    assert all(s.attributes[traces.SHA256] == DASH.sha256 for s in children[traces.PARSE])
    # The upstream request has its own CLIENT span in the same trace, and was told of the trace.
    [client] = [s for s in received.spans if s.kind == trace_pb2.Span.SPAN_KIND_CLIENT]
    assert client.trace_id == TRACE_ID
    headers = httpserver.log[0][0].headers
    assert headers["traceparent"].split("-")[1] == TRACE_ID
    assert headers["baggage"] == "tenant=blue"


def test_a_warm_load_is_a_memory_hit_span(make_server, otel_env, otlp_grpc) -> None:
    """The second Load of a package: one memory span that hit, the tier `memory` on the server
    span, and no download."""
    endpoint, received = otlp_grpc
    server = _traced_server(make_server, otel_env, endpoint, "grpc")
    _load(server, HELLO.url, HELLO.sha256)
    _load(server, HELLO.url, HELLO.sha256, _traceparent())
    _flush(server)
    [root] = [s for s in received.named(LOAD) if s.trace_id == TRACE_ID]
    assert root.attributes[traces.TIER] == "memory"
    children = _children(received, root)
    assert set(children) == {traces.MEMORY}
    assert children[traces.MEMORY][0].attributes[traces.HIT] is True


def test_a_shared_download_has_one_span_linked_from_every_caller(
    make_server, otel_env, otlp_grpc, httpserver: HTTPServer
) -> None:
    """Three concurrent Loads of one slow upstream share one download: one download span, a
    child of one caller, and every caller's server span links to it."""
    endpoint, received = otlp_grpc
    server = _traced_server(make_server, otel_env, endpoint, "grpc")
    waiters = Waiters.install(server)
    release = threading.Event()

    def slow(request: Request) -> Response:
        assert release.wait(30)
        return Response(DASH.data)

    httpserver.expect_request("/slow").respond_with_handler(slow)
    url = httpserver.url_for("/slow")
    callers = [f"{i + 1:016x}" for i in range(3)]
    with futures.ThreadPoolExecutor(3) as pool:
        loads = [
            pool.submit(_load, server, url, DASH.sha256, _traceparent(caller)) for caller in callers
        ]
        try:
            assert waiters.wait_for(3)
        finally:
            release.set()
        for load in loads:
            load.result(timeout=60)
    _flush(server)

    assert len(httpserver.log) == 1
    [download] = received.named(traces.DOWNLOAD)
    roots = [s for s in received.named(LOAD) if s.trace_id == TRACE_ID]
    assert sorted(r.parent for r in roots) == callers
    for root in roots:
        assert (download.trace_id, download.span_id) in root.links
        assert root.attributes[traces.TIER] == "download"
    assert download.parent in {r.span_id for r in roots}


def test_no_token_or_query_string_reaches_an_attribute(
    make_server, otel_env, otlp_grpc, httpserver: HTTPServer
) -> None:
    """An upstream token and a signed URL's query string appear in no span attribute (the
    HTTP client span's URL is cut to scheme, authority and path)."""
    endpoint, received = otlp_grpc
    authority = f"127.0.0.1:{httpserver.port}"
    server = _traced_server(
        make_server,
        otel_env,
        endpoint,
        "grpc",
        tokens={authority: "s3cret-token"},
        plaintext_token_authorities=(authority,),
    )
    httpserver.expect_request("/pkg").respond_with_data(HELLO.data)
    url = httpserver.url_for("/pkg") + "?sig=qs-secret&token=qs-token"
    _load(server, url, HELLO.sha256, _traceparent())
    _flush(server)

    assert httpserver.log[0][0].headers["Authorization"] == "Bearer s3cret-token"
    values = [
        str(v) for s in received.spans for v in (*s.attributes.values(), *s.resource.values())
    ]
    assert values
    for secret in ("s3cret-token", "qs-secret", "qs-token", "?"):
        assert not [v for v in values if secret in v], secret
    [client] = [s for s in received.spans if s.kind == trace_pb2.Span.SPAN_KIND_CLIENT]
    assert client.attributes["http.url"] == f"http://{authority}/pkg"


def test_every_access_log_line_names_its_trace_and_span(
    make_server, otel_env, otlp_grpc, caplog: pytest.LogCaptureFixture
) -> None:
    """The JSON access-log line of a traced call carries the caller's trace id (32 lowercase
    hex) and the server span's id; so does a failed call."""
    endpoint, received = otlp_grpc
    server = _traced_server(make_server, otel_env, endpoint, "grpc")
    caplog.set_level(logging.INFO, logger="pkgloader.access")
    _load(server, HELLO.url, HELLO.sha256, _traceparent())
    with pytest.raises(grpc.RpcError):
        _load(server, HELLO.url, "00" * 32, _traceparent("0000000000000abc"))
    _flush(server)

    entries = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "pkgloader.access"
    ]
    assert [e["status"] for e in entries] == ["OK", "DATA_LOSS"]
    spans = {s.span_id: s for s in received.named(LOAD)}
    for entry in entries:
        assert entry["trace_id"] == TRACE_ID
        assert spans[entry["span_id"]].trace_id == TRACE_ID
    failed = spans[entries[1]["span_id"]]
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.DATA_LOSS.value[0]


def test_tracing_is_off_without_the_variables(make_server, otel_env, caplog) -> None:
    """No OTEL exporter or endpoint variable: no SDK is built, no tracing interceptor is
    installed, the core's spans are off and the access log has no trace ids."""
    server = make_server()
    assert server.app.tracing is None
    assert not traces.on()
    caplog.set_level(logging.INFO, logger="pkgloader.access")
    _load(server, HELLO.url, HELLO.sha256, _traceparent())
    [record] = [r for r in caplog.records if r.name == "pkgloader.access"]
    assert "trace_id" not in json.loads(JsonFormatter().format(record))


@pytest.mark.parametrize(
    ("variables", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
    ],
)
def test_which_variables_turn_tracing_on(variables: dict[str, str], on: bool) -> None:
    """On with OTEL_TRACES_EXPORTER or an OTLP endpoint variable, off otherwise (and when the
    SDK is disabled or the exporter is `none`)."""
    assert tracing.enabled(variables) is on


@pytest.mark.parametrize(
    ("name", "value"),
    [("OTEL_TRACES_EXPORTER", "jaeger"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
)
def test_an_exporter_the_server_lacks_is_a_clear_error(otel_env, name: str, value: str) -> None:
    """An exporter or protocol this server cannot do fails at start, naming the variable."""
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    otel_env.setenv(name, value)
    with pytest.raises(tracing.TracingConfigError, match=name):
        tracing.from_env()


def test_each_package_of_a_load_tree_has_a_span_under_the_rpcs(
    make_server, otel_env, otlp_grpc, tmp_path
) -> None:
    """LoadTree: one tree-package span per package, each a direct child of the server span,
    with the package's id and sha256, and the Load's own spans (memory, disk, ...) under it."""
    endpoint, received = otlp_grpc
    server = _traced_server(make_server, otel_env, endpoint, "grpc")
    tree = static_tree(tmp_path / "files")
    responses = list(
        server.stub.LoadTree(tree_request(tree.resolution), timeout=60, metadata=_traceparent())
    )
    assert responses[0].WhichOneof("item") == "package"
    _flush(server)

    [root] = [s for s in received.named(f"/{SERVICE_NAME}/LoadTree") if s.trace_id == TRACE_ID]
    packages = _children(received, root)[traces.TREE_PACKAGE]
    assert {(p.attributes[traces.PACKAGE_ID], p.attributes[traces.SHA256]) for p in packages} == {
        (tree.root.id, tree.root.sha256),
        (tree.dependency.id, tree.dependency.sha256),
    }
    for package in packages:
        assert package.attributes[traces.TIER] in {"disk", "download"}
        assert traces.MEMORY in _children(received, package)


def test_a_content_encoded_download_has_a_decode_span(
    make_server, otel_env, otlp_grpc, httpserver: HTTPServer
) -> None:
    """A gzip-encoded body: a decode span (child of the server span) naming the coding and the
    decoded bytes."""
    endpoint, received = otlp_grpc
    server = _traced_server(make_server, otel_env, endpoint, "grpc")
    httpserver.expect_request("/gz").respond_with_data(
        gzip.compress(HELLO.data), headers={"Content-Encoding": "gzip"}
    )
    _load(server, httpserver.url_for("/gz"), HELLO.sha256, _traceparent())
    _flush(server)
    [root] = [s for s in received.named(LOAD) if s.trace_id == TRACE_ID]
    [decode] = _children(received, root)[traces.DECODE]
    assert decode.attributes[traces.CODINGS] == "gzip"
    assert decode.attributes[traces.BYTES] == HELLO.size


def test_pkgloader_serve_exports_over_http_protobuf_and_flushes_on_sigterm(
    otel_env, otlp_http, tmp_path
) -> None:
    """`pkgloader serve` with only OTEL_* variables set: its Load's SERVER span, continuing
    the caller's trace, reaches an OTLP/HTTP receiver by the time SIGTERM has stopped it."""
    endpoint, received = otlp_http
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # nothing leaves before the stop's flush
        "PKGLOADER_FILE_ROOTS": str(HELLO.path.parent),
    }
    with replicas(tmp_path / "cache", 1, **env) as [replica]:
        responses = list(
            replica.stub.Load(
                load_request(HELLO.url, HELLO.sha256), timeout=60, metadata=_traceparent()
            )
        )
        assert responses[0].package.webc_sha256 == HELLO.sha256
    assert replica.proc.returncode == 0
    assert received.wait_for(lambda: bool(received.named(LOAD)), 30)
    [root] = received.named(LOAD)
    assert (root.trace_id, root.parent) == (TRACE_ID, PARENT_ID)
    assert root.resource["service.name"] == "pkgloader-under-test"
    assert root.attributes[traces.TIER] == "download"


def test_pkgloader_serve_refuses_an_unknown_exporter(otel_env, tmp_path) -> None:
    """`pkgloader serve` with OTEL_TRACES_EXPORTER=jaeger exits 2 with a configuration error
    naming the variable, before it listens."""
    done = subprocess.run(
        [sys.executable, "-m", "pkgloader", "serve"],
        env=dict(
            os.environ,
            OTEL_TRACES_EXPORTER="jaeger",
            PKGLOADER_LISTEN="127.0.0.1:0",
            PKGLOADER_CACHE_DIR=str(tmp_path / "cache"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "configuration error" in done.stderr
    assert "OTEL_TRACES_EXPORTER" in done.stderr
