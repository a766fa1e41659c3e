"""Every request field of every RPC fuzzed through the real gRPC API of one module-wide server.

The properties, for every input: no INTERNAL or UNKNOWN, every error carries its ErrorInfo;
and, after all of them: a sentinel tree outside the roots is unchanged and the cache folder
holds only files named by their sha256.

The only hosts a fuzzed URL may name are 127.0.0.1 and [::1] on the port of a loopback
upstream this module starts; any other http(s) URL that would parse is dropped before it is
sent, so no input ever makes the server look a name up or leave the machine.
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pkgloader.errors import InvalidUrl
from pkgloader.fetch.urls import parse_url
from pkgloader_client import pb

from tests.conftest import DASH, FIXTURES, HELLO, STATIC, Running, running, test_settings
from tests.reliability.conftest import (
    SOAK,
    Conn,
    Upstream,
    assert_cache_sound,
    error_info,
    snapshot_tree,
)

EXAMPLES = 4000 if SOAK else 1000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
#: (RPC, status code) → how many requests ended so, for docs/reliability.md (printed with -s
#: when the module's server stops).
SENT: dict[tuple[str, str], int] = {}


def outcomes(name: str, before: dict[tuple[str, str], int]) -> dict[str, int]:
    """Status code → requests of RPC `name` since the `before` copy of SENT."""
    return {
        code: count - before.get((rpc, code), 0)
        for (rpc, code), count in SENT.items()
        if rpc == name and count > before.get((rpc, code), 0)
    }


def assert_both_paths(name: str, before: dict[tuple[str, str], int]) -> None:
    """The fuzzer reached the success path and at least one error path of `name`: a fuzz run
    whose inputs were all refused up front (or all accepted) would prove little."""
    seen = outcomes(name, before)
    assert seen.get("OK", 0) > 0, seen
    assert sum(n for code, n in seen.items() if code != "OK") > 0, seen


class World:
    """The module's server, its upstreams and the folders whose state is checked."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sentinel = tmp / "sentinel"
        (self.sentinel / "deep" / "er").mkdir(parents=True)
        (self.sentinel / "secret.webc").write_bytes(HELLO.data)
        (self.sentinel / "deep" / "er" / "dash.webc").write_bytes(DASH.data)
        (self.sentinel / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")

        def behave(c: Conn) -> None:
            if c.request.path == "/hello":
                c.respond(200, HELLO.data)
            else:
                c.respond(404, b"no")

        self.up4 = Upstream(behave)
        self.up6 = Upstream6(behave)
        self.settings = test_settings(tmp, read_timeout=2.0, download_timeout=5.0)
        files = self.settings.file_roots[1]
        (files / "hello.webc").write_bytes(HELLO.data)
        (files / "notes.txt").write_text("not a package")
        (files / "escape").symlink_to(self.sentinel)
        self._running = running(self.settings)
        self.server: Running = self._running.__enter__()
        self.server.load(HELLO.url, HELLO.sha256)
        self.server.load(STATIC.url, STATIC.sha256)
        self.before = snapshot_tree(self.sentinel)

    @property
    def cache(self) -> Path:
        assert self.settings.cache_dir is not None
        return self.settings.cache_dir

    @property
    def files(self) -> Path:
        return self.settings.file_roots[1]

    def close(self) -> None:
        self._running.__exit__(None, None, None)
        self.up4.close()
        self.up6.close()

    def safe(self, url: str) -> bool:
        """Would this URL only ever reach our loopback upstreams (or nothing at all)?"""
        try:
            parsed = parse_url(url)
        except InvalidUrl:
            return True  # refused before any I/O
        except Exception:  # the server would see this too; let it
            return True
        if parsed.scheme == "file":
            return True
        try:
            address = ipaddress.ip_address(parsed.host)
        except ValueError:
            return False  # a name: would mean a DNS lookup
        port = parsed.port
        return address.is_loopback and port in (self.up4.port, self.up6.port)


class Upstream6(Upstream):
    """The same misbehaving upstream, on [::1]."""

    def __init__(self, behave: Any) -> None:
        import socket

        original = socket.create_server
        try:
            socket.create_server = lambda addr, **kw: original(
                ("::1", 0), family=socket.AF_INET6, **kw
            )
            super().__init__(behave)
        finally:
            socket.create_server = original


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("fuzz"))
    try:
        yield w
    finally:
        w.close()
        for (name, code), count in sorted(SENT.items()):
            print(f"fuzzed {name:14} {code:20} {count}")
        print("fuzzed total", sum(SENT.values()))


@pytest.fixture(autouse=True)
def _nothing_escaped(world: World) -> Iterator[None]:
    yield
    assert snapshot_tree(world.sentinel) == world.before
    assert_cache_sound(world.cache)


def call(name: str, fn: Any, request: Any) -> Any:
    """Send one request; check the status; return the response or the error."""
    error: grpc.RpcError | None = None
    try:
        response = fn(request, timeout=30)
        if hasattr(response, "__iter__") and not hasattr(response, "ListFields"):
            response = list(response)
    except grpc.RpcError as err:
        error = err
    code = "OK" if error is None else error.code().name
    SENT[name, code] = SENT.get((name, code), 0) + 1
    if error is None:
        return response
    assert error.code() not in NEVER, (name, request, error.details())
    info = error_info(error)
    assert info.domain == "pkgloader.wasmer.io"
    assert info.reason
    return error


# -- strategies -----------------------------------------------------------------------------

HEX = "0123456789abcdef"
KNOWN = [HELLO.sha256, STATIC.sha256, DASH.sha256]

hashes = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(KNOWN).map(str.upper),
    st.text(HEX, min_size=64, max_size=64),
    st.text(HEX + "ABCDEF", min_size=0, max_size=130),
    st.text(string.printable, max_size=70),
    st.text(max_size=70),  # any unicode, surrogates excluded by protobuf's UTF-8 rule
    st.text("０１２３４５６７８９ａｂｃｄｅｆ٠١٢٣", min_size=64, max_size=64),
    st.just("a" * 100_000),
)

SEGMENTS = st.sampled_from(
    ["..", "%2e%2e", "%2E%2e", ".", "", "%2f", "..%2f", "%00", "%252e%252e", "escape", "deep",
     "hello.webc", "notes.txt", "secret.webc", "passwd", "zero", "a b", "%20", "~", "\\"]
)  # fmt: skip


@st.composite
def file_urls(draw: st.DrawFn, world: World) -> str:
    base = draw(
        st.sampled_from(
            [str(FIXTURES), str(world.files), str(world.sentinel), "/etc", "/dev", "/proc/self", ""]
        )
    )
    parts = draw(st.lists(st.one_of(SEGMENTS, st.text(max_size=8)), max_size=6))
    host = draw(st.sampled_from(["", "", "localhost", "127.0.0.1", "example.invalid"]))
    return f"file://{host}{base}/" + "/".join(parts)


@st.composite
def http_urls(draw: st.DrawFn, world: World) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "ftp", "javascript", "gopher", ""]))
    host = draw(
        st.sampled_from(
            [
                f"127.0.0.1:{world.up4.port}",
                f"[::1]:{world.up6.port}",
                f"user:pw@127.0.0.1:{world.up4.port}",
                f"user@127.0.0.1:{world.up4.port}",
                "[::1",
                "[zz]:80",
                "127.0.0.1:notaport",
                "",
            ]
        )
    )
    path = draw(st.one_of(st.just("/hello"), st.text(max_size=40).map(lambda t: "/" + t)))
    tail = draw(st.sampled_from(["", "?q=1", "#frag", "?" + "x" * 9000, " ", "\t", "\n"]))
    sep = draw(st.sampled_from(["://", ":", ":/", ":///"]))
    return f"{scheme}{sep}{host}{path}{tail}" if scheme else f"{host}{path}{tail}"


@st.composite
def good_http_urls(draw: st.DrawFn, world: World) -> str:
    host = draw(st.sampled_from([f"127.0.0.1:{world.up4.port}", f"[::1]:{world.up6.port}"]))
    path = draw(st.one_of(st.just("/hello"), st.text(max_size=40)))
    return f"http://{host}/{path.lstrip('/')}"


def urls(world: World) -> st.SearchStrategy[str]:
    return st.one_of(
        file_urls(world),
        file_urls(world),
        good_http_urls(world),
        http_urls(world),
        st.sampled_from([HELLO.url, STATIC.url, "", " ", "relative/path.webc", "javascript:x"]),
        st.text(max_size=60),
        st.text(max_size=20).map(lambda t: "x" * 9000 + t),
    ).filter(world.safe)


ENUMS = st.one_of(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1))
UINT64 = st.one_of(st.integers(0, 2**20), st.integers(0, 2**64 - 1))
BIG_LISTS = st.sampled_from(
    [
        [],
        KNOWN * 1000,
        ["f" * 64] * 5000,
        [f"{i:064x}" for i in range(5000)],
        ["nothex"] * 3000,
        [HELLO.sha256.upper(), "x"] * 1000,
    ]
)
hash_lists = st.one_of(st.lists(hashes, max_size=12), BIG_LISTS)


@st.composite
def durations(draw: st.DrawFn) -> duration_pb2.Duration | None:
    kind = draw(st.sampled_from(["none", "small", "any", "edge"]))
    if kind == "none":
        return None
    if kind == "small":
        return duration_pb2.Duration(seconds=draw(st.integers(-100, 10**6)))
    if kind == "edge":
        seconds = draw(st.sampled_from([315_576_000_000, -315_576_000_000, 2**63 - 1, -(2**63)]))
        return duration_pb2.Duration(seconds=seconds, nanos=draw(st.sampled_from([0, 999_999_999])))
    return duration_pb2.Duration(
        seconds=draw(st.integers(-(2**63), 2**63 - 1)),
        nanos=draw(st.integers(-(2**31), 2**31 - 1)),
    )


# -- the RPCs -------------------------------------------------------------------------------


@st.composite
def load_requests(draw: st.DrawFn, world: World) -> pb.LoadRequest:
    # Mostly valid hashes, so that the URL (checked after the hash) is fuzzed as much.
    sha = draw(st.one_of(st.sampled_from(KNOWN), st.text(HEX, min_size=64, max_size=64), hashes))
    dist = pb.DistributionInfo(webc_url=draw(urls(world)), webc_sha256=sha)
    if draw(st.booleans()):
        dist.webc_size = draw(UINT64)
    return pb.LoadRequest(
        summary=pb.PackageSummary(
            package_id=draw(st.one_of(st.text(max_size=40), st.just("p" * 20_000))), dist=dist
        ),
        hash_validation=draw(st.one_of(st.integers(0, 3), st.integers(0, 3), ENUMS)),
        include_content=draw(st.booleans()),
    )


def test_fuzzed_load_requests(world: World) -> None:
    """Load: any hash, URL, size, policy, id: a mapped error or a correct package, never more."""
    before = dict(SENT)

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        request = data.draw(load_requests(world))
        result = call("Load", world.server.stub.Load, request)
        if isinstance(result, list):
            package = result[0].package
            content = b"".join(r.chunk for r in result[1:])
            if request.include_content:
                assert len(content) == package.size
            if package.cache_path:  # claimed to be on disk: it really is, under its hash
                assert package.cache_path == f"{package.webc_sha256}.bin"

    run()
    assert_both_paths("Load", before)


def test_fuzzed_retain_requests(world: World) -> None:
    """Retain: any lists, durations, sizes: mapped errors only; only entries ever removed."""
    before = dict(SENT)

    @FUZZ
    @given(
        keep=hash_lists,
        remove=hash_lists,
        unused=durations(),
        max_total=st.one_of(st.none(), UINT64),
        dry_run=st.booleans(),
        reload=st.booleans(),
    )
    def run(keep, remove, unused, max_total, dry_run, reload) -> None:
        request = pb.RetainRequest(keep_sha256=keep, remove_sha256=remove, dry_run=dry_run)
        if unused is not None:
            request.unused_for.CopyFrom(unused)
        if max_total is not None:
            request.max_total_bytes = max_total
        result = call("Retain", world.server.stub.Retain, request)
        if not isinstance(result, grpc.RpcError):
            assert all(e.cache_path == f"{e.webc_sha256}.bin" for e in result.removed)
        if reload:  # put something back for the next example to work on
            world.server.load(HELLO.url, HELLO.sha256)

    run()
    assert_both_paths("Retain", before)


def test_fuzzed_evict_requests(world: World) -> None:
    """Evict: any hash lists and scope values: mapped errors only."""
    before = dict(SENT)

    @FUZZ
    @given(hashes=hash_lists, scope=ENUMS, reload=st.booleans())
    def run(hashes, scope, reload) -> None:
        call("Evict", world.server.stub.Evict, pb.EvictRequest(webc_sha256=hashes, scope=scope))
        if reload:
            world.server.load(STATIC.url, STATIC.sha256)

    run()
    assert_both_paths("Evict", before)


def test_fuzzed_scan_and_validate_requests(world: World) -> None:
    """Scan (any batch size) and ValidateCache (any mode, deep or not): mapped errors only."""
    (world.cache / ("AB" * 32 + ".bin")).write_bytes(b"liar")  # something to find and prune
    before = dict(SENT)

    @settings(FUZZ, max_examples=max(EXAMPLES // 4, 50))
    @given(
        batch=st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1)),
        mode=ENUMS,
        deep=st.booleans(),
    )
    def run(batch, mode, deep) -> None:
        scanned = call("Scan", world.server.stub.Scan, pb.ScanRequest(batch_size=batch))
        if isinstance(scanned, list):
            assert all(0 < len(r.entries) <= min(batch or 1000, 10_000) for r in scanned)
        call(
            "ValidateCache",
            world.server.stub.ValidateCache,
            pb.ValidateCacheRequest(mode=mode, deep=deep),
        )

    run()
    (world.cache / ("AB" * 32 + ".bin")).unlink(missing_ok=True)
    assert outcomes("Scan", before).get("OK", 0) > 0  # every batch size is valid
    assert_both_paths("ValidateCache", before)


def test_hash_lists_beyond_the_limit_are_refused(world: World) -> None:
    """A list past MAX_LIST (or past the message size limit) is refused, never half-applied."""
    from pkgloader.rpc.servicer import MAX_LIST

    many = ["0" * 64] * (MAX_LIST + 1)
    for fn, request in [
        (world.server.stub.Retain, pb.RetainRequest(keep_sha256=many)),
        (world.server.stub.Evict, pb.EvictRequest(webc_sha256=many, scope=pb.EVICT_SCOPE_ALL)),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            fn(request, timeout=30)
        # gRPC's own receive limit may refuse it first (RESOURCE_EXHAUSTED, no ErrorInfo).
        code = caught.value.code()
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert str(MAX_LIST) in caught.value.details()
    assert len(assert_cache_sound(world.cache)) > 0  # keep-list refused: nothing was removed
