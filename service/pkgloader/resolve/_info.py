"""A manifest (as its JSON-safe mapping) → the `PackageInfo` the resolver needs (doc §7).

Works on the raw mapping so that both a parsed package (`Container.manifest.raw`) and the
registry's `webcManifest` JSON string go through the same code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pkgloader.errors import InvalidPackage
from pkgloader.resolve._semver import Version
from pkgloader.resolve._types import (
    Dependency,
    FileSystemMapping,
    PackageId,
    PackageInfo,
    WebcVersion,
)

MAX_MANIFEST_JSON = 8 * 1024 * 1024  # a registry's webcManifest; real ones are a few KiB

#: What v1/v2 packages without an `fs` annotation mount (PackageInfo::from_manifest).
DEFAULT_V2_FILESYSTEM = (FileSystemMapping("atom", "/", "/", None),)


def manifest_from_json(text: str, where: str) -> dict[str, Any]:
    if len(text) > MAX_MANIFEST_JSON:
        raise InvalidPackage(f"{where}: the manifest is larger than {MAX_MANIFEST_JSON} bytes")
    try:
        value = json.loads(text)
    # RecursionError: nested deeper than json's C scanner allows; as malformed as bad syntax.
    except (ValueError, RecursionError) as exc:
        raise InvalidPackage(f"{where}: Unable to deserialize the manifest: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidPackage(f"{where}: the manifest is not a JSON object")
    return value


def named_id(manifest: Mapping[str, Any], where: str) -> PackageId | None:
    """`wapm.name@wapm.version` ("0.0.0" without a version); None without a name."""
    package = manifest.get("package")
    wapm = package.get("wapm") if isinstance(package, dict) else None
    if not isinstance(wapm, dict) or not isinstance(wapm.get("name"), str) or not wapm["name"]:
        return None
    version = wapm.get("version")
    if version is None:
        return PackageId.named(wapm["name"], "0.0.0")
    try:
        return PackageId.named(wapm["name"], str(Version.parse(str(version))))
    except ValueError as exc:
        raise InvalidPackage(f"{where}: {exc}") from None


def package_info(
    id: PackageId, manifest: Mapping[str, Any], webc_version: WebcVersion, where: str
) -> PackageInfo:
    """wasmer's `PackageInfo::from_manifest`; `where` names the package in errors."""
    commands = manifest.get("commands", {})
    if not isinstance(commands, dict):
        raise InvalidPackage(f"{where}: manifest commands must be a map")
    entrypoint = manifest.get("entrypoint")
    if entrypoint is not None and not isinstance(entrypoint, str):
        raise InvalidPackage(f"{where}: manifest entrypoint must be a string")
    return PackageInfo(
        id=id,
        commands=tuple(str(name) for name in commands),
        entrypoint=entrypoint,
        dependencies=_dependencies(manifest.get("use", {}), where),
        filesystem=_filesystem(manifest.get("package", {}), webc_version, where),
        webc_version=webc_version,
    )


def _dependencies(use: object, where: str) -> tuple[Dependency, ...]:
    if not isinstance(use, dict):
        raise InvalidPackage(f"{where}: manifest use must be a map")
    found = []
    for alias, value in use.items():
        if isinstance(value, str):
            found.append(Dependency(str(alias), value))
            continue
        if isinstance(value, dict):
            vendored = named_id(value, where)
            if vendored is not None:
                found.append(Dependency(str(alias), f"{vendored.name}@{vendored.version}"))
                continue
        raise InvalidPackage(
            f"{where}: Unable to determine a package specifier for a vendored dependency "
            f"({alias!r})"
        )
    return tuple(found)


def _filesystem(
    package: object, webc_version: WebcVersion, where: str
) -> tuple[FileSystemMapping, ...]:
    fs = package.get("fs") if isinstance(package, dict) else None
    if fs is None:
        return DEFAULT_V2_FILESYSTEM if webc_version is WebcVersion.V2 else ()
    if not isinstance(fs, list):
        raise InvalidPackage(f"{where}: the fs annotation must be a list")
    mappings = []
    for i, entry in enumerate(fs):
        if not isinstance(entry, dict):
            raise InvalidPackage(f"{where}: fs[{i}] must be a map")
        volume, mount = entry.get("volume_name"), entry.get("mount_path")
        # host_path, with original_path as its serde alias
        original = entry.get("host_path", entry.get("original_path"))
        source = entry.get("from")
        if not isinstance(volume, str) or not isinstance(mount, str):
            raise InvalidPackage(f"{where}: fs[{i}] needs volume_name and mount_path strings")
        if original is not None and not isinstance(original, str):
            raise InvalidPackage(f"{where}: fs[{i}].host_path must be a string")
        if source is not None and not isinstance(source, str):
            raise InvalidPackage(f"{where}: fs[{i}].from must be a string")
        mappings.append(FileSystemMapping(volume, mount, original, source))
    return tuple(mappings)
