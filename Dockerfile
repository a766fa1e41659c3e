# syntax=docker/dockerfile:1
# pkgloader: the gRPC package-loading service. Two stages: `builder` turns the source into wheels
# (both distributions and every dependency); the final stage installs only those wheels, offline.
#
#   docker build -t pkgloader .
#   docker build --build-arg BASE_IMAGE=localhost/debian-python:bookworm -t pkgloader .
#
# The base must have python3 (3.11+) with the venv module. A private package index or a proxy
# CA is passed as build secrets, never baked into a layer:
#   --secret id=pip.conf,src=/path/to/pip.conf --secret id=pip-ca,src=/path/to/ca.crt
# (the pip.conf then names `cert = /run/secrets/pip-ca`). Both are optional.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/sh", "-eu", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# .dockerignore lets in only what the wheels are built from.
COPY . .
# Third-party wheels only as pinned and hashed in requirements/runtime.lock (a changed package
# fails the build), each alone (--no-deps: the lock is complete, and pip resolving an extra again
# can pick a newer release and refuse the hashes), then our two distributions with --no-deps;
# the final stage's install from these wheels alone fails if one were missing. The pip.conf
# secret, when given, is used through PIP_CONFIG_FILE; the isolated environment pip creates to
# run setuptools inherits the variable, so it reaches the same index with the same CA.
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \
    python3 -m venv /opt/build; \
    /opt/build/bin/pip wheel --wheel-dir /wheels --no-deps \
        --require-hashes -r requirements/runtime.lock; \
    /opt/build/bin/pip wheel --wheel-dir /wheels --no-deps ./client . ; \
    ls /wheels

FROM ${BASE_IMAGE}
SHELL ["/bin/sh", "-eu", "-c"]
ARG UID=10001
LABEL org.opencontainers.image.title="pkgloader" \
      org.opencontainers.image.description="gRPC service that loads Wasmer packages through a shared cache" \
      org.opencontainers.image.licenses="MIT"

# --no-index: everything comes from the builder's wheels, so this stage needs no network and no
# secret. The wheels are bind-mounted, not copied, so they add nothing to the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links=/wheels /wheels/*.whl; \
    groupadd --system --gid "${UID}" pkgloader; \
    useradd --system --uid "${UID}" --gid pkgloader --no-create-home \
        --home-dir /var/cache/pkgloader --shell /usr/sbin/nologin pkgloader; \
    mkdir -p /var/cache/pkgloader; \
    chown "${UID}:${UID}" /var/cache/pkgloader

COPY deploy/healthcheck.py /opt/venv/bin/pkgloader-healthcheck

ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PKGLOADER_LISTEN=0.0.0.0:50051 \
    PKGLOADER_CACHE_DIR=/var/cache/pkgloader \
    MALLOC_TRIM_THRESHOLD_=67108864 \
    MALLOC_MMAP_THRESHOLD_=4194304
# Why the two MALLOC_ variables: responses stream in 1 MiB chunks. With glibc's defaults a freed
# 1 MiB buffer is handed back to the kernel (munmap, or a heap trim) and the next one faults its
# pages in again, which made 1 MiB gRPC streams 1.4-2.7x slower. Keeping up to 64 MiB of free
# heap (TRIM) and serving blocks below 4 MiB from the heap (MMAP) lets the buffers be reused.
# Setting them explicitly also stops glibc's dynamic threshold from drifting under load.

VOLUME ["/var/cache/pkgloader"]
EXPOSE 50051 9090
USER ${UID}:${UID}
WORKDIR /var/cache/pkgloader

# Asks the gRPC health service itself (grpc.health.v1, overall status) over loopback; the same
# command serves as an exec probe where native gRPC probes cannot be used.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["pkgloader-healthcheck"]

# Exec form: `pkgloader serve` is PID 1 and gets SIGTERM itself. It then reports NOT_SERVING and
# stops within PKGLOADER_GRACE_PERIOD; it starts no children, so no init is needed to reap any.
ENTRYPOINT ["/opt/venv/bin/pkgloader", "serve"]
