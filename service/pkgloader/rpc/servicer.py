"""`PackageLoaderServicer`: proto in, domain call, proto out. Nothing else happens here."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from pkgloader_client import PackageLoaderServiceServicer, pb

from pkgloader import formats
from pkgloader.cache.disk import Entry
from pkgloader.errors import InvalidRequest
from pkgloader.hashes import WebcHash
from pkgloader.loader import LoadRequest, LoadResult, PackageLoader, StoredPackage
from pkgloader.maintenance import CacheMaintenance, RetainCriteria
from pkgloader.policy import HashPolicy, Source

CHUNK = 1024 * 1024  # the contract: content chunks of at most 1 MiB
SCAN_BATCH = 1000
MAX_LIST = 100_000  # hashes per Retain/Evict list; far beyond a real cache, bounds the work

_POLICIES = {
    pb.HASH_VALIDATION_UNSPECIFIED: None,
    pb.HASH_VALIDATION_NONE: HashPolicy.NONE,
    pb.HASH_VALIDATION_WARN: HashPolicy.WARN,
    pb.HASH_VALIDATION_FAIL: HashPolicy.FAIL,
}
_SOURCES = {
    Source.MEMORY: pb.SOURCE_MEMORY,
    Source.DISK: pb.SOURCE_DISK,
    Source.DOWNLOAD: pb.SOURCE_DOWNLOAD,
}


class PackageLoaderServicer(PackageLoaderServiceServicer):
    def __init__(self, loader: PackageLoader, maintenance: CacheMaintenance) -> None:
        self._loader = loader
        self._maintenance = maintenance

    def Load(
        self, request: pb.LoadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LoadResponse]:
        dist = request.summary.dist
        log = _log_fields(context)
        log.update(package_id=request.summary.package_id[:200], sha256=dist.webc_sha256[:64])
        result = self._loader.load(
            LoadRequest(
                url=dist.webc_url,
                sha256=dist.webc_sha256,
                package_id=request.summary.package_id,
                policy=_enum(_POLICIES, request.hash_validation, "hash_validation"),
                size_hint=dist.webc_size if dist.HasField("webc_size") else None,
            ),
            alive=context.is_active,
        )
        log.update(source=result.source.value, bytes=result.package.size)
        yield pb.LoadResponse(package=_package(result, request.summary.package_id))
        if request.include_content:
            for chunk in result.package.chunks(CHUNK):
                yield pb.LoadResponse(chunk=chunk)
            log["sent_bytes"] = result.package.size

    def ValidateCache(
        self, request: pb.ValidateCacheRequest, context: grpc.ServicerContext
    ) -> pb.ValidateCacheResponse:
        mode = _enum(
            {
                pb.CACHE_VALIDATION_UNSPECIFIED: False,
                pb.CACHE_VALIDATION_WARN: False,
                pb.CACHE_VALIDATION_PRUNE: True,
            },
            request.mode,
            "mode",
        )
        report = self._maintenance.validate(prune=bool(mode), deep=request.deep)
        return pb.ValidateCacheResponse(
            mismatches=[
                pb.HashMismatch(
                    source=m.name,
                    expected_sha256=m.expected,
                    actual_sha256=m.actual,
                    pruned=m.pruned,
                )
                for m in report.mismatches
            ],
            invalid_packages=[
                pb.InvalidPackage(
                    source=b.name, webc_sha256=b.sha256, problems=b.problems, pruned=b.pruned
                )
                for b in report.invalid
            ],
            checked_files=report.checked_files,
            checked_bytes=report.checked_bytes,
        )

    def Scan(
        self, request: pb.ScanRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ScanResponse]:
        size = request.batch_size or SCAN_BATCH
        batch: list[pb.CacheEntry] = []
        for entry in self._maintenance.scan():
            batch.append(self._entry(entry))
            if len(batch) >= size:
                yield pb.ScanResponse(entries=batch)
                batch = []
        if batch:
            yield pb.ScanResponse(entries=batch)

    def Retain(self, request: pb.RetainRequest, context: grpc.ServicerContext) -> pb.RetainResponse:
        unused_for = None
        if request.HasField("unused_for"):
            unused_for = _seconds(request.unused_for, "unused_for")
            if unused_for < 0:
                raise InvalidRequest("unused_for must not be negative")
        outcome = self._maintenance.retain(
            RetainCriteria(
                keep=_hashes(request.keep_sha256, "keep_sha256"),
                remove=_hashes(request.remove_sha256, "remove_sha256"),
                unused_for=unused_for,
                max_total_bytes=(
                    request.max_total_bytes if request.HasField("max_total_bytes") else None
                ),
                dry_run=request.dry_run,
            )
        )
        return pb.RetainResponse(
            removed=[self._entry(e) for e in outcome.removed],
            kept_files=outcome.kept_files,
            kept_bytes=outcome.kept_bytes,
            removed_bytes=outcome.removed_bytes,
        )

    def Evict(self, request: pb.EvictRequest, context: grpc.ServicerContext) -> pb.EvictResponse:
        delete = _enum(
            {
                pb.EVICT_SCOPE_UNSPECIFIED: False,
                pb.EVICT_SCOPE_MEMORY: False,
                pb.EVICT_SCOPE_ALL: True,
            },
            request.scope,
            "scope",
        )
        hashes = [WebcHash(h) for h in sorted(_hashes(request.webc_sha256, "webc_sha256"))]
        evicted, deleted = self._maintenance.evict(hashes, delete=bool(delete))
        return pb.EvictResponse(evicted=evicted, deleted=deleted)

    def _entry(self, entry: Entry) -> pb.CacheEntry:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(int(entry.last_used * 1e9))
        return pb.CacheEntry(
            webc_sha256=entry.hash.hex,
            size=entry.size,
            last_used=stamp,
            in_memory=self._maintenance.in_memory(entry.hash.hex),
            cache_path=entry.name,
        )


# google.protobuf.Duration's documented range is ±10,000 years; beyond it ToTimedelta overflows.
_MAX_DURATION_SECONDS = 315_576_000_000


def _seconds(duration: duration_pb2.Duration, name: str) -> float:
    if abs(duration.seconds) > _MAX_DURATION_SECONDS or abs(duration.nanos) > 999_999_999:
        raise InvalidRequest(
            f"{name} is out of range: a Duration holds at most {_MAX_DURATION_SECONDS} seconds "
            "and 999999999 nanoseconds"
        )
    return duration.seconds + duration.nanos / 1e9


def _log_fields(context: grpc.ServicerContext) -> dict[str, Any]:
    call = getattr(context, "pkgloader_call", None)
    return call.fields if call is not None else {}


def _enum(table: Mapping[Any, Any], value: int, name: str) -> Any:
    if value not in table:
        raise InvalidRequest(f"unknown {name} value {value}")
    return table[value]


def _hashes(values: Any, name: str) -> frozenset[str]:
    if len(values) > MAX_LIST:
        raise InvalidRequest(f"{name} lists {len(values)} hashes; at most {MAX_LIST} are accepted")
    return frozenset(WebcHash.parse(v).hex for v in values)


def _package(result: LoadResult, package_id: str) -> pb.Package:
    meta = _metadata(result.package)
    package = pb.Package(
        webc_sha256=result.package.hash.hex,
        size=result.package.size,
        source=_SOURCES[result.source],
        cache_path=result.package.cache_name or "",
        warnings=result.warnings,
        package_id=package_id,
    )
    package.MergeFrom(meta)
    return package


def _metadata(stored: StoredPackage) -> pb.Package:
    """format, manifest and volumes: immutable per package, so built once and kept with it."""
    cached = stored.memo.get("pb_metadata")
    if cached is None:
        container = stored.container
        cached = pb.Package(
            format=container.format,
            manifest=_manifest(container.manifest, container),
            volumes=[
                pb.Volume(name=name, files=volume.file_count, bytes=volume.total_bytes)
                for name, volume in container.volumes().items()
            ],
        )
        stored.memo["pb_metadata"] = cached
    return cached


def _manifest(manifest: formats.Manifest, container: formats.Container) -> pb.Manifest:
    message = pb.Manifest(
        commands=[
            pb.Command(name=c.name, runner=c.runner, annotations=_struct(c.annotations))
            for c in manifest.commands
        ],
        atoms=[
            pb.Atom(
                name=a.name,
                kind=a.kind,
                signature=a.signature,
                size=a.size,
                annotations=_struct(a.annotations),
            )
            for a in manifest.atoms
        ],
        dependencies=[pb.Dependency(alias=d.alias, spec=d.spec) for d in manifest.dependencies],
        package=_struct(manifest.package),
        bindings=[
            pb.Binding(name=b.name, kind=b.kind, annotations=_value(b.annotations))
            for b in manifest.bindings
        ],
    )
    if manifest.entrypoint is not None:
        message.entrypoint = manifest.entrypoint
    return message


def _struct(data: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if isinstance(data, dict):
        struct.update(data)
    return struct


def _value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if data is None:
        value.null_value = struct_pb2.NULL_VALUE
    else:
        holder = struct_pb2.Struct()
        holder.update({"v": data})
        value.CopyFrom(holder.fields["v"])
    return value
