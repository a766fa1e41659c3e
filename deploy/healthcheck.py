#!/usr/bin/env python3
"""Container health check: exit 0 when pkgloader's gRPC health service reports SERVING.

Shipped in the image as `pkgloader-healthcheck` (Dockerfile HEALTHCHECK, podman, exec probes).
It asks the address the server listens on (PKGLOADER_LISTEN, a wildcard host becomes loopback)
for the overall status, or for the service named as the first argument.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Addresses the server may listen on that a client cannot dial: asked on loopback instead.
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 (compared, never bound)


def target(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    return f"{'127.0.0.1' if host in _WILDCARDS else host}:{port}"


def main(argv: list[str]) -> int:
    service = argv[1] if len(argv) > 1 else ""
    address = target(os.environ.get("PKGLOADER_LISTEN", "127.0.0.1:50051"))
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=4
            )
        except grpc.RpcError as exc:
            print(f"{address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address} {service or '(overall)'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
