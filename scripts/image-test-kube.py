"""Turn rendered pkgloader manifests into what `podman kube play` (4.3) can run on one machine.

    kubectl kustomize deploy/podman \
        | image-test-kube.py --port 15061 --fixtures DIR --secrets DIR > play.yaml

Replica i becomes Deployment `pkgloader-i` (one replica) with gRPC on 127.0.0.1:PORT+i and
metrics on 127.0.0.1:PORT+100+i; the replicas' gRPC addresses are printed on stderr, one a line.
deploy/podman/kustomization.yaml lists every change and why.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

PLAYABLE = {"ConfigMap", "PersistentVolumeClaim", "Deployment"}


def write_secret(secret: dict[str, Any], folder: Path) -> None:
    """The files a Secret volume would hold, written to `folder` (readable by the pod's user)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    for key, text in secret.get("stringData", {}).items():
        path = folder / key
        path.write_text(text)
        path.chmod(0o444)


def replica(
    deployment: dict[str, Any], index: int, port: int, fixtures: str, secrets: Path
) -> dict[str, Any]:
    d = copy.deepcopy(deployment)
    name = f"{deployment['metadata']['name']}-{index}"
    d["metadata"]["name"] = name
    d["spec"]["replicas"] = 1
    pod = d["spec"]["template"]["spec"]
    renamed = {}
    for volume in pod["volumes"]:
        if "secret" in volume:
            source = volume.pop("secret")
            folder = secrets / source["secretName"]
            volume["hostPath"] = {"path": str(folder), "type": "Directory"}
        if "emptyDir" in volume:
            renamed[volume["name"]] = volume["name"] = f"{name}-{volume['name']}"
    pod["volumes"].append({"name": "fixtures", "hostPath": {"path": fixtures, "type": "Directory"}})
    for container in pod["containers"]:
        for p in container.get("ports", []):
            p["hostIP"] = "127.0.0.1"
            p["hostPort"] = port + index if p["name"] == "grpc" else port + 100 + index
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
        container.setdefault("volumeMounts", []).append(
            {"name": "fixtures", "mountPath": "/fixtures", "readOnly": True}
        )
        container.setdefault("env", []).append(
            {"name": "PKGLOADER_FILE_ROOTS", "value": "/fixtures"}
        )
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="host port of replica 0's gRPC")
    parser.add_argument("--fixtures", required=True, help="absolute folder of fixture packages")
    parser.add_argument("--secrets", type=Path, required=True, help="folder for Secrets' files")
    args = parser.parse_args(argv)
    out = []
    for doc in yaml.safe_load_all(sys.stdin):
        if not doc:
            continue
        if doc["kind"] == "Secret":
            write_secret(doc, args.secrets / doc["metadata"]["name"])
        if doc["kind"] not in PLAYABLE:
            continue
        if doc["kind"] != "Deployment":
            out.append(doc)
            continue
        for i in range(doc["spec"].get("replicas", 1)):
            out.append(replica(doc, i, args.port, args.fixtures, args.secrets.absolute()))
            print(f"127.0.0.1:{args.port + i}", file=sys.stderr)
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
