"""The pieces that hold the API together: the status table, settings, the server's life."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pkgloader import errors
from pkgloader.app import build, create_server
from pkgloader.policy import HashPolicy
from pkgloader.rpc.status import CODES, to_status
from pkgloader.settings import Settings, SettingsError
from pkgloader_client import SERVICE_NAME

from tests.conftest import REPO, Running, test_settings, wait_until


def test_every_domain_error_has_a_status_mapping() -> None:
    """A new error class without an entry in the status table fails here, not in production."""
    missing = [cls.__name__ for cls in errors.leaves() if cls not in CODES]
    assert missing == []


def test_every_error_reason_is_unique() -> None:
    """Clients switch on ErrorInfo.reason, so two classes must never share one."""
    reasons = [cls.reason for cls in errors.leaves()]
    assert len(reasons) == len(set(reasons))


def test_status_carries_error_info_with_reason_and_metadata() -> None:
    """to_status packs the domain error's reason and data as google.rpc.ErrorInfo."""
    from google.rpc import error_details_pb2, status_pb2

    status = to_status(errors.HashMismatch(expected="a" * 64, actual="b" * 64, source="u"))
    assert status.code == grpc.StatusCode.DATA_LOSS
    [(key, value)] = status.trailing_metadata
    decoded = status_pb2.Status.FromString(value)
    info = error_details_pb2.ErrorInfo()
    decoded.details[0].Unpack(info)
    assert (key, info.reason, info.metadata["actual_sha256"]) == (
        "grpc-status-details-bin",
        "HASH_MISMATCH",
        "b" * 64,
    )


def test_unexpected_exception_is_internal_without_internals(server: Running, monkeypatch) -> None:
    """A bug becomes INTERNAL with a generic message; the traceback stays in the log."""

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail /etc/shadow")

    monkeypatch.setattr(server.app.maintenance, "scan", broken)
    from pkgloader_client import pb

    with pytest.raises(grpc.RpcError) as caught:
        list(server.stub.Scan(pb.ScanRequest()))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details()


def test_settings_from_environment() -> None:
    """Every PKGLOADER_* variable is parsed with units; an empty cache dir means memory only."""
    settings = Settings.load(
        {
            "PKGLOADER_LISTEN": "127.0.0.1:6000",
            "PKGLOADER_CACHE_DIR": "",
            "PKGLOADER_MEMORY_CACHE_BYTES": "512Mi",
            "PKGLOADER_HASH_VALIDATION": "WARN",
            "PKGLOADER_FILE_ROOTS": "/srv/a:/srv/b",
            "PKGLOADER_MAX_PACKAGE_BYTES": "2G",
            "PKGLOADER_DOWNLOAD_TIMEOUT": "12.5",
        }
    )
    assert settings.listen == "127.0.0.1:6000"
    assert settings.cache_dir is None
    assert settings.memory_cache_bytes == 512 * 2**20
    assert settings.hash_validation is HashPolicy.WARN
    assert settings.file_roots == (Path("/srv/a"), Path("/srv/b"))
    assert settings.max_package_bytes == 2 * 10**9
    assert settings.download_timeout == 12.5


def test_unset_cache_dir_defaults_to_the_user_cache_folder(tmp_path: Path) -> None:
    """The embedded default keeps packages in a local folder, no other service needed."""
    settings = Settings.load({"XDG_CACHE_HOME": str(tmp_path)})
    assert settings.cache_dir == tmp_path / "pkgloader"


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("PKGLOADER_LISTEN", "nonsense", "host:port"),
        ("PKGLOADER_MEMORY_CACHE_BYTES", "lots", "byte count"),
        ("PKGLOADER_HASH_VALIDATION", "maybe", "none, warn or fail"),
        ("PKGLOADER_FILE_ROOTS", "relative/path", "absolute"),
        ("PKGLOADER_READ_TIMEOUT", "-1", "positive"),
        ("PKGLOADER_WORKERS", "0", "positive"),
        ("PKGLOADER_LOG_LEVEL", "LOUD", "unknown level"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str, text: str) -> None:
    """A bad value stops start-up with a message naming the variable and the problem."""
    with pytest.raises(SettingsError, match=name) as caught:
        Settings.load({name: value})
    assert text in str(caught.value)


def test_tokens_file_is_read_and_never_echoed(tmp_path: Path) -> None:
    """The upstream tokens file maps authorities to tokens; a bad file's error hides its content."""
    good = tmp_path / "tokens.json"
    good.write_text(json.dumps({"Registry.Example:8443": "t0k3n"}))
    assert Settings.load({"PKGLOADER_TOKENS_FILE": str(good)}).tokens == {
        "registry.example:8443": "t0k3n"
    }
    bad = tmp_path / "bad.json"
    bad.write_text('{"host": ["super-secret-value"]}')
    with pytest.raises(SettingsError) as caught:
        Settings.load({"PKGLOADER_TOKENS_FILE": str(bad)})
    assert "super-secret-value" not in str(caught.value)


def test_busy_port_is_an_error_not_a_shared_listener(tmp_path: Path) -> None:
    """grpc.so_reuseport is 0: a second server on the same port fails to start."""
    app = build(test_settings(tmp_path))
    server, port = create_server(app)
    try:
        other = build(test_settings(tmp_path))
        with pytest.raises(OSError, match="cannot listen"):
            create_server(other, f"127.0.0.1:{port}")
        other.close()
    finally:
        server.stop(None)
        app.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(tmp_path: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    environment = dict(
        os.environ,
        PKGLOADER_LISTEN=f"127.0.0.1:{port}",
        PKGLOADER_CACHE_DIR=str(tmp_path / "cache"),
        PKGLOADER_UPSTREAM_ALLOW="127.0.0.1",
        **env,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "pkgloader", "serve"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill `proc` if it still runs, reap it, and close its pipes (no descriptor left open)."""
    proc.kill()
    proc.communicate(timeout=30)


def _health(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def _wait_serving(port: int, proc: subprocess.Popen[bytes]) -> None:
    def serving() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            return _health(port) == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    assert wait_until(serving, 30), "server never became SERVING"


def test_serve_reports_health_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`pkgloader serve`: SERVING for "" and the service; SIGTERM exits 0 with a 'stopped' log."""
    port = _free_port()
    proc = _serve(tmp_path, port)
    try:
        _wait_serving(port, proc)
        assert _health(port, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        logs = [json.loads(line) for line in proc.stderr.read().decode().splitlines()]
        assert [entry["msg"] for entry in logs][-2:] == ["stopping", "stopped"], logs[-3:]
    finally:
        _stop(proc)


def test_serve_with_a_bad_setting_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    """A configuration error is one line on stderr naming the variable, and exit code 2."""
    proc = _serve(tmp_path, _free_port(), PKGLOADER_MEMORY_CACHE_BYTES="lots")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        "pkgloader: configuration error: PKGLOADER_MEMORY_CACHE_BYTES: expected a byte count "
        "such as 1048576, 512Mi or 2G, got 'lots'"
    ]


def test_server_killed_while_writing_leaves_no_visible_partial_file(tmp_path: Path) -> None:
    """SIGKILL mid-download: no <hash>.bin appears; the next start removes the orphan temp file."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.conftest import WABT

    started = threading.Event()
    done = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(WABT.size))
            self.end_headers()
            self.wfile.write(WABT.data[: WABT.size // 2])
            self.wfile.flush()
            started.set()
            done.wait(30)  # the rest never comes: the server is killed meanwhile

        def log_message(self, *args: object) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = _free_port()
    proc = _serve(tmp_path, port)
    cache = tmp_path / "cache"
    try:
        _wait_serving(port, proc)
        from pkgloader_client import PackageLoaderServiceStub

        from tests.conftest import load_request

        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        call = PackageLoaderServiceStub(channel).Load(
            load_request(f"http://127.0.0.1:{upstream.server_address[1]}/p", WABT.sha256)
        )
        assert started.wait(20)
        assert wait_until(  # the half body reaches the temp file
            lambda: any(p.stat().st_size for p in (cache / "__temp__").iterdir()), 10
        )
        proc.kill()
        proc.wait()
        call.cancel()
        channel.close()
        assert [p.name for p in cache.iterdir()] == ["__temp__"]
        assert len(list((cache / "__temp__").glob("*.part"))) == 1
        restarted = _serve(tmp_path, port)
        try:
            _wait_serving(port, restarted)
            assert list((cache / "__temp__").iterdir()) == []
        finally:
            restarted.terminate()
            restarted.wait(30)
            _stop(restarted)
    finally:
        done.set()
        _stop(proc)
        upstream.shutdown()
        upstream.server_close()
