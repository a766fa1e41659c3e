"""The access log of a real `pkgloader serve`: JSON lines written off the RPC threads by
logging's QueueHandler/QueueListener, and every line flushed when the process stops."""

from __future__ import annotations

import signal
from collections.abc import Callable

from tests.conftest import DASH, HELLO
from tests.reliability.conftest import Served, load


def test_every_access_line_is_written_by_the_time_sigterm_ends_the_process(
    served: Callable[..., Served],
) -> None:
    """Loads, then SIGTERM: each call has its JSON access line (method, status, duration,
    request id) once the process has exited, and no line carries a file or line number."""
    server = served()
    for fixture in (HELLO, DASH, HELLO):
        load(server.stub, fixture.url, fixture.sha256)
    server.kill(signal.SIGTERM)
    assert server.process.returncode == 0
    lines = server.log_lines()
    access = [e for e in lines if e.get("logger") == "pkgloader.access"]
    loads = [e for e in access if e.get("method") == "/pkgloader.v1.PackageLoaderService/Load"]
    assert [e["status"] for e in loads] == ["OK", "OK", "OK"]
    assert all(e["request_id"] and e["duration_ms"] >= 0 for e in loads)  # type: ignore[operator]
    assert not any({"filename", "lineno", "pathname"} & e.keys() for e in lines)
