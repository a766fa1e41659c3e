"""`/status` names the resolver's sources, in the order they are asked, and when each last
answered; nothing secret (the registry URL without its query string)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from pkgloader_client import pb

from tests.conftest import Running
from tests.resolve._registry import Registry


def _status(server: Running) -> dict:
    port = server.app.metrics.serve("127.0.0.1:0", status=server.app.status)
    return httpx.get(f"http://127.0.0.1:{port}/status", timeout=10).json()


def test_status_lists_the_sources_and_their_last_success(
    make_server: Callable[..., Running], registry: Registry, tmp_path: Path
) -> None:
    """Before any Resolve no source has answered; after one that the registry answered, the
    registry's last success is set and the later sources (never asked) still have none."""
    folder = tmp_path / "files" / "packages"
    folder.mkdir(parents=True)
    server = make_server(registry_url=registry.url + "?key=hidden-77", package_dirs=(folder,))
    before = _status(server)["sources"]
    assert [(s["kind"], s["last_success"]) for s in before] == [
        ("cache", None),
        ("registry", None),
        ("directory", None),
        ("url", None),
    ]
    assert before[1]["location"] == registry.url
    assert before[2]["location"] == str(folder)
    server.stub.Resolve(pb.ResolveRequest(specifier="sharrattj/dash@1"), timeout=30)
    after = {s["kind"]: s["last_success"] for s in _status(server)["sources"]}
    assert after["registry"] is not None
    assert after["directory"] is None
    assert after["url"] is None


def test_a_registry_that_is_down_keeps_its_older_success(
    make_server: Callable[..., Running], registry: Registry
) -> None:
    """A failing registry does not count as an answer: the page keeps its last good time."""
    server = make_server(registry_url=registry.url, registry_ttl=0)
    server.stub.Resolve(pb.ResolveRequest(specifier="sharrattj/dash@1"), timeout=30)
    good = {s["kind"]: s["last_success"] for s in _status(server)["sources"]}["registry"]
    registry.down_status = 503
    stale = server.stub.Resolve(pb.ResolveRequest(specifier="sharrattj/dash@1"), timeout=30)
    assert stale.warnings  # served from the registry answer kept before it went down
    later = {s["kind"]: s["last_success"] for s in _status(server)["sources"]}["registry"]
    assert later == good
