"""The core's spans, through the OpenTelemetry API only (the SDK is wired in by `tracing`).

Off (no tracer enabled, the default) every helper here returns at once: a shared no-op context
manager, None, nothing, so the warm path pays a function call per span and no context switch.
On, spans go to the tracer `enable` was given. The core never sees an exporter or a sampler.

Names and attributes are part of the operations contract (docs/operations.md, "Tracing").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

# Span names: one per step of a Load (children of the RPC's server span) and per tree package.
MEMORY = "pkgloader.memory"  # the memory tier lookup
DISK = "pkgloader.disk"  # the disk tier lookup and open (or waiting for a shared promotion)
DOWNLOAD = "pkgloader.download"  # one shared download, on the loader's download thread
DECODE = "pkgloader.decode"  # undoing Content-Encoding as the body streams
PUBLISH = "pkgloader.publish"  # the final hash, and publishing under it in the disk cache
PARSE = "pkgloader.parse"  # opening the package (webc v1/v2/v3, tar.gz)
TREE_PACKAGE = "pkgloader.tree.package"  # one package of a LoadTree

# Attributes.
SHA256 = "pkgloader.package.sha256"  # the package's sha256, lowercase hex
TIER = "pkgloader.source"  # where a Load's package came from: memory, disk, download
BYTES = "pkgloader.bytes"  # the package's (decoded) size
UPSTREAM = "pkgloader.upstream.authority"  # host[:port] of the URL; never a path or query
HIT = "pkgloader.hit"  # whether a lookup found the package
PACKAGE_ID = "pkgloader.package.id"  # a tree package's id (namespace/name@version)
CODINGS = "pkgloader.content_encoding"  # the codings a DECODE span undid

Attributes = dict[str, Any] | None

_tracer: trace.Tracer | None = None
_OFF: AbstractContextManager[None] = contextlib.nullcontext()


def enable(tracer: trace.Tracer | None) -> None:
    """Send the core's spans to `tracer` (None: turn them off)."""
    global _tracer
    _tracer = tracer


def on() -> bool:
    return _tracer is not None


def span(
    name: str, attributes: Attributes = None, parent: otel_context.Context | None = None
) -> AbstractContextManager[trace.Span | None]:
    """A span, current while the block runs, child of the current span (or of `parent`)."""
    tracer = _tracer
    if tracer is None:
        return _OFF
    return tracer.start_as_current_span(name, context=parent, attributes=attributes)


def start(
    name: str, parent: otel_context.Context | None, attributes: Attributes = None
) -> trace.Span | None:
    """A span that is NOT made current (the caller ends it), child of `parent`."""
    tracer = _tracer
    if tracer is None:
        return None
    return tracer.start_span(name, context=parent, attributes=attributes)


def current() -> otel_context.Context | None:
    """The caller's context, to continue on another thread (None when off)."""
    return None if _tracer is None else otel_context.get_current()


@contextlib.contextmanager
def attached(parent: otel_context.Context | None) -> Iterator[None]:
    """Run the block in `parent` (a context from `current` on another thread)."""
    if parent is None:
        yield
        return
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


def annotate(attributes: dict[str, Any]) -> None:
    """Set attributes on the current span (the RPC's, or a tree package's)."""
    if _tracer is not None:
        trace.get_current_span().set_attributes(attributes)


def link(target: trace.Span | None) -> None:
    """Link the current span to `target` (a shared download this caller waited for)."""
    if _tracer is not None and target is not None:
        trace.get_current_span().add_link(target.get_span_context())


def spanned(name: str, chunks: Iterable[bytes], attributes: Attributes = None) -> Iterator[bytes]:
    """`chunks` as they are, inside a span that ends with the stream and records the bytes it
    yielded. Never made current: a generator suspended with a context attached would leave it
    attached to whatever its consumer runs between chunks."""
    opened = start(name, None, attributes)
    if opened is None:
        yield from chunks
        return
    size = 0
    try:
        for chunk in chunks:
            size += len(chunk)
            yield chunk
    except Exception as exc:
        opened.record_exception(exc)
        opened.set_status(trace.StatusCode.ERROR, type(exc).__name__)
        raise
    finally:
        opened.set_attribute(BYTES, size)
        opened.end()
