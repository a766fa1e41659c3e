"""Client auth (tokens and roles), TLS and mutual TLS, the outbound allow-list, and limits."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import threading
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from pkgloader import app as app_module
from pkgloader.errors import UpstreamBlocked
from pkgloader.fetch.guard import UpstreamPolicy
from pkgloader_client import PackageLoaderServiceStub, pb
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.conftest import DASH, HELLO, Running, load_request, test_settings

READER, ADMIN = "reader-token-7d2e", "admin-token-91af"


def reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return str(info.reason)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def secured(make_server) -> Running:
    return make_server(auth_tokens={READER: "reader", ADMIN: "admin"})


def call_code(fn) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# -- authentication and roles ------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        bearer("wrong-token"),
        [("authorization", READER)],
        [("authorization", "Basic Zm9vOmJhcg==")],
    ],
)
def test_calls_without_a_valid_token_are_unauthenticated(secured: Running, metadata) -> None:
    """No token, an unknown token, a token without `Bearer`, another scheme: UNAUTHENTICATED."""
    with pytest.raises(grpc.RpcError) as caught:
        list(secured.stub.Load(load_request(HELLO.url, HELLO.sha256), metadata=metadata))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(caught.value) == "UNAUTHENTICATED"
    assert secured.app.loader.memory.keys() == []


def test_reader_may_load_scan_evict_memory_and_validate_without_pruning(secured: Running) -> None:
    """The reader role covers everything that changes no shared state."""
    md = bearer(READER)
    first = next(iter(secured.stub.Load(load_request(HELLO.url, HELLO.sha256), metadata=md)))
    assert first.package.webc_sha256 == HELLO.sha256
    assert (
        len([e for r in secured.stub.Scan(pb.ScanRequest(), metadata=md) for e in r.entries]) == 1
    )
    secured.stub.Evict(pb.EvictRequest(webc_sha256=[HELLO.sha256]), metadata=md)
    secured.stub.ValidateCache(pb.ValidateCacheRequest(), metadata=md)


@pytest.mark.parametrize(
    "call",
    [
        lambda stub, md: stub.Retain(pb.RetainRequest(max_total_bytes=0), metadata=md),
        lambda stub, md: stub.Evict(
            pb.EvictRequest(webc_sha256=[HELLO.sha256], scope=pb.EVICT_SCOPE_ALL), metadata=md
        ),
        lambda stub, md: stub.ValidateCache(
            pb.ValidateCacheRequest(mode=pb.CACHE_VALIDATION_PRUNE), metadata=md
        ),
        lambda stub, md: stub.ValidateCache(pb.ValidateCacheRequest(deep=True), metadata=md),
    ],
    ids=["retain", "evict-all", "validate-prune", "validate-deep"],
)
def test_state_changing_calls_need_the_admin_role(secured: Running, call) -> None:
    """Retain, Evict(ALL), ValidateCache(PRUNE) and the costly deep ValidateCache:
    PERMISSION_DENIED for a reader, fine for admin."""
    list(secured.stub.Load(load_request(HELLO.url, HELLO.sha256), metadata=bearer(READER)))
    cache = secured.app.settings.cache_dir / f"{HELLO.sha256}.bin"
    with pytest.raises(grpc.RpcError) as caught:
        call(secured.stub, bearer(READER))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "ADMIN_REQUIRED"
    assert cache.exists()
    call(secured.stub, bearer(ADMIN))


def test_health_and_reflection_stay_open_by_default(secured: Running) -> None:
    """Probes and grpcurl's reflection need no token (PKGLOADER_AUTH_EXEMPT)."""
    health = health_pb2_grpc.HealthStub(secured.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest()).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    stub = reflection_pb2_grpc.ServerReflectionStub(secured.channel)
    [answer] = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in answer.list_services_response.service}
    assert "pkgloader.v1.PackageLoaderService" in names


def test_reflection_needs_a_token_when_not_exempt(make_server) -> None:
    """With an empty exemption list even reflection (a bidi stream) is authenticated."""
    server = make_server(auth_tokens={READER: "reader"}, auth_exempt=())
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ServerReflectionInfo(iter([request])))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert list(stub.ServerReflectionInfo(iter([request]), metadata=bearer(READER)))


def test_client_tokens_never_reach_the_log(secured: Running, caplog) -> None:
    """Neither a valid nor a rejected token is written to any log record."""
    caplog.set_level(logging.DEBUG)
    list(secured.stub.Load(load_request(HELLO.url, HELLO.sha256), metadata=bearer(READER)))
    call_code(
        lambda: list(
            secured.stub.Load(
                load_request(HELLO.url, HELLO.sha256), metadata=bearer("guess-" + ADMIN)
            )
        )
    )
    assert READER not in caplog.text
    assert ADMIN not in caplog.text


def test_auth_tokens_file_with_an_unknown_role_is_refused(tmp_path: Path) -> None:
    """Roles are reader or admin; anything else stops start-up, naming the variable."""
    from pkgloader.settings import Settings, SettingsError

    path = tmp_path / "auth.json"
    path.write_text('{"tok": "root"}')
    with pytest.raises(SettingsError, match="PKGLOADER_AUTH_TOKENS_FILE"):
        Settings.load({"PKGLOADER_AUTH_TOKENS_FILE": str(path)})


# -- TLS ------------------------------------------------------------------------------------


def _cert(
    subject: str, key, issuer_cert=None, issuer_key=None, *, ca: bool = False, server: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("pkgloader test CA", ca_key, ca=True)
    files: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        files[name] = folder / name
        files[name].write_bytes(data)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(who, key, ca, ca_key, server=who == "server")
        write(f"{who}.pem", cert.public_bytes(serialization.Encoding.PEM))
        write(f"{who}.key", pem_key(key))
    return files


def _tls_channel(port: int, pki: dict[str, Path], with_client_cert: bool) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca.pem"].read_bytes(),
        private_key=pki["client.key"].read_bytes() if with_client_cert else None,
        certificate_chain=pki["client.pem"].read_bytes() if with_client_cert else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def test_tls_serves_clients_that_trust_the_ca(make_server, pki) -> None:
    """PKGLOADER_TLS_CERT/KEY: a TLS client loads; a plaintext client cannot talk to it."""
    server = make_server(tls_cert=pki["server.pem"], tls_key=pki["server.key"])
    with _tls_channel(server.port, pki, with_client_cert=False) as channel:
        first = next(
            PackageLoaderServiceStub(channel).Load(
                load_request(HELLO.url, HELLO.sha256), timeout=20
            )
        )
        assert first.package.size == HELLO.size
    code = call_code(
        lambda: list(server.stub.Load(load_request(HELLO.url, HELLO.sha256), timeout=5))
    )
    assert code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(make_server, pki) -> None:
    """PKGLOADER_TLS_CLIENT_CA: a client without a certificate from that CA is turned away."""
    server = make_server(
        tls_cert=pki["server.pem"], tls_key=pki["server.key"], tls_client_ca=pki["ca.pem"]
    )
    with _tls_channel(server.port, pki, with_client_cert=False) as channel:
        code = call_code(
            lambda: list(
                PackageLoaderServiceStub(channel).Load(
                    load_request(HELLO.url, HELLO.sha256), timeout=5
                )
            )
        )
        assert code == grpc.StatusCode.UNAVAILABLE
    with _tls_channel(server.port, pki, with_client_cert=True) as channel:
        first = next(
            PackageLoaderServiceStub(channel).Load(
                load_request(HELLO.url, HELLO.sha256), timeout=20
            )
        )
        assert first.package.size == HELLO.size


# -- outbound allow-list (SSRF) --------------------------------------------------------------


class CountingListener:
    """A TCP listener on 127.0.0.1 that counts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.1.2.3"])
def test_loopback_upstreams_are_refused_by_default_and_never_connected_to(
    make_server, host: str
) -> None:
    """With no allow-list only public addresses may be fetched: loopback is PERMISSION_DENIED
    before any connection is made."""
    listener = CountingListener()
    try:
        server = make_server(upstream_allow=())
        url = f"http://{host}:{listener.port}/pkg.webc"
        with pytest.raises(grpc.RpcError) as caught:
            server.load(url, HELLO.sha256)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason(caught.value) == "UPSTREAM_BLOCKED"
        assert listener.accepted == 0
    finally:
        listener.close()


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "224.0.0.1",
        "::ffff:127.0.0.1",
    ],
)
def test_non_public_addresses_are_refused_by_the_policy(address: str) -> None:
    """Private, link-local (cloud metadata), CGNAT, unspecified, multicast: all refused.
    (Checked on the policy alone: no traffic is ever sent to these addresses.)"""
    with pytest.raises(UpstreamBlocked):
        UpstreamPolicy(()).check_address("example.org", ipaddress.ip_address(address))


def test_public_addresses_pass_an_empty_allow_list() -> None:
    """An empty allow-list means any public address (checked on the policy alone)."""
    UpstreamPolicy(()).check_address("example.org", ipaddress.ip_address("93.184.216.34"))


def test_allow_list_by_cidr_host_and_prefix(make_server, httpserver: HTTPServer) -> None:
    """A CIDR or a URL prefix allows loopback; a prefix allows only URLs under it."""
    httpserver.expect_request("/ok/hello").respond_with_data(HELLO.data)
    httpserver.expect_request("/other/dash").respond_with_data(DASH.data)
    by_range = make_server(upstream_allow=("127.0.0.0/8",), cache_dir=None)
    assert by_range.load(httpserver.url_for("/ok/hello"), HELLO.sha256)[0].size == HELLO.size
    prefix = f"http://127.0.0.1:{httpserver.port}/ok/"
    by_prefix = make_server(upstream_allow=(prefix,), cache_dir=None)
    assert by_prefix.load(httpserver.url_for("/ok/hello"), HELLO.sha256)[0].size == HELLO.size
    with pytest.raises(grpc.RpcError) as caught:
        by_prefix.load(httpserver.url_for("/other/dash"), DASH.sha256)
    assert reason(caught.value) == "UPSTREAM_BLOCKED"
    wrong_range = make_server(upstream_allow=("10.0.0.0/8",), cache_dir=None)
    with pytest.raises(grpc.RpcError) as caught:
        wrong_range.load(httpserver.url_for("/ok/hello"), HELLO.sha256)
    assert reason(caught.value) == "UPSTREAM_BLOCKED"


def test_a_redirect_to_a_refused_address_is_never_followed(
    make_server, httpserver: HTTPServer
) -> None:
    """Every hop is checked: an allowed upstream redirecting to a refused one fails unconnected."""
    listener = CountingListener()
    try:
        prefix = f"http://127.0.0.1:{httpserver.port}/"
        server = make_server(upstream_allow=(prefix,))
        httpserver.expect_request("/start").respond_with_handler(
            lambda request: Response(
                "", status=302, headers={"Location": f"http://127.0.0.1:{listener.port}/pkg"}
            )
        )
        with pytest.raises(grpc.RpcError) as caught:
            server.load(httpserver.url_for("/start"), HELLO.sha256)
        assert reason(caught.value) == "UPSTREAM_BLOCKED"
        assert listener.accepted == 0
    finally:
        listener.close()


def test_bad_allow_list_entries_stop_start_up() -> None:
    """A malformed CIDR or prefix is a configuration error naming the variable."""
    from pkgloader.settings import Settings, SettingsError

    for bad in ("10.0.0.0/99", "ftp://x/", "bad host"):
        with pytest.raises(SettingsError, match="PKGLOADER_UPSTREAM_ALLOW"):
            Settings.load({"PKGLOADER_UPSTREAM_ALLOW": bad})


# -- resource limits -------------------------------------------------------------------------


def test_download_queue_is_bounded(make_server, httpserver: HTTPServer) -> None:
    """Beyond max_queued_downloads, a new download is RESOURCE_EXHAUSTED at once."""
    release = threading.Event()

    def slow(request: Request) -> Response:
        release.wait(10)
        return Response(HELLO.data)

    httpserver.expect_request("/slow").respond_with_handler(slow)
    server = make_server(max_queued_downloads=1)
    results: list[object] = []
    thread = threading.Thread(
        target=lambda: results.append(
            call_code(lambda: server.load(httpserver.url_for("/slow"), HELLO.sha256))
        )
    )
    thread.start()
    try:
        for _ in range(200):
            if server.app.loader.inflight:
                break
            threading.Event().wait(0.02)
        with pytest.raises(grpc.RpcError) as caught:
            server.load(DASH.url, DASH.sha256)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        release.set()
        thread.join(30)
    assert results == [grpc.StatusCode.OK]


def test_server_side_deadline_applies_when_the_client_sets_none(make_server) -> None:
    """A call without a deadline waiting on a stalled upstream ends at PKGLOADER_CALL_TIMEOUT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts at the TCP level, never answers
    try:
        server = make_server(call_timeout=1.0)
        with pytest.raises(grpc.RpcError) as caught:
            server.load(f"http://127.0.0.1:{listener.getsockname()[1]}/p", HELLO.sha256)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "continues" in caught.value.details()
    finally:
        listener.close()


def test_oversized_requests_are_refused(make_server) -> None:
    """A request over PKGLOADER_MAX_REQUEST_BYTES is RESOURCE_EXHAUSTED and changes nothing."""
    server = make_server(max_request_bytes=64 * 1024)
    server.load(HELLO.url, HELLO.sha256)
    huge = pb.RetainRequest(remove_sha256=[HELLO.sha256] * 2000)
    assert huge.ByteSize() > 64 * 1024
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Retain(huge)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (server.app.settings.cache_dir / f"{HELLO.sha256}.bin").exists()


def test_guarded_transport_is_what_the_client_uses(tmp_path: Path) -> None:
    """The client the app builds goes through GuardedTransport: loopback is refused by default."""
    app = app_module.build(test_settings(tmp_path, upstream_allow=()))
    try:
        with pytest.raises(UpstreamBlocked):
            app.http.get("http://127.0.0.1:9/")
    finally:
        app.close()


def test_health_port_answers_probes_in_plaintext_while_the_api_needs_tls(tmp_path, pki) -> None:
    """PKGLOADER_HEALTH_LISTEN: plaintext health for Kubernetes probes, and nothing else there."""
    app = app_module.build(
        test_settings(tmp_path, tls_cert=pki["server.pem"], tls_key=pki["server.key"])
    )
    health_server, port = app_module.create_health_server(app, "127.0.0.1:0")
    health_server.start()
    app_module.set_serving(app, True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(
                    health_pb2.HealthCheckRequest(service="pkgloader.v1.PackageLoaderService"),
                    timeout=10,
                )
                .status
            )
            assert status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as caught:
                list(
                    PackageLoaderServiceStub(channel).Load(
                        load_request(HELLO.url, HELLO.sha256), timeout=10
                    )
                )
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        health_server.stop(None)
        app.close()
