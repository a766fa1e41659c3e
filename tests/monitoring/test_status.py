"""`GET /status` on the metrics port, and `pkgloader-client status` printing it."""

from __future__ import annotations

import json

import httpx
import pytest
from pkgloader import __version__

from tests.client.conftest import VENV_BIN, free_port, run
from tests.conftest import DASH, HELLO, Running

CLI = str(VENV_BIN / "pkgloader-client")


@pytest.fixture
def status_url(make_server) -> tuple[str, Running]:
    server = make_server(
        max_cache_bytes=10 * 1024 * 1024,
        tokens={"127.0.0.1:1": "upstream-secret-77aa"},
    )
    port = server.app.metrics.serve("127.0.0.1:0", status=server.app.status)
    return f"http://127.0.0.1:{port}/status", server


def _load(server: Running, url: str, sha: str) -> None:
    server.load(url, sha)


def test_status_reports_the_cache_the_memory_tier_and_the_hit_ratio(
    status_url: tuple[str, Running],
) -> None:
    """After a download and a memory hit: entries, bytes, limits, hit ratio 0.5, the version."""
    url, server = status_url
    _load(server, HELLO.url, HELLO.sha256)
    _load(server, HELLO.url, HELLO.sha256)
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    status = answer.json()
    assert status["version"] == __version__
    assert status["uptime_seconds"] >= 0
    assert status["cache_dir"] == str(server.app.settings.cache_dir)
    assert status["max_cache_bytes"] == 10 * 1024 * 1024
    assert status["cache_entries"] == 1
    assert status["cache_bytes"] == HELLO.size
    assert status["memory_cache_entries"] == 1
    assert status["memory_cache_bytes"] >= HELLO.size
    assert status["memory_cache_budget_bytes"] == server.app.settings.memory_cache_bytes
    assert status["loads_by_source"] == {"download": 1, "memory": 1}
    assert status["hit_ratio"] == 0.5
    assert status["inflight_downloads"] == 0
    assert status["leases_held"] == 0


def test_status_holds_nothing_secret(status_url: tuple[str, Running]) -> None:
    """The upstream token configured for the server does not appear."""
    url, server = status_url
    _load(server, HELLO.url, HELLO.sha256)
    assert "upstream-secret-77aa" not in httpx.get(url, timeout=10).text


def test_status_before_any_load_has_no_hit_ratio(status_url: tuple[str, Running]) -> None:
    """No Load yet: the ratio is null rather than a made-up 0 or 1."""
    url, _ = status_url
    assert httpx.get(url, timeout=10).json()["hit_ratio"] is None


def test_metrics_stay_on_the_same_port(status_url: tuple[str, Running]) -> None:
    """/metrics is still served beside /status."""
    url, _ = status_url
    text = httpx.get(url.replace("/status", "/metrics"), timeout=10).text
    assert "pkgloader_loads_total" in text or "pkgloader_loads" in text


def test_cli_status_prints_a_table(status_url: tuple[str, Running]) -> None:
    """`pkgloader-client status --url …` prints the page as rows of name and value."""
    url, server = status_url
    _load(server, DASH.url, DASH.sha256)
    result = run([CLI, "status", "--url", url])
    assert result.returncode == 0, result.stderr
    assert "version" in result.stdout
    assert __version__ in result.stdout
    assert "cache entries" in result.stdout
    assert "hit ratio" in result.stdout
    as_json = run([CLI, "status", "--url", url, "--json"])
    assert json.loads(as_json.stdout)["cache_entries"] == 1


def test_cli_status_unreachable_is_one_line_and_exit_12() -> None:
    """Nothing listening: one error line on stderr and the service-unavailable exit status."""
    result = run([CLI, "status", "--url", f"http://127.0.0.1:{free_port()}/status"])
    assert result.returncode == 12
    assert result.stderr.count("\n") == 1
