"""The deployment files: kustomize renders them, the Kubernetes schemas accept them (strict), the
server accepts their settings, and hadolint accepts the Dockerfile. `make image-test` runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import latest_version
from pkgloader.settings import Settings, parse_size

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # kubectl, hadolint and kubernetes-validate come from `dev`
BASE = REPO / "k8s"
SINGLE = REPO / "k8s" / "overlays" / "single-replica"
PODMAN = REPO / "deploy" / "podman"
KUSTOMIZATIONS = {"base": BASE, "single-replica": SINGLE, "podman": PODMAN}
# The oldest Kubernetes the manifests promise to work on, and the newest the schemas know.
VERSIONS = ("1.30.0", f"{latest_version()}.0")
UID = 10001
GRPC_PORT = 50051


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


@cache
def rendered(name: str) -> str:
    result = run(BIN / "kubectl", "kustomize", KUSTOMIZATIONS[name])
    assert result.returncode == 0, result.stderr
    return result.stdout


def resources(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = yaml.safe_load_all(rendered(name))
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if d}


def deployment(name: str = "base") -> dict[str, Any]:
    return resources(name)["Deployment", "pkgloader"]


def pod_spec(name: str = "base") -> dict[str, Any]:
    spec: dict[str, Any] = deployment(name)["spec"]["template"]["spec"]
    return spec


def container(name: str = "base") -> dict[str, Any]:
    (only,) = pod_spec(name)["containers"]
    return only


def config(name: str = "base") -> dict[str, str]:
    return resources(name)["ConfigMap", "pkgloader"]["data"]


def validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return run(BIN / "kubernetes-validate", "--strict", "--quiet", "-k", version, path)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_rendered_manifests_pass_strict_schema_validation(
    name: str, version: str, tmp_path: Path
) -> None:
    """Every rendered resource matches the Kubernetes schema with no unknown field."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(rendered(name))
    result = validate(path, version)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_a_misspelled_field(tmp_path: Path) -> None:
    """The schema check has teeth: one misspelled Deployment field fails it."""
    path = tmp_path / "typo.yaml"
    path.write_text(rendered("base").replace("  revisionHistoryLimit:", "  revisionHistoryLimt:"))
    result = validate(path, VERSIONS[0])
    assert result.returncode != 0
    assert "revisionHistoryLimt" in result.stdout + result.stderr


def test_base_runs_three_replicas_on_one_read_write_many_volume() -> None:
    """The base: 3 replicas, all mounting the one ReadWriteMany claim at the cache folder."""
    found = resources("base")
    assert deployment()["spec"]["replicas"] == 3
    assert found["PersistentVolumeClaim", "pkgloader-cache"]["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    (cache_volume,) = [v for v in pod_spec()["volumes"] if "persistentVolumeClaim" in v]
    assert cache_volume["persistentVolumeClaim"]["claimName"] == "pkgloader-cache"
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    cache_dir = config()["PKGLOADER_CACHE_DIR"]
    assert mounts[cache_volume["name"]] == cache_dir == "/var/cache/pkgloader"
    assert all("namespace" not in r["metadata"] for r in found.values())


def test_single_replica_overlay_is_one_pod_on_a_read_write_once_volume() -> None:
    """The overlay: 1 replica, a ReadWriteOnce claim, and Recreate (an RWO volume can't surge)."""
    found = resources("single-replica")
    assert deployment("single-replica")["spec"]["replicas"] == 1
    assert deployment("single-replica")["spec"]["strategy"] == {"type": "Recreate"}
    claim = found["PersistentVolumeClaim", "pkgloader-cache"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_services_cover_grpc_with_a_cluster_ip_and_a_headless_one() -> None:
    """Two Services select the pods' gRPC port; the headless one has no cluster IP."""
    found = resources("base")
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    normal, headless = found["Service", "pkgloader"], found["Service", "pkgloader-headless"]
    assert headless["spec"]["clusterIP"] == "None"
    assert normal["spec"].get("clusterIP") != "None"
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    for service in (normal, headless):
        assert service["spec"]["selector"].items() <= labels.items()
        (port,) = service["spec"]["ports"]
        assert port["port"] == ports[port["targetPort"]] == GRPC_PORT


def test_probes_are_native_grpc_on_the_health_service() -> None:
    """Startup, readiness and liveness ask grpc.health.v1 on the gRPC port (readiness: the API)."""
    c = container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == GRPC_PORT, probe
    assert c["readinessProbe"]["grpc"]["service"] == "pkgloader.v1.PackageLoaderService"
    assert config()["PKGLOADER_LISTEN"] == f"0.0.0.0:{GRPC_PORT}"


def test_pod_is_locked_down_and_writes_only_its_volumes() -> None:
    """Non-root fixed UID, read-only root with /tmp on an emptyDir, no capabilities, seccomp."""
    pod, c = pod_spec(), container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == c["securityContext"]["runAsUser"] == UID
    assert pod["securityContext"]["fsGroup"] == UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert pod["automountServiceAccountToken"] is False


def test_dockerfile_user_is_the_manifests_uid() -> None:
    """The image's fixed UID is the one the manifests run as and give the volume to."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG UID={UID}$", dockerfile, re.M)
    assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", dockerfile, re.M)
    assert 'ENTRYPOINT ["/opt/venv/bin/pkgloader", "serve"]' in dockerfile


def test_memory_request_and_limit_cover_the_memory_cache_budget() -> None:
    """The container's memory request exceeds the memory cache budget, and the limit the request."""
    budget = parse_size(config()["PKGLOADER_MEMORY_CACHE_BYTES"])
    resources_ = container()["resources"]
    request = parse_size(resources_["requests"]["memory"])
    limit = parse_size(resources_["limits"]["memory"])
    assert budget + 128 * 2**20 <= request <= limit


def test_shutdown_fits_in_the_termination_grace_period() -> None:
    """preStop pause plus the server's grace period end before Kubernetes sends SIGKILL."""
    pause = int(container()["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = float(config()["PKGLOADER_GRACE_PERIOD"])
    assert pause + grace < pod_spec()["terminationGracePeriodSeconds"]


def test_metrics_port_is_announced_to_prometheus() -> None:
    """prometheus.io annotations name the metrics port the server is told to listen on."""
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"] == 9090
    assert config()["PKGLOADER_METRICS_LISTEN"] == "0.0.0.0:9090"


def test_server_accepts_the_configmap_and_the_example_secret(tmp_path: Path) -> None:
    """The ConfigMap's settings and the Secret's token files load into the server's Settings."""
    env = dict(config())
    env["PKGLOADER_CACHE_DIR"] = str(tmp_path / "cache")
    secret = resources("base")["Secret", "pkgloader-tokens"]
    mount = next(m for m in container()["volumeMounts"] if m["name"] == "secrets")["mountPath"]
    for key, text in secret["stringData"].items():
        assert "replace-me" in text, "the Secret must hold example tokens only"
        json.loads(text)
        (tmp_path / key).write_text(text)
    for name, value in env.items():
        if value.startswith(mount + "/"):
            env[name] = str(tmp_path / value.removeprefix(mount + "/"))
    settings = Settings.load(env=env)
    assert settings.listen == env["PKGLOADER_LISTEN"]
    assert settings.tokens  # the upstream tokens file was read


def test_auth_is_on_in_the_manifests() -> None:
    """Client authentication is configured: a tokens file from the Secret's volume."""
    path = config()["PKGLOADER_AUTH_TOKENS_FILE"]
    mount = next(m for m in container()["volumeMounts"] if m["name"] == "secrets")
    assert path.startswith(mount["mountPath"] + "/")
    assert mount["readOnly"] is True
    secret = resources("base")["Secret", "pkgloader-tokens"]
    assert path.rsplit("/", 1)[1] in secret["stringData"]


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (lambda r: r["PodDisruptionBudget", "pkgloader"]["spec"]["maxUnavailable"], 1),
        (
            lambda r: r["Deployment", "pkgloader"]["spec"]["template"]["spec"][
                "topologySpreadConstraints"
            ][0]["topologyKey"],
            "kubernetes.io/hostname",
        ),
    ],
    ids=["pdb-one-at-a-time", "spread-across-nodes"],
)
def test_disruption_budget_and_spread(check: Callable[[Any], Any], expected: Any) -> None:
    """Drains take one replica at a time; replicas spread across nodes."""
    assert check(resources("base")) == expected


def test_hadolint_passes_on_the_dockerfile() -> None:
    """hadolint finds nothing in the Dockerfile."""
    result = run(BIN / "hadolint", REPO / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_says_why() -> None:
    """An inline `hadolint ignore=` is only allowed with a reason comment right above it."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#"), f"line {number + 1}: no reason above"
            assert "hadolint" not in above, f"line {number + 1}: no reason above"


def test_docker_context_holds_only_what_the_image_needs() -> None:
    """.dockerignore is an allow-list: everything out, then the sources and the health check."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"
    wanted = {"!service/", "!client/", "!pyproject.toml", "!requirements/runtime.lock"}
    assert wanted | {"!deploy/healthcheck.py"} <= set(rules)


def test_image_takes_third_party_packages_only_from_the_hashed_lock() -> None:
    """The builder fetches dependencies with --require-hashes from runtime.lock, ours --no-deps."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/runtime.lock" in dockerfile
    assert "--no-deps ./client ." in dockerfile
    assert "--no-index" in dockerfile  # the final stage installs the builder's wheels only
