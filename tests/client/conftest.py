"""Parts for the client tests: a real server with a chosen servicer, interceptors or TLS; servicers
that fail in chosen ways mid-stream; a throwaway CA; the installed tools (node, buf, grpcurl)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from pkgloader import app as app_module
from pkgloader import errors
from pkgloader.rpc.server import Server
from pkgloader.rpc.servicer import PackageLoaderServicer
from pkgloader_client import pb

from tests.conftest import REPO, test_settings

NODE_DIR = REPO / "tests" / "node"
NODE_BIN = NODE_DIR / "node_modules" / ".bin"
VENV_BIN = Path(sys.executable).parent


def tool(path: Path, install: str) -> str:
    """The path of a tool the project installs; fails (never skips) when it is missing."""
    if not path.exists():
        pytest.fail(f"{path} is missing: run `{install}`")
    return str(path)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command with a bound on its time; output captured as text."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kwargs)


@dataclass
class Custom:
    app: app_module.App
    server: Server
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def custom_server(
    root: Path,
    *,
    servicer: type[PackageLoaderServicer] = PackageLoaderServicer,
    interceptors: tuple[aio.ServerInterceptor, ...] = (),  # type: ignore[type-arg]
    credentials: grpc.ServerCredentials | None = None,
    **overrides: Any,
) -> Iterator[Custom]:
    """The production server (`app.create_server`: its interceptor, pools, options, health)
    with one part chosen: a servicer class that fails in a chosen way, interceptors in front (a
    stand-in for a gateway), or TLS credentials."""
    root.mkdir(parents=True, exist_ok=True)
    app = app_module.build(test_settings(root, **overrides))
    server, port = app_module.create_server(
        app,
        servicer=app_module.make_servicer(app, servicer),
        interceptors=interceptors,
        credentials=credentials,
    )
    server.start()
    app_module.set_serving(app, True)
    try:
        yield Custom(app, server, port)
    finally:
        server.stop(None).wait()
        app.close()


class FailsMidStream(PackageLoaderServicer):
    """Sends the package and its first chunk, then fails as an unexpected server error would."""

    def Load(self, request: pb.LoadRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        for n, response in enumerate(super()._load(request, context)):
            yield response
            if n == 1:
                raise RuntimeError("the disk went away mid-stream")


class StallsMidStream(PackageLoaderServicer):
    """Sends the package and its first chunk, then waits until the call ends (its deadline)."""

    def Load(self, request: pb.LoadRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        ended = threading.Event()
        context.add_callback(ended.set)
        for n, response in enumerate(super()._load(request, context)):
            yield response
            if n == 1:
                ended.wait(60)
                return


class DropsLastChunk(PackageLoaderServicer):
    """Ends the stream OK one chunk short: only the client's size check can notice."""

    def Load(self, request: pb.LoadRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        responses = list(super()._load(request, context))
        yield from responses[:-1]


class FlipsAByte(PackageLoaderServicer):
    """Sends every byte, one of them changed: only the client's hash check can notice."""

    def Load(self, request: pb.LoadRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        for n, response in enumerate(super()._load(request, context)):
            if n == 1:
                data = bytearray(pb.LoadResponse.FromString(response).chunk)
                data[100] ^= 0xFF
                response = pb.LoadResponse(chunk=bytes(data))
            yield response


def raising(error: errors.PkgloaderError) -> type[PackageLoaderServicer]:
    """A servicer whose every RPC raises `error` (mapped by the real interceptor)."""

    class Raising(PackageLoaderServicer):
        def Load(self, request: Any, context: Any) -> Iterator[Any]:
            raise error
            yield  # a generator, as the real Load

        def Scan(self, request: Any, context: Any) -> Iterator[Any]:
            raise error
            yield

    return Raising


class RequireToken(aio.ServerInterceptor):  # type: ignore[type-arg]
    """What a gateway in front of the service does: no `authorization: Bearer <token>`, no call.
    Records the authorization header of every call."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.seen: list[str | None] = []

    async def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        metadata = dict(details.invocation_metadata or ())
        self.seen.append(metadata.get("authorization"))
        handler = await continuation(details)
        if metadata.get("authorization") == f"Bearer {self.token}" or handler is None:
            return handler

        async def deny(request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                deny, handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            deny, handler.request_deserializer, handler.response_serializer
        )


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_credentials(self, *, require_client_cert: bool) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.server_key.read_bytes(), self.server_cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=require_client_cert,
        )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1, a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key_file(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("pkgloader test CA"))
        .issuer_name(name("pkgloader test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf(
        "127.0.0.1",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client, client_key = leaf("pkgloader test client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "client.pem").write_bytes(client.public_bytes(pem))
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=key_file(server_key, folder / "server.key"),
        client_cert=folder / "client.pem",
        client_key=key_file(client_key, folder / "client.key"),
    )


def node() -> str:
    """The machine's node (CI's machines have Node.js 20); fails when it is missing."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not on PATH: install Node.js 20 or newer")
    return found
