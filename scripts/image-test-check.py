"""The gRPC side of `make image-test`: ask a containerised pkgloader what a client would.

    image-test-check.py wait ADDRESS [--service NAME]    # until the health service says SERVING
    image-test-check.py load ADDRESS URL SHA256          # one Load; the streamed bytes must hash
    image-test-check.py scan ADDRESS SHA256              # the disk cache (shared) lists SHA256

Each command prints one line on success and exits 1 with the reason otherwise. `--token` sends
`authorization: Bearer TOKEN` (the manifests turn client authentication on).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pkgloader_client import PackageLoaderServiceStub, pb

# A container's server needs a few seconds to import and bind; a bound on attempts, not a
# deadline, so a slow machine waits longer instead of failing.
WAIT_ATTEMPTS = 120
WAIT_PAUSE = 0.5


def _metadata(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


def wait(channel: grpc.Channel, service: str) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    last = "no answer"
    for _ in range(WAIT_ATTEMPTS):
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        else:
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return f"health {service or '(overall)'}: SERVING"
        time.sleep(WAIT_PAUSE)
    raise SystemExit(f"health {service or '(overall)'} never SERVING; last: {last}")


def load(channel: grpc.Channel, url: str, sha: str, token: str) -> str:
    request = pb.LoadRequest(
        summary=pb.PackageSummary(dist=pb.DistributionInfo(webc_url=url, webc_sha256=sha)),
        include_content=True,
    )
    stub = PackageLoaderServiceStub(channel)
    digest, size, package = hashlib.sha256(), 0, None
    for response in stub.Load(request, timeout=120, metadata=_metadata(token)):
        if response.WhichOneof("item") == "package":
            package = response.package
        else:
            digest.update(response.chunk)
            size += len(response.chunk)
    if package is None:
        raise SystemExit("Load answered no package")
    if digest.hexdigest() != sha:
        raise SystemExit(f"Load streamed {size} bytes hashing to {digest.hexdigest()}, not {sha}")
    return f"load {url}: {size} bytes, sha256 ok"


def scan(channel: grpc.Channel, sha: str, token: str) -> str:
    stub = PackageLoaderServiceStub(channel)
    hashes = {
        entry.webc_sha256
        for response in stub.Scan(pb.ScanRequest(), timeout=60, metadata=_metadata(token))
        for entry in response.entries
    }
    if sha not in hashes:
        raise SystemExit(f"scan: {sha} not in the disk cache ({len(hashes)} entries)")
    return f"scan: {sha[:12]}… in the disk cache ({len(hashes)} entries)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--token", default="", help="client token for Load and Scan")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("wait")
    p.add_argument("address")
    p.add_argument("--service", default="")
    p = commands.add_parser("load")
    p.add_argument("address")
    p.add_argument("url")
    p.add_argument("sha256")
    p = commands.add_parser("scan")
    p.add_argument("address")
    p.add_argument("sha256")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.address) as channel:
        try:
            if args.command == "wait":
                line = wait(channel, args.service)
            elif args.command == "load":
                line = load(channel, args.url, args.sha256, args.token)
            else:
                line = scan(channel, args.sha256, args.token)
        except grpc.RpcError as exc:
            print(f"{args.command} {args.address}: {exc.code().name}: {exc.details()}")
            return 1
    print(f"{args.address} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
