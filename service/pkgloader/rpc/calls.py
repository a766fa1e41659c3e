"""`CallRecord`: what one RPC did, typed, in one object.

The interceptor opens a record per call and makes it the current one (a `ContextVar`, as grpc's
interceptor examples carry per-call state); the servicer fills in what the call did (package,
hash, source, bytes sent); at the end the access log line and the metrics both read the same
record. No string-keyed dict is shared between them, so renaming a field fails in mypy instead
of silently zeroing a counter.

grpcio's sync server runs a handler, and each step of a streaming handler's generator, on a
worker thread whose context is not the one the call started in; the interceptor therefore runs
the handler (and every `next()` of its generator) inside the call's own `contextvars.Context`,
where `current()` is this call's record (see `CallInterceptor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class CallRecord:
    """One RPC: who asked, what it touched, how it ended. Empty/None fields are not logged."""

    method: str
    request_id: str
    #: the call's invocation metadata (auth reads the token from it)
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: "reader" or "admin" when client auth is on (the role the token grants)
    role: str = ""
    package_id: str = ""
    sha256: str = ""
    specifier: str = ""
    #: the tier a Load or contents call was served from (`policy.Source` values)
    source: str = ""
    #: the package's size, whether or not its bytes were sent
    package_bytes: int | None = None
    #: content bytes streamed to the client (0 for metadata-only calls)
    sent_bytes: int = 0
    #: LoadTree: packages in the tree
    packages: int | None = None
    #: ValidateCache / Retain results
    mismatches: int | None = None
    invalid_packages: int | None = None
    removed_files: int | None = None
    #: a failed call's message and `google.rpc.ErrorInfo` reason
    error: str = ""
    reason: str = ""
    #: the call's trace and span (W3C trace context, hex), written by the tracing hook
    trace_id: str = ""
    span_id: str = ""
    #: set when the call ends: the status code's name and the seconds it took
    code: str = "OK"
    seconds: float = 0.0

    def log_fields(self) -> dict[str, Any]:
        """The access log line's fields (names are the log's contract; empty ones left out)."""
        fields: dict[str, Any] = {
            "method": self.method,
            "status": self.code,
            "duration_ms": round(self.seconds * 1e3, 3),
            "request_id": self.request_id,
        }
        if self.role:
            fields["role"] = self.role
        if self.package_id:
            fields["package_id"] = self.package_id
        if self.sha256:
            fields["sha256"] = self.sha256
        if self.specifier:
            fields["specifier"] = self.specifier
        if self.source:
            fields["source"] = self.source
        if self.package_bytes is not None:
            fields["bytes"] = self.package_bytes
        if self.sent_bytes:
            fields["sent_bytes"] = self.sent_bytes
        if self.packages is not None:
            fields["packages"] = self.packages
        if self.mismatches is not None:
            fields["mismatches"] = self.mismatches
        if self.invalid_packages is not None:
            fields["invalid_packages"] = self.invalid_packages
        if self.removed_files is not None:
            fields["removed_files"] = self.removed_files
        if self.error:
            fields["error"] = self.error
        if self.reason:
            fields["reason"] = self.reason
        if self.trace_id:
            fields["trace_id"] = self.trace_id
            fields["span_id"] = self.span_id
        return fields


_CURRENT: ContextVar[CallRecord | None] = ContextVar("pkgloader_call", default=None)


def current() -> CallRecord:
    """The running call's record. Outside an intercepted call (a servicer driven directly),
    a fresh record that nothing reads, so the servicer never needs to ask."""
    record = _CURRENT.get()
    return record if record is not None else CallRecord(method="", request_id="")


def current_or_none() -> CallRecord | None:
    """The running call's record, or None outside an intercepted call."""
    return _CURRENT.get()


def bind(record: CallRecord) -> None:
    """Make `record` the current one in the running context (the interceptor calls this inside
    the call's own `contextvars.Context`, so it never needs undoing)."""
    _CURRENT.set(record)
