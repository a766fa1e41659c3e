"""The registry graph the Resolve tests share: a chain four deep with shadowed commands and an
archived version, a diamond, a cycle, two versions of one name, v2/v3 distributions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from tests.conftest import DASH, HELLO, STATIC, Running
from tests.resolve._registry import Registry, package, start_registry


@pytest.fixture
def registry(httpserver: HTTPServer, tmp_path: Path) -> Registry:
    reg = start_registry(httpserver, tmp_path / "registry")
    # A chain: the real dash fixture (v1) → coreutils (v1) → base (v3) → libc (v3).
    reg.publish("sharrattj/dash", [("1.0.18", DASH.data, None)])
    reg.publish(
        "sharrattj/coreutils",
        [
            (
                v,
                package(
                    "sharrattj/coreutils",
                    v,
                    use={"base": "wasmer/base@^0.3"},
                    commands=("ls", "dash"),
                ),
                None,
            )
            for v in ("1.0.16", "1.0.17", "2.0.0")
        ],
    )
    reg.publish(
        "wasmer/base",
        [
            (
                v,
                None,
                package(
                    "wasmer/base",
                    v,
                    use={"libc": "wasmer/libc@1"},
                    commands=("sh",),
                    v3=True,
                    fs=[{"from": None, "volume_name": "/etc", "mount_path": "/etc"}],
                ),
            )
            for v in ("0.3.0", "0.3.1", "0.3.2", "0.4.0")
        ],
        archived=("0.3.2",),
    )
    reg.publish(
        "wasmer/libc",
        [
            (
                "1.2.0",
                None,
                package("wasmer/libc", "1.2.0", v3=True, entrypoint="ldd", commands=("ldd",)),
            )
        ],
    )
    # A diamond: app → left, right → base (one node, two edges).
    reg.publish(
        "test/app",
        [
            (
                "1.0.0",
                None,
                package(
                    "test/app",
                    "1.0.0",
                    use={"left": "test/left@^1", "right": "test/right@1"},
                    commands=("app",),
                    v3=True,
                    fs=[
                        {
                            "from": "left",
                            "volume_name": "/data",
                            "mount_path": "/data",
                            "host_path": "/share",
                        }
                    ],
                ),
            )
        ],
    )
    reg.publish(
        "test/left",
        [("1.1.0", None, package("test/left", "1.1.0", use={"base": "test/base@^1.0"}, v3=True))],
    )
    reg.publish(
        "test/right",
        [
            (
                "1.0.0",
                None,
                package("test/right", "1.0.0", use={"core": "test/base@>=1.2, <2"}, v3=True),
            )
        ],
    )
    reg.publish(
        "test/base",
        [(v, None, package("test/base", v, v3=True)) for v in ("1.2.3", "1.3.0")],
    )
    # Two versions of one name: left takes base 1.3.0, the other alias base 1.2.3.
    reg.publish(
        "test/dup",
        [
            (
                "1.0.0",
                None,
                package(
                    "test/dup", "1.0.0", use={"a": "test/left@^1", "b": "test/base@~1.2.3"}, v3=True
                ),
            )
        ],
    )
    # A cycle: ping → pong → ping.
    reg.publish(
        "test/ping",
        [("1.0.0", None, package("test/ping", "1.0.0", use={"pong": "test/pong@^1"}, v3=True))],
    )
    reg.publish(
        "test/pong",
        [("1.0.0", None, package("test/pong", "1.0.0", use={"ping": "test/ping@^1"}, v3=True))],
    )
    # A dependency nobody has.
    reg.publish(
        "test/broken",
        [("1.0.0", None, package("test/broken", "1.0.0", use={"x": "test/nope@1"}, v3=True))],
    )
    # The v3 fixture, with a v2 distribution too (v3 is taken), and its dependency.
    reg.publish("wasmer-tests/volume-static-webserver", [("0.1.0", HELLO.data, STATIC.data)])
    reg.publish(
        "wasmer/static-web-server",
        [
            (v, None, package("wasmer/static-web-server", v, commands=("webserver",), v3=True))
            for v in ("1.0.0", "1.1.0")
        ],
        archived=("1.1.0",),
    )
    return reg


@pytest.fixture
def with_registry(
    make_server: Callable[..., Running], registry: Registry
) -> Callable[..., Running]:
    def start(**overrides: Any) -> Running:
        return make_server(registry_url=registry.url, **overrides)

    return start
