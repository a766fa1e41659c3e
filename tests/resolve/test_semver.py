"""Version requirements read as Rust's semver crate reads them (the cases of its own tests)."""

from __future__ import annotations

import pytest
from pkgloader.errors import InvalidSpecifier
from pkgloader.resolve import (
    HashSpecifier,
    NamedSpecifier,
    UrlSpecifier,
    Version,
    VersionReq,
    parse_specifier,
)


def matches(req: str, version: str) -> bool:
    return VersionReq.parse(req).matches(Version.parse(version))


@pytest.mark.parametrize(
    ("req", "yes", "no"),
    [
        # A bare version is a caret requirement (the point where node-semver differs).
        ("1.2", ["1.2.0", "1.9.9"], ["2.0.0", "1.1.9"]),
        ("1", ["1.0.0", "1.99.0"], ["2.0.0", "0.9.0"]),
        ("1.0.16", ["1.0.16", "1.0.17", "1.5.0"], ["1.0.15", "2.0.0"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4", "0.0.2"]),
        ("^0.0", ["0.0.0", "0.0.9"], ["0.1.0"]),
        ("^0", ["0.0.1", "0.9.0"], ["1.0.0"]),
        ("~1.2.3", ["1.2.3", "1.2.9"], ["1.3.0", "1.2.2"]),
        ("~1.2", ["1.2.0", "1.2.9"], ["1.3.0"]),
        ("~1", ["1.0.0", "1.9.0"], ["2.0.0"]),
        ("=1.2.3", ["1.2.3"], ["1.2.4"]),
        ("=1.2", ["1.2.0", "1.2.7"], ["1.3.0"]),
        (">1.2", ["1.3.0", "2.0.0"], ["1.2.9"]),
        (">=1.2, <2", ["1.2.0", "1.9.9"], ["2.0.0", "1.1.0"]),
        ("<=1.2.3", ["1.2.3", "0.1.0"], ["1.2.4"]),
        ("1.*", ["1.0.0", "1.9.0"], ["2.0.0"]),
        ("1.2.x", ["1.2.0", "1.2.9"], ["1.3.0"]),
        ("*", ["0.0.0", "99.0.0"], ["1.0.0-alpha"]),
        # Pre-releases match only a comparator naming the same version with a pre-release.
        (">=1.0.0-alpha", ["1.0.0-beta", "1.0.0", "1.2.0"], ["1.2.0-beta"]),
        (">=0.9", ["0.9.0", "1.0.0"], ["1.0.0-rc1"]),
        ("^1.2.3-alpha.1", ["1.2.3-alpha.2", "1.2.3-alpha.10", "1.2.3"], ["1.2.3-alpha.0"]),
    ],
)
def test_requirement_semantics_follow_the_semver_crate(
    req: str, yes: list[str], no: list[str]
) -> None:
    """Each requirement matches exactly the versions the crate says it does."""
    assert [v for v in yes if matches(req, v)] == yes
    assert [v for v in no if matches(req, v)] == []


def test_version_order_puts_pre_releases_before_their_release() -> None:
    """1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-alpha.beta < 1.0.0-beta.2 < 1.0.0-beta.11 < 1.0.0."""
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2",
               "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0"]  # fmt: skip
    assert sorted(ordered[::-1], key=Version.parse) == ordered


@pytest.mark.parametrize("text", ["1.2", "01.2.3", "1.2.3-01", "v1.2.3", "1.2.3.4", "", "a.b.c"])
def test_malformed_versions_are_refused(text: str) -> None:
    """Versions are strict MAJOR.MINOR.PATCH without leading zeros, as the crate parses them."""
    with pytest.raises(ValueError, match="version"):
        Version.parse(text)


@pytest.mark.parametrize("text", ["", "^", "1.2,", ">=x", "*.1", "1.*.2", "1.2-beta", "1 2"])
def test_malformed_requirements_are_refused(text: str) -> None:
    """What the crate refuses is refused."""
    with pytest.raises(ValueError, match="requirement"):
        VersionReq.parse(text)


def test_requirements_print_as_the_reference_prints_them() -> None:
    """A bare requirement prints with its caret; `*` for any."""
    assert [str(VersionReq.parse(t)) for t in ("1", "1.2.3", ">=1.2, <2", "1.*", "*")] == [
        "^1",
        "^1.2.3",
        ">=1.2, <2",
        "1.*.*",
        "*",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("wasmer/python", NamedSpecifier("wasmer/python")),
        ("wasmer/python@latest", NamedSpecifier("wasmer/python")),
        ("wasmer/python@^3.12", NamedSpecifier("wasmer/python", VersionReq.parse("^3.12"))),
        ("python@3", NamedSpecifier("python", VersionReq.parse("3"))),
        ("https://h.example/p.webc", UrlSpecifier("https://h.example/p.webc")),
        ("file:///srv/p.webc", UrlSpecifier("file:///srv/p.webc")),
        ("sha256:" + "AB" * 32, HashSpecifier("ab" * 32)),
    ],
)
def test_specifiers_parse(text: str, expected: object) -> None:
    """Names with requirements (none or latest: any), URLs, and sha256: hashes."""
    assert parse_specifier(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        'wasmer/py"thon',
        "wasmer/py\\thon",
        "a/b/c",
        "/abs/path.webc",
        "./x",
        "sha256:zz",
        "gopher://x/y",
        "x" * 2000,
        "wasmer/python@^3.x.1",
    ],
)
def test_malformed_specifiers_say_so(text: str) -> None:
    """A name that could break out of the GraphQL string, paths, bad hashes, odd schemes."""
    with pytest.raises(InvalidSpecifier):
        parse_specifier(text)
