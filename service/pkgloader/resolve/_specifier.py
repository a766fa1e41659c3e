"""Package specifiers: `namespace/name@requirement`, a URL, or `sha256:<hex>` (doc §9a)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pkgloader.errors import InvalidHash, InvalidSpecifier, InvalidUrl
from pkgloader.fetch.urls import parse_url
from pkgloader.hashes import WebcHash
from pkgloader.resolve._semver import STAR, VersionReq

MAX_SPECIFIER = 1024  # a name, a requirement or a URL; far beyond any real one
# Registry names: an optional namespace, then the name. The character set also keeps the name
# safe to splice into the GraphQL query text, as the reference does (no quotes, no backslashes).
_NAME = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class NamedSpecifier:
    name: str
    requirement: VersionReq = STAR

    def __str__(self) -> str:
        return f"{self.name}@{self.requirement}"


@dataclass(frozen=True)
class UrlSpecifier:
    url: str

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class HashSpecifier:
    sha256: str  # lowercase hex

    def __str__(self) -> str:
        return f"sha256:{self.sha256}"


Specifier = NamedSpecifier | UrlSpecifier | HashSpecifier


def parse_specifier(text: str) -> Specifier:
    """Parse what a caller (or a manifest's `use` map) asks for; `InvalidSpecifier` otherwise."""
    shown = text if len(text) <= 200 else text[:197] + "..."
    if not text.strip():
        raise InvalidSpecifier("specifier is required", specifier=shown)
    if len(text) > MAX_SPECIFIER:
        raise InvalidSpecifier(
            f"specifier is longer than {MAX_SPECIFIER} characters", specifier=shown
        )
    if text.startswith("sha256:"):
        try:
            return HashSpecifier(WebcHash.parse(text.removeprefix("sha256:")).hex)
        except InvalidHash:
            raise InvalidSpecifier(
                f"sha256 specifier must be sha256: and 64 hex digits, got {shown!r}",
                specifier=shown,
            ) from None
    if "://" in text:
        try:
            parse_url(text)
            return UrlSpecifier(text)
        except InvalidUrl as exc:
            raise InvalidSpecifier(f"invalid package URL: {exc.message}", specifier=shown) from None
    if text.startswith((".", "/")):
        raise InvalidSpecifier(
            f"local paths are not specifiers here; use a file:// URL: {shown!r}", specifier=shown
        )
    name, _, requirement = text.partition("@")
    if not _NAME.match(name):
        raise InvalidSpecifier(
            f"invalid package name {name[:200]!r}: expected namespace/name[@version requirement]",
            specifier=shown,
        )
    requirement = requirement.strip()
    if requirement in ("", "latest"):
        return NamedSpecifier(name, STAR)
    try:
        return NamedSpecifier(name, VersionReq.parse(requirement))
    except ValueError as exc:
        raise InvalidSpecifier(f"{shown!r}: {exc}", specifier=shown) from None
