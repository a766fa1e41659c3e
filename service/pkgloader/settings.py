"""Configuration: `PKGLOADER_*` environment variables, each also a `pkgloader serve` flag.

Everything is validated once, at start-up, into an immutable `Settings`; a bad value stops the
process with a message naming the variable. Nothing reads the environment after that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pkgloader_client import parse_size

from pkgloader.policy import HashPolicy

MiB = 1024 * 1024
GiB = 1024 * MiB


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


def parse_seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {text!r}")
    return value


def parse_listen(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {text!r}")
    return text


def _parse_optional_listen(text: str) -> str:
    return parse_listen(text) if text.strip() else ""


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _parse_authorities(text: str) -> tuple[str, ...]:
    authorities = []
    for item in _parse_list(text):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"expected host:port entries, got {item!r}")
        authorities.append(item.lower())
    return tuple(authorities)


def _parse_allow(text: str) -> tuple[str, ...]:
    from pkgloader.fetch.guard import UpstreamPolicy

    return UpstreamPolicy.parse(text).entries


def _parse_roots(text: str) -> tuple[Path, ...]:
    roots = []
    for part in filter(None, text.split(":")):
        path = Path(part).expanduser()
        if not path.is_absolute():
            raise ValueError(f"file roots must be absolute paths, got {part!r}")
        roots.append(path.resolve())
    return tuple(roots)


def _parse_registry_url(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    import httpx

    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise ValueError(f"bad URL {text!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"expected an http(s) URL with a host, got {text!r}")
    return text


def _parse_cache_dir(text: str) -> Path | None:
    return Path(text).expanduser().absolute() if text.strip() else None


def _parse_optional_path(text: str) -> Path | None:
    return Path(text).expanduser() if text.strip() else None


def _parse_positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def _default_cache_dir(env: Mapping[str, str]) -> str:
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "pkgloader")


def _setting(default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help})


@dataclass(frozen=True)
class Settings:
    """The validated configuration. Field `x_y` is variable `PKGLOADER_X_Y` and flag `--x-y`."""

    listen: str = _setting("127.0.0.1:50051", parse_listen, "gRPC address, host:port")
    cache_dir: Path | None = _setting(
        None, _parse_cache_dir, "disk cache folder; empty: memory only (default ~/.cache/pkgloader)"
    )
    memory_cache_bytes: int = _setting(256 * MiB, parse_size, "memory cache budget; 0 disables it")
    hash_validation: HashPolicy = _setting(
        HashPolicy.FAIL, HashPolicy.parse, "default hash check: none, warn or fail"
    )
    tokens_file: Path | None = _setting(
        None, _parse_optional_path, "JSON object mapping upstream authority (host[:port]) to token"
    )
    file_roots: tuple[Path, ...] = _setting(
        (), _parse_roots, "colon-separated folders file:// URLs may read (none by default)"
    )
    max_package_bytes: int = _setting(
        4 * GiB, parse_size, "largest package accepted, counted in decoded bytes"
    )
    connect_timeout: float = _setting(10.0, parse_seconds, "upstream connect timeout, seconds")
    read_timeout: float = _setting(30.0, parse_seconds, "upstream read (idle) timeout, seconds")
    download_timeout: float = _setting(
        900.0, parse_seconds, "overall deadline of one download, seconds"
    )
    workers: int = _setting(
        64,
        _parse_positive_int,
        "threads for calls that block (all but memory hits, health and reflection, which the "
        "event loop answers); calls running at once are at most 16 times this",
    )
    max_downloads: int = _setting(16, _parse_positive_int, "concurrent downloads per process")
    touch_interval: float = _setting(
        300.0,
        parse_seconds,
        "how stale a cache file's last-use stamp may get before a hit renews it",
    )
    lease_ttl: float = _setting(
        30.0,
        parse_seconds,
        "seconds without a heartbeat after which another replica takes over a download lease",
    )
    max_cache_bytes: int = _setting(
        0, parse_size, "disk cache size limit kept by a background task (LRU); 0: no limit"
    )
    size_check_interval: float = _setting(
        60.0, parse_seconds, "seconds between checks of the disk cache size limit"
    )
    health_listen: str = _setting(
        "",
        _parse_optional_listen,
        "extra plaintext port serving only gRPC health (for probes when TLS is on); empty: off",
    )
    metrics_listen: str = _setting(
        "", _parse_optional_listen, "Prometheus /metrics address, host:port; empty: off"
    )
    upstream_allow: tuple[str, ...] = _setting(
        (),
        _parse_allow,
        "comma-separated upstream hosts, CIDR ranges or URL prefixes allowed (plus, when empty, "
        "any public address); non-public addresses need an entry",
    )
    auth_tokens_file: Path | None = _setting(
        None, _parse_optional_path, "JSON object mapping client token -> role (reader or admin)"
    )
    auth_exempt: tuple[str, ...] = _setting(
        (
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "grpc.reflection.v1.ServerReflection",
        ),
        _parse_list,
        "comma-separated gRPC services reachable without a token",
    )
    tls_cert: Path | None = _setting(None, _parse_optional_path, "server certificate (PEM)")
    tls_key: Path | None = _setting(None, _parse_optional_path, "server private key (PEM)")
    tls_client_ca: Path | None = _setting(
        None, _parse_optional_path, "CA (PEM) whose client certificates are required (mTLS)"
    )
    max_request_bytes: int = _setting(4 * MiB, parse_size, "largest request message accepted")
    max_streams_per_connection: int = _setting(
        100, _parse_positive_int, "concurrent calls one client connection may have open"
    )
    max_content_streams_per_connection: int = _setting(
        16,
        _parse_positive_int,
        "content Loads and Scans one client connection may have running (at most workers - 1); "
        "beyond it RESOURCE_EXHAUSTED",
    )
    send_timeout: float = _setting(
        30.0,
        parse_seconds,
        "seconds one streamed response message (at most 1 MiB) may wait to be sent before the "
        "call is ended: a client that stopped reading frees its place",
    )
    health_workers: int = _setting(
        4,
        _parse_positive_int,
        "reflection streams open at once, plus one (health and reflection are answered on the "
        "event loop, beside no business call)",
    )
    reflection_idle_timeout: float = _setting(
        10.0,
        parse_seconds,
        "seconds a server reflection stream may wait for its next request before the server ends "
        "it (STREAM_IDLE): an idle client does not keep the reflection capacity",
    )
    max_queued_downloads: int = _setting(
        128,
        _parse_positive_int,
        "downloads waiting or running per process before new ones get RESOURCE_EXHAUSTED",
    )
    call_timeout: float = _setting(
        900.0, parse_seconds, "server-side deadline for a call whose client sets none, seconds"
    )
    grace_period: float = _setting(10.0, parse_seconds, "seconds in-flight calls get on shutdown")
    log_level: str = _setting("INFO", str.upper, "DEBUG, INFO, WARNING or ERROR")
    # -- issue 10 (H3): stalled and abandoned downloads, tokens only over https --
    min_transfer_bytes: int = _setting(
        32 * 1024,
        parse_size,
        "a download receiving fewer bytes than this in any min_transfer_interval ends "
        "UNAVAILABLE; 0: no minimum",
    )
    min_transfer_interval: float = _setting(
        30.0, parse_seconds, "the window of min_transfer_bytes, seconds"
    )
    abandon_grace: float = _setting(
        10.0,
        parse_seconds,
        "seconds a download goes on after its last waiting caller left; it stops unless a Load "
        "joins it again by then",
    )
    foreign_lease_wait: float = _setting(
        5.0,
        parse_seconds,
        "seconds to wait for another replica's download lease on the same hash from another URL "
        "before downloading without it",
    )
    plaintext_token_authorities: tuple[str, ...] = _setting(
        (),
        _parse_authorities,
        "comma-separated host:port allowed to get their upstream token over plain http "
        "(tokens otherwise go only over https); empty by default",
    )
    registry_url: str = _setting(
        "",
        _parse_registry_url,
        "GraphQL endpoint of a Wasmer registry for Resolve (public: "
        "https://registry.wasmer.io/graphql); empty: no registry is contacted",
    )
    registry_ttl: float = _setting(
        300.0, parse_seconds, "seconds a registry answer is reused before asking again"
    )
    package_dirs: tuple[Path, ...] = _setting(
        (),
        _parse_roots,
        "colon-separated folders of <namespace>--<name>@<version>.webc files Resolve reads "
        "(they must lie under PKGLOADER_FILE_ROOTS)",
    )
    temp_max_age: float = _setting(
        3600.0,
        parse_seconds,
        "seconds after which a file in the cache's __temp__/ that no live writer holds is removed "
        "(any writer's, the wasmer CLI's too); checked at start-up and every quarter of it",
    )
    tokens: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    auth_tokens: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def env_name(cls, name: str) -> str:
        return f"PKGLOADER_{name.upper()}"

    @classmethod
    def options(cls) -> list[tuple[str, str]]:
        """(field name, help) of every configurable setting, for the command line."""
        return [(f.name, f.metadata["help"]) for f in fields(cls) if "parse" in f.metadata]

    @classmethod
    def load(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
    ) -> Settings:
        """Settings from `env` (default: os.environ), then `overrides` (command-line flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if "parse" not in f.metadata:
                continue
            name = cls.env_name(f.name)
            text = (overrides or {}).get(f.name)
            if text is None:
                text = env.get(name)
            if text is None and f.name == "cache_dir":
                text = _default_cache_dir(env)
            if text is None:
                continue
            try:
                values[f.name] = f.metadata["parse"](text)
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc}") from None
        if values.get("log_level", "INFO") not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError(f"PKGLOADER_LOG_LEVEL: unknown level {values['log_level']!r}")
        settings = cls(**values)
        if settings.tokens_file is not None:
            object.__setattr__(settings, "tokens", _read_tokens(settings.tokens_file))
        if settings.auth_tokens_file is not None:
            object.__setattr__(
                settings, "auth_tokens", _read_auth_tokens(settings.auth_tokens_file)
            )
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise SettingsError("PKGLOADER_TLS_CERT and PKGLOADER_TLS_KEY must be set together")
        if settings.tls_client_ca is not None and settings.tls_cert is None:
            raise SettingsError("PKGLOADER_TLS_CLIENT_CA needs PKGLOADER_TLS_CERT and _KEY")
        for folder in settings.package_dirs:
            if not any(
                folder == root or folder.is_relative_to(root) for root in settings.file_roots
            ):
                raise SettingsError(
                    f"PKGLOADER_PACKAGE_DIRS: {folder} is not under PKGLOADER_FILE_ROOTS, so its "
                    "packages could not be loaded"
                )
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(settings, name)
            if path is not None and not path.is_file():
                raise SettingsError(f"{cls.env_name(name)}: no such file {path}")
        return settings


def _read_auth_tokens(path: Path) -> dict[str, str]:
    tokens = _read_json_strings(path, "PKGLOADER_AUTH_TOKENS_FILE", "token -> role")
    from pkgloader.rpc.auth import ROLES

    for role in tokens.values():
        if role not in ROLES:
            raise SettingsError(
                f"PKGLOADER_AUTH_TOKENS_FILE: roles must be reader or admin, got {role!r}"
            )
    return tokens


def _read_tokens(path: Path) -> dict[str, str]:
    tokens = _read_json_strings(path, "PKGLOADER_TOKENS_FILE", "authority -> token")
    return {k.lower(): v for k, v in tokens.items()}


def _read_json_strings(path: Path, name: str, shape: str) -> dict[str, str]:
    # Never echo the file's content in an error: it holds secrets.
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise SettingsError(f"{name}: {path} is not valid JSON") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in data.items()
    ):
        raise SettingsError(f"{name}: {path} must hold a JSON object of {shape} strings")
    return dict(data)
