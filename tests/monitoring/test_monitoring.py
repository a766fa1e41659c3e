"""The dashboard and the alerts are proven against real parts: promtool checks and unit-tests the
rules, and a real Prometheus scrapes a running pkgloader until every dashboard query has data."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from pkgloader.hashes import WebcHash
from pytest_httpserver import HTTPServer

from tests.conftest import COWSAY, DASH, HELLO, STATIC, Running

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "k8s" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yml")
DASHBOARD = MONITORING / "dashboard.json"
BIN = Path(sys.executable).parent
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
# Under CI a missing tool is a failure, not a skip: `make test` installs Debian's prometheus.
_need = pytest.mark.skipif(
    not (PROMTOOL and PROMETHEUS) and not os.environ.get("CI"),
    reason="Debian's prometheus package (promtool, prometheus) is not installed",
)


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, cwd=cwd
    )


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    return rules


def _panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def _concrete(expr: str) -> str:
    """A dashboard query as Grafana would send it: variables replaced by real values."""
    return expr.replace("$__rate_interval", "15s").replace('job=~"$job"', 'job=~".+"')


@_need
def test_promtool_accepts_the_rules_file() -> None:
    """`promtool check rules` accepts alerts.yml: syntax, PromQL and templates."""
    result = _run(PROMTOOL or "promtool", "check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


@_need
def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules`: every alert fires where it should and stays silent elsewhere."""
    result = _run(PROMTOOL or "promtool", "test", "rules", UNIT_TESTS, cwd=UNIT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    """Each rule of alerts.yml is tested both ways: firing at least once, silent at least once."""
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in _rules()}
    assert names <= fired, f"never shown firing: {sorted(names - fired)}"
    assert names <= silent, f"never shown silent: {sorted(names - silent)}"


def test_the_issue_asks_for_these_alerts() -> None:
    """The alerts cover errors, mismatches, cache limit, volume, downloads, leases, latency."""
    assert {rule["alert"] for rule in _rules()} == {
        "PkgloaderHighErrorRatio",
        "PkgloaderHashMismatch",
        "PkgloaderDiskCacheNearLimit",
        "PkgloaderCacheVolumeNearlyFull",
        "PkgloaderDownloadFailuresRising",
        "PkgloaderLeaseWaitsPilingUp",
        "PkgloaderLoadLatencyHigh",
    }


def test_every_threshold_has_a_comment_saying_why() -> None:
    """In alerts.yml each rule is preceded by a comment block (its threshold's reason)."""
    lines = ALERTS.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- alert:"):
            assert lines[i - 1].strip().startswith("#"), f"no comment above {line.strip()}"


def test_plain_rules_file_is_a_plain_prometheus_file() -> None:
    """alerts.yml loads into any Prometheus: top-level `groups:` and no Kubernetes `kind:`."""
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}


def test_prometheusrule_manifest_is_generated_from_the_rules_file() -> None:
    """The PrometheusRule's groups are alerts.yml's, byte for byte as the generator writes them."""
    result = _run(sys.executable, REPO / "scripts" / "gen_prometheusrule.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert manifest["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_dashboard_has_a_panel_for_each_question() -> None:
    """Panels cover rate and latency by tier, hit ratio, downloads, failures by reason,
    mismatches, cache bytes/entries against limits, in-flight downloads, leases, the process."""
    queries = " ".join(expr for _, expr in _panel_queries())
    for metric in (
        "pkgloader_loads_total",
        "pkgloader_load_duration_seconds_bucket",
        "pkgloader_downloads_total",
        "pkgloader_load_failures_total",
        "pkgloader_hash_mismatches_total",
        "pkgloader_cache_bytes",
        "pkgloader_cache_max_bytes",
        "pkgloader_cache_entries",
        "pkgloader_cache_volume_free_bytes",
        "pkgloader_memory_cache_bytes",
        "pkgloader_memory_cache_budget_bytes",
        "pkgloader_inflight_downloads",
        "pkgloader_lease_waiters",
        "process_resident_memory_bytes",
        "pkgloader_process_threads",
        "process_open_fds",
    ):
        assert metric in queries, metric


def test_monitoring_kustomization_renders_and_its_core_kinds_validate(tmp_path: Path) -> None:
    """k8s/monitoring renders; the dashboard ConfigMap carries the sidecar label and the JSON;
    the kinds Kubernetes itself defines pass strict schema validation."""
    result = _run(BIN / "kubectl", "kustomize", MONITORING)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "Service", "ServiceMonitor", "PrometheusRule"}
    config_map = kinds["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["pkgloader.json"]) == json.loads(DASHBOARD.read_text())
    monitor = kinds["ServiceMonitor"]
    service = kinds["Service"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    # kubernetes-validate knows no CRD schemas (ServiceMonitor, PrometheusRule are the Prometheus
    # Operator's): those two kinds are checked above and by promtool, the rest strictly here.
    core = tmp_path / "core.yaml"
    core.write_text(
        yaml.safe_dump_all(d for d in docs if d["kind"] not in {"ServiceMonitor", "PrometheusRule"})
    )
    validated = _run(BIN / "kubernetes-validate", "--strict", "--quiet", "-k", "1.30.0", core)
    assert validated.returncode == 0, validated.stdout + validated.stderr


# -- a real Prometheus against a running pkgloader ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus(tmp_path: Path, server: Running) -> Iterator[tuple[str, Running]]:
    """A real Prometheus scraping `server`'s metrics port every second, with alerts.yml loaded."""
    assert PROMETHEUS, "prometheus is not installed"
    metrics_port = server.app.metrics.serve("127.0.0.1:0", status=server.app.status)
    config = tmp_path / "prometheus.yml"
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["alerts.yml"],
                "scrape_configs": [
                    {
                        "job_name": "pkgloader",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                    }
                ],
            }
        )
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # readiness: its own endpoint, polled
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)  # a poll interval, not a synchronisation
        yield url, server
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def _traffic(
    server: Running, upstream: HTTPServer, stop: threading.Event, unexpected: list[str]
) -> None:
    """Loads of every kind the panels count until `stop`: a download, then memory and disk hits,
    a 404 and a hash mismatch (failures by reason). What does not go as planned is recorded."""
    upstream.expect_request("/dash").respond_with_data(DASH.data)
    upstream.expect_request("/gone").respond_with_data("", status=404)
    failing = ((upstream.url_for("/gone"), "cd" * 32), (HELLO.url, "ab" * 32))
    try:
        while not stop.is_set():
            server.load(upstream.url_for("/dash"), DASH.sha256)  # downloaded once, then memory
            for fixture in (HELLO, COWSAY, STATIC):
                server.load(fixture.url, fixture.sha256)
            # Out of memory, so the next HELLO comes from disk.
            server.app.maintenance.evict([WebcHash(HELLO.sha256)], delete=False)
            for url, sha in failing:
                try:
                    server.load(url, sha)
                except grpc.RpcError:
                    pass
                else:
                    unexpected.append(f"{url} with {sha} succeeded")
            stop.wait(0.2)
    except Exception as exc:  # reported by the test, not lost in a thread
        unexpected.append(repr(exc))


@_need
def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    prometheus: tuple[str, Running], httpserver: HTTPServer
) -> None:
    """Prometheus scrapes a pkgloader serving Loads; each panel's query then has a result, so
    no panel queries a metric the service does not export."""
    url, server = prometheus
    stop = threading.Event()
    unexpected: list[str] = []
    worker = threading.Thread(
        target=_traffic, args=(server, httpserver, stop, unexpected), daemon=True
    )
    worker.start()
    pending = dict.fromkeys(_concrete(expr) for _, expr in _panel_queries())
    titles = {_concrete(expr): title for title, expr in _panel_queries()}
    deadline = time.monotonic() + 120
    try:
        while pending and not unexpected and time.monotonic() < deadline:
            for query in list(pending):
                answer = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10)
                body = answer.json()
                assert body["status"] == "success", (query, body)
                if body["data"]["result"]:
                    del pending[query]
            if pending:
                stop.wait(1.0)  # poll Prometheus again after its next scrape
    finally:
        stop.set()
        worker.join(60)
    assert not unexpected, unexpected
    assert not pending, "no data for: " + "; ".join(f"{titles[q]}: {q}" for q in pending)
    rules = httpx.get(f"{url}/api/v1/rules", timeout=10).json()
    loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert loaded == {rule["alert"] for rule in _rules()}
    # The names the dashboard uses are sample names the service itself exports.
    text = httpx.get(_metrics_url(server), timeout=10).text
    exported = set(re.findall(r"^(\w+)[{ ]", text, re.M))
    used = set(re.findall(r"\b((?:pkgloader|process)_\w+)", " ".join(titles)))
    assert used <= exported, sorted(used - exported)


def _metrics_url(server: Running) -> str:
    assert server.app.metrics.port is not None
    return f"http://127.0.0.1:{server.app.metrics.port}/metrics"
