"""``wasmer.toml`` / ``wapm.toml`` → webc manifest, by the rules of doc §5.

This mirrors wasmer's ``wasmer_manifest_to_webc`` followed by ``Package::load`` (which drops
``name``, ``version`` and ``description`` from the ``wapm`` annotation). Atom ``wasm.features``
annotations are not produced: they come from wasmer's wasm feature detector, which this reader
does not reimplement.
"""

from __future__ import annotations

import base64
import datetime
import re
import tomllib
from collections.abc import Mapping
from urllib.parse import urlsplit

from ._errors import FormatError
from ._source import Content
from ._volume import content_sha256

WASI_RUNNER = "https://webc.org/runner/wasi"
WCGI_RUNNER = "https://webc.org/runner/wcgi"
WASM4_RUNNER = "https://webc.org/runner/wasm4"
WASM_KIND = "https://webc.org/kind/wasm"
TENSORFLOW_KIND = "https://webc.org/kind/tensorflow-SavedModel"

# One semver comparator: an optional operator, then major[.minor[.patch[-pre][+build]]] with
# wildcards allowed in the minor and patch positions.
_COMPARATOR = re.compile(
    r"(?P<op>>=|<=|>|<|=|~|\^)?\s*"
    r"(?P<version>\d+(?:\.(?:\d+|[*xX])(?:\.(?:\d+|[*xX])(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)?)?"
    r"|[*xX])"
)


def sanitize_path(path: str) -> str:
    """webc's ``sanitize_path``: drop ``.``, let ``..`` pop, join as ``/a/b`` (empty → ``/``)."""
    segments: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if segments:
                segments.pop()
            continue
        segments.append(part)
    return "/" + "/".join(segments)


def _version_req(req: str, dependency: str) -> str:
    """Display a requirement like semver's ``VersionReq``: a bare ``1.0.16`` becomes ``^1.0.16``."""
    if req.strip() in ("*", "x", "X"):
        return "*"
    shown = []
    for part in req.split(","):
        match = _COMPARATOR.fullmatch(part.strip())
        if match is None:
            raise FormatError(
                f"wasmer.toml: dependency {dependency!r} has an invalid version requirement {req!r}"
            )
        version = re.sub(r"[xX]", "*", match["version"])
        op = match["op"] or ("" if "*" in version else "^")
        shown.append(op + version)
    return ", ".join(shown)


def _runner_uri(name: str) -> str:
    """``RunnerKind::from_name``."""
    if name in ("wasi", "wasi@unstable_", WASI_RUNNER, "generic"):
        return WASI_RUNNER
    if name == "wcgi":
        return WCGI_RUNNER
    if name == "wasm4":
        return WASM4_RUNNER
    parts = urlsplit(name)
    if parts.scheme and parts.netloc:
        return name
    return f"https://webc.org/runner/{name}"


def _plain(value: object) -> object:
    """TOML values as the CBOR the reference would write (dates become RFC 3339 strings)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    return value


def _table(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise FormatError(f"wasmer.toml: {where} must be a table")
    return value


def _tables(value: object, where: str) -> list[dict[str, object]]:
    if not isinstance(value, list):
        raise FormatError(f"wasmer.toml: {where} must be an array of tables")
    return [_table(item, f"{where}[{i}]") for i, item in enumerate(value)]


def _text(table: Mapping[str, object], key: str, where: str) -> str | None:
    value = table.get(key)
    return None if value is None else _required_text(table, key, where)


def _required_text(table: Mapping[str, object], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        raise FormatError(f"wasmer.toml: {where}.{key} must be a string")
    return value


def _split_module_ref(ref: str) -> tuple[str | None, str]:
    dependency, sep, module = ref.partition(":")
    return (dependency, module) if sep else (None, ref)


def module_sources(text: bytes) -> set[str] | None:
    """The sanitized paths of every ``[[module]]`` source, or None if ``text`` does not parse.

    A cheap look ahead for the tar.gz reader, which hashes those members as it streams past
    them; ``convert`` does the real checks (and reports the errors).
    """
    try:
        modules = tomllib.loads(text.decode("utf-8")).get("module", [])
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if not isinstance(modules, list):
        return None
    return {
        sanitize_path(m["source"])
        for m in modules
        if isinstance(m, dict) and isinstance(m.get("source"), str)
    }


def convert(
    text: bytes, files: Mapping[str, Content]
) -> tuple[dict[str, object], dict[str, Content]]:
    """The manifest map and the atoms (module bytes, by module name) of a tar.gz package.

    ``files`` maps the archive's sanitized absolute paths to their contents (views, or
    members not kept in memory, whose sha256 is taken without holding them).
    """
    try:
        doc = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise FormatError("wasmer.toml: the file is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise FormatError(f"wasmer.toml: {exc}") from None

    manifest: dict[str, object] = {}

    dependencies = _table(doc.get("dependencies", {}), "[dependencies]")
    if dependencies:
        use: dict[str, object] = {}
        for name, req in dependencies.items():
            if not isinstance(req, str):
                raise FormatError(f"wasmer.toml: dependency {name!r} must be a version string")
            use[name] = f"{name}@{_version_req(req, name)}"
        manifest["use"] = use

    package_annotations: dict[str, object] = {}
    package = doc.get("package")
    entrypoint: str | None = None
    if package is not None:
        package = _table(package, "[package]")
        wapm: dict[str, object] = {}
        # name, version and description are dropped by Package::load, so they are not copied.
        for key in ("license", "license-file", "readme", "repository", "homepage"):
            value = _text(package, key, "[package]")
            if value is None:
                continue
            if key in ("license-file", "readme"):
                wapm[key] = {"volume": "metadata", "path": sanitize_path(value)}
            else:
                wapm[key] = value
        if package.get("private") is True:
            wapm["private"] = True
        package_annotations["wapm"] = wapm
        entrypoint = _text(package, "entrypoint", "[package]")

    fs = _table(doc.get("fs", {}), "[fs]")
    if fs:
        mappings = []
        for guest, host in fs.items():
            if not isinstance(host, str):
                raise FormatError(f"wasmer.toml: [fs] {guest!r} must map to a path string")
            mappings.append(
                {
                    "from": None,
                    "volume_name": sanitize_path(host),
                    "mount_path": sanitize_path(guest),
                }
            )
        package_annotations["fs"] = mappings
    if package_annotations:
        manifest["package"] = package_annotations

    modules: dict[str, dict[str, object]] = {}
    atoms: dict[str, object] = {}
    atom_bytes: dict[str, Content] = {}
    bindings: list[object] = []
    for i, module in enumerate(_tables(doc.get("module", []), "[[module]]")):
        where = f"[[module]][{i}]"
        name = _required_text(module, "name", where)
        source = _required_text(module, "source", where)
        if name in modules:
            raise FormatError(f"wasmer.toml: module {name!r} is defined twice")
        modules[name] = module
        content = files.get(sanitize_path(source))
        if content is None:
            raise FormatError(
                f"wasmer.toml: module {name!r} has source {source!r}, which is not in the archive"
            )
        kind = _text(module, "kind", where)
        if kind is None or kind == "wasm":
            kind = WASM_KIND
        elif kind == "tensorflow-SavedModel":
            kind = TENSORFLOW_KIND
        elif not urlsplit(kind).scheme:
            raise FormatError(f"wasmer.toml: module {name!r} has an unknown kind {kind!r}")
        digest = content_sha256(content)
        atoms[name] = {"kind": kind, "signature": "sha256:" + base64.b64encode(digest).decode()}
        atom_bytes[name] = content
        if "bindings" in module:
            bindings.append(_binding(name, _table(module["bindings"], f"{where}.bindings")))
    if atoms:
        manifest["atoms"] = atoms

    commands: dict[str, object] = {}
    for i, command in enumerate(_tables(doc.get("command", []), "[[command]]")):
        where = f"[[command]][{i}]"
        name = _required_text(command, "name", where)
        module_ref = _required_text(command, "module", where)
        dependency, module_name = _split_module_ref(module_ref)
        runner_name = _text(command, "runner", where)
        if runner_name is None:  # a v1 command: the runner follows the module's abi
            local = modules.get(module_name) if dependency is None else None
            abi = local.get("abi", "none") if local is not None else "wasi"
            if not isinstance(abi, str):
                raise FormatError(f"wasmer.toml: module {module_name!r} has a non-string abi")
            runner_name = abi
        runner = _runner_uri(runner_name)
        atom: dict[str, object] = {"name": module_name}
        if dependency is not None:
            atom["dependency"] = dependency
        annotations: dict[str, object] = {"atom": atom}
        if runner in (WASI_RUNNER, WCGI_RUNNER):
            wasi: dict[str, object] = {"atom": module_ref}
            main_args = command.get("main_args")
            if isinstance(main_args, str):
                wasi["main-args"] = main_args.split()
            package_name = _text(command, "package", where)
            if package_name is not None:
                wasi["package"] = package_name
            annotations["wasi"] = wasi
        extra = command.get("annotations")
        if extra is not None:
            for key, given in _table(extra, f"{where}.annotations").items():
                current = annotations.get(key)
                if isinstance(current, dict) and isinstance(given, dict):
                    annotations[key] = {**current, **given}
                else:
                    annotations[key] = given
        if name in commands:
            raise FormatError(f"wasmer.toml: command {name!r} is defined twice")
        commands[name] = {"runner": runner, "annotations": _plain(annotations)}
    if commands:
        manifest["commands"] = commands
    if bindings:
        manifest["bindings"] = bindings

    if entrypoint is None and len(commands) == 1:
        entrypoint = next(iter(commands))
    if entrypoint is not None:
        manifest["entrypoint"] = entrypoint
    return manifest, atom_bytes


def _binding(module: str, spec: dict[str, object]) -> dict[str, object]:
    def metadata_url(path: object) -> str:
        if not isinstance(path, str):
            raise FormatError(f"wasmer.toml: bindings of module {module!r}: paths must be strings")
        return "metadata://" + sanitize_path(path).lstrip("/")

    if "wit-bindgen" in spec:
        return {
            "name": "library-bindings",
            "kind": f"wit@{spec['wit-bindgen']}",
            "annotations": {
                "wit": {
                    "exports": metadata_url(spec.get("wit-exports")),
                    "module": f"atoms://{module}",
                }
            },
        }
    if "wai-version" in spec:
        wai: dict[str, object] = {"module": f"atoms://{module}"}
        if "exports" in spec:
            wai["exports"] = metadata_url(spec["exports"])
        imports = spec.get("imports", [])
        if not isinstance(imports, list):
            raise FormatError(f"wasmer.toml: bindings of module {module!r}: imports must be a list")
        wai["imports"] = [metadata_url(path) for path in imports]
        return {
            "name": "library-bindings",
            "kind": f"wai@{spec['wai-version']}",
            "annotations": {"wai": wai},
        }
    raise FormatError(f"wasmer.toml: bindings of module {module!r} are neither wit nor wai")
