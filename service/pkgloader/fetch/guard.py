"""Outbound policy: which upstream addresses a download may connect to (no SSRF).

`PKGLOADER_UPSTREAM_ALLOW` is a comma-separated list of host names, IP addresses, CIDR ranges and
URL prefixes. Empty means any *public* address. Loopback, private, link-local (cloud metadata at
169.254.169.254), multicast, reserved and unspecified addresses are refused unless an entry allows
them by name, prefix or range. The check runs twice: on each URL (first request and every
redirect hop) and on each *resolved* address at connect time, inside the HTTP client's network
backend, so a name that resolves to a refused address is never connected to (DNS rebinding
included: the address checked is the address connected to).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from pkgloader.errors import UpstreamBlocked

_HOST = re.compile(r"[A-Za-z0-9.\-:\[\]]+")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UpstreamPolicy:
    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.entries = tuple(entry.strip() for entry in allow if entry.strip())
        self._networks: list[Network] = []
        self._hosts: set[str] = set()  # allowed by name, for URLs and addresses alike
        self._prefixes: list[str] = []
        self._prefix_hosts: set[str] = set()  # may be connected to, for URLs under a prefix
        for entry in self.entries:
            if "://" in entry:
                url = httpx.URL(entry)
                self._prefixes.append(str(url))
                self._prefix_hosts.add(url.host.lower())
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            self._hosts.add(entry.strip("[]").lower())

    @classmethod
    def parse(cls, text: str) -> UpstreamPolicy:
        """For settings: validate every entry now, not at the first download."""
        for entry in filter(None, (e.strip() for e in text.split(","))):
            if "://" in entry:
                try:
                    url = httpx.URL(entry)
                except httpx.InvalidURL as exc:
                    raise ValueError(f"bad URL prefix {entry!r}: {exc}") from None
                if url.scheme not in ("http", "https") or not url.host:
                    raise ValueError(f"URL prefix must be an http(s) URL with a host: {entry!r}")
            elif "/" in entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"bad CIDR range {entry!r}") from None
            elif not _HOST.fullmatch(entry):
                raise ValueError(f"bad host name or address {entry!r}")
        return cls(text.split(","))

    def check_url(self, url: httpx.URL) -> None:
        """Refuse a URL the allow-list does not cover (before any connection)."""
        if not self.entries:
            return
        text = str(url)
        host = url.host.lower()
        if host in self._hosts or any(text.startswith(prefix) for prefix in self._prefixes):
            return
        literal = _literal(host)
        if literal is not None and any(literal in net for net in self._networks):
            return
        if literal is None and self._networks:
            return  # a name: judged by the addresses it resolves to, at connect time
        raise UpstreamBlocked(
            f"upstream {url.host!r} is not in PKGLOADER_UPSTREAM_ALLOW", url=_safe(url)
        )

    def check_address(self, host: str, address: Address) -> None:
        """Refuse connecting to `address` (resolved from `host`)."""
        host = host.strip("[]").lower()
        by_name = host in self._hosts or host in self._prefix_hosts
        by_range = any(address in net for net in self._networks)
        if self.entries and not (by_name or by_range):
            raise UpstreamBlocked(
                f"upstream {host!r} resolves to {address}, which PKGLOADER_UPSTREAM_ALLOW "
                "does not allow",
                host=host,
            )
        if not _public(address) and not (by_name or by_range):
            raise UpstreamBlocked(
                f"upstream {host!r} resolves to the non-public address {address}; "
                "allow it explicitly in PKGLOADER_UPSTREAM_ALLOW",
                host=host,
            )


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's network backend, resolving names itself so every address is checked first."""

    def __init__(self, policy: UpstreamPolicy) -> None:
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        # Every answer must pass: a mixed answer is how rebinding attacks hide a private address.
        for address in addresses:
            self._policy.check_address(host, address)
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last


#: NAT64's well-known prefix (RFC 6052): the last 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to: IPv4-mapped, 6to4 (2002::/16, RFC 3056),
    Teredo (2001::/32, RFC 4380: server and de-obfuscated client) and NAT64 (64:ff9b::/96).
    A relay or gateway on the path forwards such a packet to that IPv4 address, so it must pass
    the same check as if it had been named directly."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []


def _public(address: Address) -> bool:
    """Globally routable unicast. Python counts multicast as global; we do not, and an IPv6
    address that carries an IPv4 address (mapped, 6to4, Teredo, NAT64) is public only if every
    IPv4 address it carries is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded(address)
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif embedded:
            return all(_public(inner) for inner in embedded) and _public_unicast(address)
    return _public_unicast(address)


def _public_unicast(address: Address) -> bool:
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
    )


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _safe(url: httpx.URL) -> str:
    return str(url.copy_with(query=None, fragment=None))
