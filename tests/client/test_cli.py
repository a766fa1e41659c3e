"""`pkgloader-client`, run as the installed console script against a real server: output, --json,
exit codes, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from tests.client.conftest import (
    VENV_BIN,
    FailsMidStream,
    FlipsAByte,
    RequireToken,
    StallsMidStream,
    custom_server,
    free_port,
    run,
)
from tests.conftest import DASH, HELLO, WABT, Running, sha256

CLI = str(VENV_BIN / "pkgloader-client")


def cli(*args: str, server: str | None = None):
    argv = [CLI, *args]
    if server is not None:
        argv += ["--server", server]
    return run(argv)


def test_version_names_the_distribution() -> None:
    """--version prints the program and the version of client/VERSION."""
    from tests.conftest import REPO

    result = cli("--version")
    assert result.returncode == 0
    assert (
        result.stdout.strip() == f"pkgloader-client {(REPO / 'client/VERSION').read_text().strip()}"
    )


def test_load_prints_the_manifest_as_tables(server: Running) -> None:
    """load shows the package facts, its commands and its atoms as readable tables."""
    result = cli("load", DASH.url, "--sha256", DASH.sha256, server=server.address)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert DASH.sha256 in out
    assert "webc-v1" in out
    assert "entrypoint" in out
    assert "commands" in out
    assert "atoms" in out
    assert "https://webc.org/runner/wasi" in out
    assert result.stderr == ""


def test_load_json_is_valid_and_complete(server: Running) -> None:
    """load --json prints one JSON document with the metadata and the manifest."""
    result = run(
        [CLI, "--server", server.address, "--json", "load", DASH.url, "--sha256", DASH.sha256]
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["sha256"] == DASH.sha256
    assert data["size"] == DASH.size
    assert data["source"] == "download"
    assert data["manifest"]["entrypoint"] == "dash"
    assert "dash" in [c["name"] for c in data["manifest"]["commands"]]
    assert "content" not in data


def test_load_to_a_file_with_a_progress_bar(server: Running, tmp_path: Path) -> None:
    """load -o streams the package into the file with a progress bar on stderr."""
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "wabt.webc"
    result = cli(
        "load",
        WABT.url,
        "--sha256",
        WABT.sha256,
        "-o",
        str(target),
        "--progress",
        server=server.address,
    )
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == WABT.data
    assert "wabt.webc" in result.stderr  # the bar's label
    assert "3.4/3.4 MB" in result.stderr  # its byte count, complete
    assert "saved to" in result.stdout
    assert sorted(p.name for p in target.parent.iterdir()) == ["wabt.webc"]


def test_load_to_a_file_json(server: Running, tmp_path: Path) -> None:
    """load -o --json prints the package and where it was saved, nothing else on stdout."""
    target = tmp_path / "hello.webc"
    result = cli(
        "load",
        HELLO.url,
        "--sha256",
        HELLO.sha256,
        "-o",
        str(target),
        "--json",
        server=server.address,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output"] == str(target)
    assert sha256(target.read_bytes()) == HELLO.sha256


def test_cache_commands_table_and_json(server: Running) -> None:
    """scan, retain, evict and validate print tables or JSON and exit 0."""
    server.load(HELLO.url, HELLO.sha256)
    server.load(DASH.url, DASH.sha256)
    table = cli("scan", server=server.address)
    assert table.returncode == 0
    assert "2 cache files" in table.stdout
    assert HELLO.sha256 in table.stdout
    scan = json.loads(cli("scan", "--json", server=server.address).stdout)
    assert sorted(e["sha256"] for e in scan) == sorted([HELLO.sha256, DASH.sha256])

    dry = cli("retain", "--keep", HELLO.sha256, "--dry-run", server=server.address)
    assert dry.returncode == 0
    assert f"would remove {DASH.sha256}" in dry.stdout
    retained = json.loads(
        cli(
            "retain", "--remove", DASH.sha256, "--unused-for", "7d", "--json", server=server.address
        ).stdout
    )
    assert [e["sha256"] for e in retained["removed"]] == [DASH.sha256]
    assert retained["kept_files"] == 1

    evicted = json.loads(
        cli("evict", HELLO.sha256, "--delete-files", "--json", server=server.address).stdout
    )
    assert evicted == {
        "evicted": [HELLO.sha256],
        "deleted": [HELLO.sha256],
        "evicted_count": 1,
        "deleted_count": 1,
        "truncated": False,
    }
    validate = cli("validate", "--deep", server=server.address)
    assert validate.returncode == 0
    assert "checked 0 files" in validate.stdout


def test_validate_exits_16_on_a_damaged_cache(server: Running) -> None:
    """validate reports a damaged file and exits 16; --prune removes it."""
    (server.app.settings.cache_dir / f"{DASH.sha256}.bin").write_bytes(HELLO.data)
    found = cli("validate", "--json", server=server.address)
    assert found.returncode == 16
    report = json.loads(found.stdout)
    assert report["mismatches"][0]["actual_sha256"] == HELLO.sha256
    assert cli("validate", "--prune", server=server.address).returncode == 16
    assert cli("validate", server=server.address).returncode == 0


def test_health_exit_codes(server: Running) -> None:
    """health prints SERVING and exits 0; an unknown service exits 15."""
    ok = cli("health", server=server.address)
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
    unknown = cli("health", "--service", "no.such.Service", "--json", server=server.address)
    assert unknown.returncode == 15
    assert json.loads(unknown.stdout) == {"status": "SERVICE_UNKNOWN"}


def test_a_malformed_sha256_is_a_usage_error() -> None:
    """A --sha256 that is not 64 hex digits exits 2 before any call."""
    result = cli("load", HELLO.url, "--sha256", "abc", server=f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "64 hex digits" in result.stderr


def _junk(server: Running) -> list[str]:
    data = b"not a package" * 20
    path = server.app.settings.file_roots[1] / "junk.webc"
    path.write_bytes(data)
    return ["load", path.as_uri(), "--sha256", sha256(data)]


CASES: list[tuple[str, Callable[[Running, HTTPServer], list[str]], int, str]] = [
    (
        "invalid-url",
        lambda s, h: ["load", "ftp://127.0.0.1/x", "--sha256", HELLO.sha256],
        3,
        "INVALID_URL",
    ),
    (
        "not-found",
        lambda s, h: ["load", HELLO.url + ".missing", "--sha256", HELLO.sha256],
        4,
        "UPSTREAM_NOT_FOUND",
    ),
    (
        "hash-mismatch",
        lambda s, h: ["load", HELLO.url, "--sha256", DASH.sha256],
        5,
        "HASH_MISMATCH",
    ),
    ("invalid-package", lambda s, h: _junk(s), 6, "INVALID_PACKAGE"),
    (
        "upstream",
        lambda s, h: ["load", h.url_for("/403"), "--sha256", HELLO.sha256],
        7,
        "UPSTREAM_REJECTED",
    ),
    (
        "permission",
        lambda s, h: ["load", "file:///etc/hostname", "--sha256", HELLO.sha256],
        8,
        "FILE_OUTSIDE_ROOTS",
    ),
]


@pytest.mark.parametrize(
    ("args", "code", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_errors_exit_with_their_code_and_one_line(
    server: Running, httpserver: HTTPServer, args, code: int, reason: str
) -> None:
    """Each error class exits with its documented code and prints one line naming the reason."""
    httpserver.expect_request("/403").respond_with_data("no", status=403)
    result = cli(*args(server, httpserver), server=server.address)
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"pkgloader-client: {reason}: ")


def test_resource_exhausted_and_no_disk_cache_codes(make_server) -> None:
    """PackageTooLarge exits 10, NoDiskCache exits 11."""
    small = make_server(max_package_bytes=1000)
    assert cli("load", DASH.url, "--sha256", DASH.sha256, server=small.address).returncode == 10
    memory_only = make_server(cache_dir=None)
    assert cli("scan", server=memory_only.address).returncode == 11


def test_unreachable_server_exits_12() -> None:
    """Nobody listening exits 12 with one line."""
    result = cli("health", "--timeout", "5", server=f"127.0.0.1:{free_port()}")
    assert result.returncode == 12
    assert result.stderr.startswith("pkgloader-client: UNAVAILABLE: ")
    assert len(result.stderr.splitlines()) == 1


def test_token_option_and_unauthenticated_exit_9(tmp_path: Path) -> None:
    """--token is sent as a bearer token; without it a gateway's refusal exits 9."""
    gate = RequireToken("s3cret")
    with custom_server(tmp_path, interceptors=(gate,)) as srv:
        # Connection options work after the command as well as before it.
        assert cli("scan", "--token", "s3cret", server=srv.address).returncode == 0
        assert cli("scan", server=srv.address).returncode == 9
    assert gate.seen == ["Bearer s3cret", None]


@pytest.mark.parametrize(
    ("servicer", "extra", "code"),
    [(StallsMidStream, ["--timeout", "1"], 13), (FlipsAByte, [], 14), (FailsMidStream, [], 1)],
    ids=["deadline", "transfer", "internal"],
)
def test_failed_downloads_exit_with_their_code_and_leave_no_file(
    tmp_path: Path, servicer, extra: list[str], code: int
) -> None:
    """A deadline (13), corrupted bytes (14) or a server failure (1) leave no file behind."""
    out = tmp_path / "out"
    out.mkdir()
    with custom_server(tmp_path / "srv", servicer=servicer) as srv:
        result = cli(
            "load",
            WABT.url,
            "--sha256",
            WABT.sha256,
            "-o",
            str(out / "w.webc"),
            *extra,
            server=srv.address,
        )
    assert result.returncode == code, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert list(out.iterdir()) == []


def test_tls_ca_option(tmp_path: Path, pki) -> None:
    """--tls-ca with a client certificate reaches a mutual-TLS server."""
    creds = pki.server_credentials(require_client_cert=True)
    with custom_server(tmp_path, credentials=creds) as srv:
        result = cli(
            "health",
            "--tls-ca",
            str(pki.ca),
            "--tls-cert",
            str(pki.client_cert),
            "--tls-key",
            str(pki.client_key),
            server=srv.address,
        )
    assert (result.returncode, result.stdout.strip()) == (0, "SERVING"), result.stderr
