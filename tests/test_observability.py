"""Metrics over HTTP, the one-line-per-RPC JSON access log, and the background size limit."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from pkgloader.logs import JsonFormatter
from pkgloader_client import pb
from pytest_httpserver import HTTPServer

from tests.conftest import COWSAY, DASH, HELLO, STATIC, WABT, Running, load_request


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


@contextlib.contextmanager
def _logging_to(handler: logging.Handler, name: str, level: int) -> Iterator[logging.Logger]:
    """A logger of its own that writes through `handler` only; the handler closed after."""
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_metrics_count_loads_bytes_downloads_and_latency(
    server: Running, httpserver: HTTPServer
) -> None:
    """After a download, a memory hit and a 404, /metrics shows each by source and outcome."""
    port = server.app.metrics.serve("127.0.0.1:0")
    httpserver.expect_request("/dash").respond_with_data(DASH.data)
    httpserver.expect_request("/gone").respond_with_data("", status=404)
    server.load(httpserver.url_for("/dash"), DASH.sha256, include_content=True)
    server.load(httpserver.url_for("/dash"), DASH.sha256, include_content=True)
    with pytest.raises(grpc.RpcError):
        server.load(httpserver.url_for("/gone"), HELLO.sha256)
    values = scrape(port)
    assert values['pkgloader_loads_total{outcome="OK",source="download"}'] == 1
    assert values['pkgloader_loads_total{outcome="OK",source="memory"}'] == 1
    assert values['pkgloader_loads_total{outcome="NOT_FOUND",source="none"}'] == 1
    assert values["pkgloader_served_bytes_total"] == 2 * DASH.size
    assert values["pkgloader_download_bytes_total"] == DASH.size
    assert values['pkgloader_downloads_total{outcome="ok"}'] == 1
    assert values['pkgloader_rpc_duration_seconds_count{code="OK",method="Load"}'] == 2
    # What the entry holds: its bytes, its parse and its memoized metadata (not the file size).
    charged = server.app.loader.memory.charge_of(DASH.sha256)
    assert charged is not None
    assert charged > DASH.size
    assert values["pkgloader_memory_cache_bytes"] == charged
    assert values["pkgloader_memory_cache_entries"] == 1
    assert values["pkgloader_cache_entries"] == 1
    assert values["pkgloader_cache_bytes"] == DASH.size
    assert values["pkgloader_inflight_downloads"] == 0


def test_metrics_count_hash_mismatches(server: Running) -> None:
    """A refused mismatch and a warned one both count."""
    port = server.app.metrics.serve("127.0.0.1:0")
    with pytest.raises(grpc.RpcError):
        server.load(HELLO.url, "ab" * 32)
    server.load(HELLO.url, "cd" * 32, hash_validation=pb.HASH_VALIDATION_WARN)
    assert scrape(port)["pkgloader_hash_mismatches_total"] == 2


def test_access_log_is_one_json_line_per_rpc_with_the_request_id(
    server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """Each RPC logs method, package id, hash, source, bytes, duration, status, request id."""
    caplog.set_level(logging.INFO, logger="pkgloader.access")
    responses = server.stub.Load(
        load_request(COWSAY.url, COWSAY.sha256, package_id="wiqar/cowsay@0.3.0"),
        metadata=(("x-request-id", "req-42"),),
    )
    list(responses)
    [record] = [r for r in caplog.records if r.name == "pkgloader.access"]
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "rpc"
    assert entry["method"] == "/pkgloader.v1.PackageLoaderService/Load"
    assert entry["status"] == "OK"
    assert entry["request_id"] == "req-42"
    assert entry["package_id"] == "wiqar/cowsay@0.3.0"
    assert entry["sha256"] == COWSAY.sha256
    assert entry["source"] == "download"
    assert entry["bytes"] == COWSAY.size
    assert entry["duration_ms"] >= 0


def test_tokens_never_reach_logs_errors_or_metrics(
    make_server, httpserver: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream token appears in the request header only: not in logs, errors or metrics."""
    caplog.set_level(logging.DEBUG)
    token = "upstream-secret-4f1c9d"
    authority = f"127.0.0.1:{httpserver.port}"
    server = make_server(tokens={authority: token}, plaintext_token_authorities=(authority,))
    port = server.app.metrics.serve("127.0.0.1:0")
    httpserver.expect_request("/ok").respond_with_data(HELLO.data)
    httpserver.expect_request("/nope").respond_with_data("", status=403)
    server.load(httpserver.url_for("/ok"), HELLO.sha256)
    with pytest.raises(grpc.RpcError) as caught:
        server.load(httpserver.url_for("/nope"), DASH.sha256)
    assert httpserver.log[0][0].headers["Authorization"] == f"Bearer {token}"
    assert token not in caught.value.details()
    assert token not in str(caught.value.trailing_metadata())
    assert token not in caplog.text
    assert token not in "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert token not in httpx.get(f"http://127.0.0.1:{port}/metrics").text


def _age(server: Running, sha: str, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(server.app.settings.cache_dir / f"{sha}.bin", (stamp, stamp))


def test_size_limit_trims_least_recently_used_files_once_per_interval(server: Running) -> None:
    """Over the limit, the oldest files go until 90% of it; a second pass in the interval skips."""
    for i, fixture in enumerate((WABT, DASH, COWSAY, STATIC, HELLO)):  # WABT least recent
        server.load(fixture.url, fixture.sha256)
        _age(server, fixture.sha256, 1000 - i)
    maintenance = server.app.maintenance
    limit = DASH.size + COWSAY.size + STATIC.size + HELLO.size + 1000
    outcome = maintenance.enforce_size_limit(limit, interval=60, lease_ttl=30)
    assert outcome is not None
    assert {e.hash.hex for e in outcome.removed} == {WABT.sha256, DASH.sha256}
    assert outcome.kept_bytes <= limit * 9 // 10
    assert WABT.sha256 not in server.app.loader.memory
    assert maintenance.enforce_size_limit(1, interval=60, lease_ttl=30) is None  # not our turn


def test_size_limit_is_skipped_while_another_replica_holds_its_lease(server: Running) -> None:
    """Replicas coordinate: the one without the lease does nothing."""
    from pkgloader.cache.lease import try_acquire

    server.load(WABT.url, WABT.sha256)
    lease = try_acquire(server.app.settings.cache_dir / "__temp__" / "size-limit.lease", 30)
    assert lease is not None
    try:
        assert server.app.maintenance.enforce_size_limit(1, interval=60, lease_ttl=30) is None
    finally:
        lease.release()
    assert (server.app.settings.cache_dir / f"{WABT.sha256}.bin").exists()


def test_start_up_never_lists_the_cache(tmp_path, monkeypatch) -> None:
    """Building the app (metrics registration included) does no directory scan: start-up stays
    O(1) however many entries the cache holds."""
    from pkgloader import app as app_module
    from pkgloader.cache.disk import DiskCache

    from tests.conftest import test_settings

    scans: list[int] = []
    original = DiskCache.entries

    def counting(self):
        scans.append(1)
        return original(self)

    monkeypatch.setattr(DiskCache, "entries", counting)
    app = app_module.build(test_settings(tmp_path))
    try:
        server, _ = app_module.create_server(app)
        server.stop(None)
    finally:
        app.close()
    assert scans == []


def test_queued_log_handler_writes_every_line_in_order_and_drains_on_close(tmp_path) -> None:
    """Records logged from many threads all arrive as JSON lines, in per-thread order, once
    close() returns (it stops logging's QueueListener, which drains the queue first)."""
    import io
    import threading

    from pkgloader.logs import JsonFormatter, RecordQueueHandler

    stream = io.StringIO()
    handler = RecordQueueHandler(stream, JsonFormatter())
    with _logging_to(handler, "pkgloader.test-queued", logging.INFO) as logger:

        def burst(n: int) -> None:
            for i in range(500):
                logger.info("line", extra={"worker": n, "seq": i})

        threads = [threading.Thread(target=burst, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(entries) == 8 * 500
    for n in range(8):
        assert [e["seq"] for e in entries if e["worker"] == n] == list(range(500))
    handler.close()  # a second close (logging.shutdown after ours) is harmless


def test_queued_log_handler_applies_its_filters_and_level() -> None:
    """The handler's own filters and level still decide what is queued (its `handle` skips
    only the lock and `prepare`, which do nothing here)."""
    import io

    from pkgloader.logs import JsonFormatter, RecordQueueHandler

    stream = io.StringIO()
    handler = RecordQueueHandler(stream, JsonFormatter())
    handler.addFilter(lambda record: record.getMessage() != "dropped")
    handler.setLevel(logging.INFO)
    with _logging_to(handler, "pkgloader.test-filtered", logging.DEBUG) as logger:
        logger.info("kept")
        logger.info("dropped")
        logger.debug("below the handler's level")
        logger.warning("kept too")
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == [
        "kept",
        "kept too",
    ]


def test_log_lines_are_written_in_batches_off_the_logging_thread() -> None:
    """The calling thread only queues; the listener's thread writes, several lines per write()
    when they pile up, and never more than max_lines at once (only the last batch, at close(),
    is written by the thread that closes)."""
    import io
    import threading

    from pkgloader.logs import JsonFormatter, RecordQueueHandler

    class Recording(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[tuple[str, int]] = []
            self.first = threading.Event()
            self.go_on = threading.Event()

        def write(self, text: str) -> int:
            self.writes.append((threading.current_thread().name, text.count("\n")))
            self.first.set()
            self.go_on.wait(30)  # hold the writer so the next lines pile up in the queue
            return super().write(text)

    stream = Recording()
    handler = RecordQueueHandler(stream, JsonFormatter())
    handler.writer.max_lines = 100
    with _logging_to(handler, "pkgloader.test-batches", logging.INFO) as logger:
        try:
            logger.info("first")
            assert stream.first.wait(30)
            for i in range(250):
                logger.info("piled up", extra={"seq": i})
        finally:
            stream.go_on.set()  # never leave the writer held: close() waits for it
    assert all(name != threading.current_thread().name for name, _ in stream.writes[:-1])
    assert stream.writes[0][1] == 1
    assert sum(n for _, n in stream.writes) == 251
    assert max(n for _, n in stream.writes) == 100
    assert len(stream.writes) <= 1 + 3 + 1
