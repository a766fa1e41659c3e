"""The package manifest (doc §4) as frozen dataclasses, built from the decoded CBOR map."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import FormatError
from ._json import JSON, to_jsonable


@dataclass(frozen=True)
class Command:
    """A manifest command: its runner URI and its annotations (``atom``, ``wasi``, …)."""

    name: str
    runner: str
    annotations: dict[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True)
class Atom:
    """A manifest atom; ``size`` is the length of its bytes in the package, 0 if absent."""

    name: str
    kind: str
    signature: str
    size: int
    annotations: dict[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True)
class Dependency:
    """A ``use`` entry: ``ns/name@req``, a URL, or ``name@version`` of a vendored manifest."""

    alias: str
    spec: str


@dataclass(frozen=True)
class Binding:
    """A language binding (``wit@…`` / ``wai@…``) and its free-form annotations."""

    name: str
    kind: str
    annotations: JSON


@dataclass(frozen=True)
class Manifest:
    """The whole manifest; ``raw`` is all of it in JSON-safe form, unknown keys included."""

    entrypoint: str | None
    commands: tuple[Command, ...]
    atoms: tuple[Atom, ...]
    dependencies: tuple[Dependency, ...]
    package: dict[str, JSON]
    bindings: tuple[Binding, ...]
    raw: dict[str, JSON]


# Annotations reach callers as protobuf Structs, which cost about three message levels per map
# level, and protobuf's usual decoders (Python's upb, Java, C++) stop at 100 levels: a command
# annotation nested 32 maps deep no longer decodes. 32 levels from the manifest's root keep every
# manifest value (bindings are the deepest, in a Value) decodable by such clients, with a margin,
# and real manifests nest a handful of levels. The CBOR decoder's own limit is about stack depth
# and applies to indexes too; this one is about what a manifest may hold, whatever its format.
MAX_MANIFEST_DEPTH = 32


def _check_depth(top: object) -> None:
    pending = [(top, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, list):
            children = list(value)
        else:
            continue
        if depth > MAX_MANIFEST_DEPTH:
            raise FormatError(f"manifest: nested deeper than {MAX_MANIFEST_DEPTH} levels")
        pending.extend((child, depth + 1) for child in children)


def _map(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise FormatError(f"manifest: {where} must be a map, found {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise FormatError(f"manifest: {where} has a non-string key {key!r}")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"manifest: {where} must be a string, found {type(value).__name__}")
    return value


def _annotations(value: object, where: str) -> dict[str, JSON]:
    converted = to_jsonable(_map(value, where))
    assert isinstance(converted, dict)  # a str-keyed map converts to a dict
    return converted


def _dependency_spec(alias: str, value: object) -> str:
    if isinstance(value, str):  # "ns/name@req" or a URL
        return value
    if isinstance(value, dict):  # a vendored manifest: identify it by its wapm name@version
        wapm = value.get("package", {})
        wapm = wapm.get("wapm") if isinstance(wapm, dict) else None
        if isinstance(wapm, dict):
            name, version = wapm.get("name"), wapm.get("version")
            if isinstance(name, str) and isinstance(version, str):
                return f"{name}@{version}"
        raise FormatError(
            f"manifest: Unable to determine a package specifier for the vendored dependency "
            f"{alias!r}"
        )
    raise FormatError(
        f"manifest: use[{alias!r}] must be a string or a manifest, found {type(value).__name__}"
    )


def manifest_from_cbor(value: object, atom_sizes: Mapping[str, int]) -> Manifest:
    """Check the shape of a decoded manifest and build a ``Manifest``.

    Mirrors what serde enforces in the webc crate: required fields must be there with the right
    type; unknown keys are kept in ``raw`` and otherwise ignored.
    """
    top = _map(value, "the manifest")
    # Checked in JSON form: a CBOR tag becomes one more map level there.
    raw: Any = to_jsonable(top)
    _check_depth(raw)

    entrypoint = top.get("entrypoint")
    if entrypoint is not None:
        entrypoint = _str(entrypoint, "entrypoint")

    commands = []
    for name, spec in _map(top.get("commands", {}), "commands").items():
        spec = _map(spec, f"commands[{name!r}]")
        if "runner" not in spec:
            raise FormatError(f"manifest: commands[{name!r}] has no runner")
        commands.append(
            Command(
                name=name,
                runner=_str(spec["runner"], f"commands[{name!r}].runner"),
                annotations=_annotations(
                    spec.get("annotations", {}), f"commands[{name!r}].annotations"
                ),
            )
        )

    atoms = []
    for name, spec in _map(top.get("atoms", {}), "atoms").items():
        spec = _map(spec, f"atoms[{name!r}]")
        for key in ("kind", "signature"):
            if key not in spec:
                raise FormatError(f"manifest: atoms[{name!r}] has no {key}")
        atoms.append(
            Atom(
                name=name,
                kind=_str(spec["kind"], f"atoms[{name!r}].kind"),
                signature=_str(spec["signature"], f"atoms[{name!r}].signature"),
                size=atom_sizes.get(name, 0),
                annotations=_annotations(
                    spec.get("annotations", {}), f"atoms[{name!r}].annotations"
                ),
            )
        )

    dependencies = tuple(
        Dependency(alias=alias, spec=_dependency_spec(alias, spec))
        for alias, spec in _map(top.get("use", {}), "use").items()
    )

    raw_bindings = top.get("bindings", [])
    if not isinstance(raw_bindings, list):
        raise FormatError("manifest: bindings must be an array")
    bindings = []
    for i, spec in enumerate(raw_bindings):
        spec = _map(spec, f"bindings[{i}]")
        for key in ("name", "kind"):
            if key not in spec:
                raise FormatError(f"manifest: bindings[{i}] has no {key}")
        bindings.append(
            Binding(
                name=_str(spec["name"], f"bindings[{i}].name"),
                kind=_str(spec["kind"], f"bindings[{i}].kind"),
                annotations=to_jsonable(spec.get("annotations")),
            )
        )

    return Manifest(
        entrypoint=entrypoint,
        commands=tuple(commands),
        atoms=tuple(atoms),
        dependencies=dependencies,
        package=_annotations(top.get("package", {}), "package"),
        bindings=tuple(bindings),
        raw=raw,
    )
