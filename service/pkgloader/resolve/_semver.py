"""Versions and version requirements with the semantics of Rust's `semver` crate (what wasmer uses).

No maintained Python library has Cargo's rules (PyPI's `semver` has no requirement syntax,
`node-semver` reads a bare `1.2` as `1.2.x` and separates comparators with spaces), so this is a
small port of the crate's `eval.rs`:

- a requirement is comparators separated by commas, all of which must match;
- an operator-less comparator is a caret: `1.2` means `^1.2` (>=1.2.0, <2.0.0), `0.2` means `^0.2`
  (>=0.2.0, <0.3.0), `0.0.3` means `=0.0.3`;
- `~1.2.3` is >=1.2.3, <1.3.0; `1.*` / `1.2.x` are wildcards; `*` alone matches every release;
- a pre-release version matches only a comparator that names the same major.minor.patch with a
  pre-release of its own (`>=1.0.0-alpha` matches `1.0.0-beta`, `>=0.9` never matches `1.0.0-rc1`).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from functools import total_ordering

_NUMBER = r"0|[1-9]\d*"
_IDENT = r"[0-9A-Za-z-]+"
_VERSION = re.compile(
    rf"^(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?(?:\+(?P<build>{_IDENT}(?:\.{_IDENT})*))?$"
)
_PART = rf"{_NUMBER}|\*|x|X"
_COMPARATOR = re.compile(
    rf"^(?P<op>=|>=|>|<=|<|~|\^)?\s*(?P<major>{_PART})(?:\.(?P<minor>{_PART}))?"
    rf"(?:\.(?P<patch>{_PART}))?(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?"
    rf"(?:\+{_IDENT}(?:\.{_IDENT})*)?$"
)
_MAX = 2**64 - 1  # the crate stores each number in a u64
_WILDCARDS = ("*", "x", "X")


def _pre_key(pre: str) -> tuple[object, ...]:
    """Ordering of pre-release text: a release sorts after every pre-release of it;
    numeric identifiers sort numerically and before alphanumeric ones (semver §11)."""
    if not pre:
        return (1,)
    parts: list[tuple[int, int | str]] = []
    for ident in pre.split("."):
        parts.append((0, int(ident)) if ident.isdigit() else (1, ident))
    return (0, *parts)


def _number(text: str, what: str) -> int:
    value = int(text)
    if value > _MAX:
        raise ValueError(f"{what} {text} is too large")
    return value


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: str = ""
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        """Strict MAJOR.MINOR.PATCH[-pre][+build], no leading zeros, as the crate parses."""
        match = _VERSION.match(text.strip())
        if match is None:
            raise ValueError(f"invalid version {text[:100]!r}: expected MAJOR.MINOR.PATCH")
        pre = match.group("pre") or ""
        for ident in pre.split(".") if pre else ():
            if ident.isdigit() and len(ident) > 1 and ident.startswith("0"):
                raise ValueError(f"invalid version {text[:100]!r}: leading zero in {ident!r}")
        return cls(
            _number(match.group("major"), "major version"),
            _number(match.group("minor"), "minor version"),
            _number(match.group("patch"), "patch version"),
            pre,
            match.group("build") or "",
        )

    def _key(self) -> tuple[object, ...]:
        return (self.major, self.minor, self.patch, _pre_key(self.pre), self.build)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += f"-{self.pre}"
        if self.build:
            text += f"+{self.build}"
        return text


class Op(enum.Enum):
    EXACT = "="
    GREATER = ">"
    GREATER_EQ = ">="
    LESS = "<"
    LESS_EQ = "<="
    TILDE = "~"
    CARET = "^"
    WILDCARD = ""


@dataclass(frozen=True)
class Comparator:
    op: Op
    major: int
    minor: int | None = None
    patch: int | None = None
    pre: str = ""

    @classmethod
    def parse(cls, text: str) -> Comparator:
        match = _COMPARATOR.match(text.strip())
        if match is None:
            raise ValueError(f"invalid version requirement {text.strip()[:100]!r}")
        op = Op(match.group("op")) if match.group("op") else Op.CARET
        raw = [match.group("major"), match.group("minor"), match.group("patch")]
        pre = match.group("pre") or ""
        if raw[0] in _WILDCARDS:
            raise ValueError(f"invalid version requirement {text.strip()[:100]!r}: use * alone")
        numbers: list[int | None] = [_number(raw[0], "major version"), None, None]
        wildcard = False
        for i in (1, 2):
            part = raw[i]
            if part is None:
                continue
            if part in _WILDCARDS:
                wildcard = True
                continue
            if wildcard:
                raise ValueError(
                    f"invalid version requirement {text.strip()[:100]!r}: a number after a wildcard"
                )
            numbers[i] = _number(part, "version")
        if pre and numbers[2] is None:
            raise ValueError(
                f"invalid version requirement {text.strip()[:100]!r}: "
                "a pre-release needs major.minor.patch"
            )
        if wildcard and op in (Op.CARET, Op.EXACT):
            # `1.*` and `=1.*` are wildcards; `>1.*`, `~1.*` just leave the part out.
            op = Op.WILDCARD
        return cls(op, numbers[0] or 0, numbers[1], numbers[2], pre)

    def matches(self, v: Version) -> bool:
        op = self.op
        if op is Op.EXACT:
            return self._exact(v)
        if op is Op.GREATER:
            return self._greater(v)
        if op is Op.GREATER_EQ:
            return self._exact(v) or self._greater(v)
        if op is Op.LESS:
            return self._less(v)
        if op is Op.LESS_EQ:
            return self._exact(v) or self._less(v)
        if op is Op.TILDE:
            return self._tilde(v)
        if op is Op.CARET:
            return self._caret(v)
        return self._wildcard(v)

    def _exact(self, v: Version) -> bool:
        if v.major != self.major:
            return False
        if self.minor is not None and v.minor != self.minor:
            return False
        if self.patch is not None and v.patch != self.patch:
            return False
        return _pre_key(v.pre) == _pre_key(self.pre)

    def _greater(self, v: Version) -> bool:
        if v.major != self.major:
            return v.major > self.major
        if self.minor is None:
            return False
        if v.minor != self.minor:
            return v.minor > self.minor
        if self.patch is None:
            return False
        if v.patch != self.patch:
            return v.patch > self.patch
        return _pre_key(v.pre) > _pre_key(self.pre)

    def _less(self, v: Version) -> bool:
        if v.major != self.major:
            return v.major < self.major
        if self.minor is None:
            return False
        if v.minor != self.minor:
            return v.minor < self.minor
        if self.patch is None:
            return False
        if v.patch != self.patch:
            return v.patch < self.patch
        return _pre_key(v.pre) < _pre_key(self.pre)

    def _tilde(self, v: Version) -> bool:
        if v.major != self.major:
            return False
        if self.minor is not None and v.minor != self.minor:
            return False
        if self.patch is not None and v.patch != self.patch:
            return v.patch > self.patch
        return _pre_key(v.pre) >= _pre_key(self.pre)

    def _caret(self, v: Version) -> bool:
        if v.major != self.major:
            return False
        minor = self.minor
        if minor is None:
            return True
        patch = self.patch
        if patch is None:
            return v.minor >= minor if self.major > 0 else v.minor == minor
        if self.major > 0:
            if v.minor != minor:
                return v.minor > minor
            if v.patch != patch:
                return v.patch > patch
        elif minor > 0:
            if v.minor != minor:
                return False
            if v.patch != patch:
                return v.patch > patch
        elif v.minor != minor or v.patch != patch:
            return False
        return _pre_key(v.pre) >= _pre_key(self.pre)

    def _wildcard(self, v: Version) -> bool:
        if v.major != self.major:
            return False
        if self.minor is not None and v.minor != self.minor:
            return False
        return self.patch is None or v.patch == self.patch

    def allows_pre_of(self, v: Version) -> bool:
        """The crate's `pre_is_compatible`: this comparator opts in to `v`'s pre-releases."""
        return (
            bool(self.pre)
            and self.major == v.major
            and self.minor == v.minor
            and self.patch == v.patch
        )

    def __str__(self) -> str:
        parts = [str(self.major)]
        for part in (self.minor, self.patch):
            if part is None:
                break
            parts.append(str(part))
        text = ".".join(parts)
        if self.op is Op.WILDCARD:
            return text + ".*" * (3 - len(parts))
        if self.pre:
            text += f"-{self.pre}"
        return f"{self.op.value}{text}"


@dataclass(frozen=True)
class VersionReq:
    """Comparators that must all match; none (`*`) matches every release."""

    comparators: tuple[Comparator, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionReq:
        text = text.strip()
        if text in _WILDCARDS:
            return STAR
        parts = text.split(",")
        if not text or any(not part.strip() for part in parts):
            raise ValueError(f"invalid version requirement {text[:100]!r}")
        if len(parts) > 32:  # the crate has no limit; bounded so a request cannot be huge work
            raise ValueError("a version requirement has at most 32 comparators")
        return cls(tuple(Comparator.parse(part) for part in parts))

    def matches(self, v: Version) -> bool:
        if not all(c.matches(v) for c in self.comparators):
            return False
        if not v.pre:
            return True
        return any(c.allows_pre_of(v) for c in self.comparators)

    def __str__(self) -> str:
        return ", ".join(str(c) for c in self.comparators) if self.comparators else "*"


STAR = VersionReq()
