"""OpenTelemetry tracing, wired from the standard `OTEL_*` variables only (no setting of ours).

On when `OTEL_TRACES_EXPORTER`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not true), off otherwise.
Off, nothing of the SDK is built and `from_env` returns None: the gRPC server gets no tracing
interceptor, the HTTP client no instrumentation, and the core's spans (`traces`) are no-ops.

The rest is the SDK's own reading of the environment: the sampler (`OTEL_TRACES_SAMPLER`, `_ARG`),
the batch processor (`OTEL_BSP_*`), the resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`),
the exporter's endpoint, headers, timeout, compression and certificates (`OTEL_EXPORTER_OTLP_*`),
the propagators (`OTEL_PROPAGATORS`, W3C tracecontext and baggage by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx
from grpc import aio
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span

from pkgloader import __version__, traces
from pkgloader.settings import SettingsError

#: The variables any one of which turns tracing on.
SWITCHES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
PROTOCOLS = ("grpc", "http/protobuf")


class TracingConfigError(SettingsError):
    """An `OTEL_*` variable names something this server cannot do (a configuration error, as
    a bad PKGLOADER_* setting is)."""


@dataclass
class Tracing:
    """The tracer provider and what hooks it into the server (built only when tracing is on)."""

    provider: TracerProvider

    def server_interceptor(self) -> aio.ServerInterceptor[Any, Any]:
        """The maintained grpc instrumentation (its asyncio server interceptor): a SERVER span
        per call, continuing the caller's `traceparent` and `baggage` from the metadata."""
        return aio_server_interceptor(tracer_provider=self.provider)  # type: ignore[no-untyped-call, no-any-return]

    def instrument(self, client: httpx.Client) -> None:
        """A CLIENT span per upstream request (registry and downloads), its URL cut to what is
        safe to keep."""
        HTTPXClientInstrumentor.instrument_client(
            client, tracer_provider=self.provider, request_hook=_safe_url
        )

    def start(self) -> None:
        """Send the core's spans through this provider."""
        traces.enable(self.provider.get_tracer("pkgloader", __version__))

    def shutdown(self) -> None:
        """Export what is queued, then stop the exporter's thread (and the core's spans)."""
        traces.enable(None)
        self.provider.shutdown()


def enabled(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in SWITCHES)


def from_env() -> Tracing | None:
    """Tracing as the environment asks, or None when it is off. Raises `TracingConfigError`
    for an exporter or protocol this server does not have."""
    if not enabled():
        return None
    names = [
        n.strip().lower()
        for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if n.strip()
    ]
    exporters = [_exporter(name) for name in names if name != "none"]
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        # Neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES named it.
        resource = resource.merge(Resource({SERVICE_NAME: "pkgloader"}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
    return Tracing(provider)


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER names {name!r}; this server exports with otlp or console"
        )
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"  # the specification's default
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    raise TracingConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL is {protocol!r}; this server speaks {' or '.join(PROTOCOLS)}"
    )


def safe_url(url: httpx.URL) -> str:
    """scheme://host[:port]/path: no user info, no query string, no fragment."""
    return str(url.copy_with(userinfo=b"", query=None, fragment=None))


def _safe_url(span: Span, request: Any) -> None:
    # The instrumentation records the full URL (only a few signature parameters redacted);
    # a query string may hold a token, so the attribute is overwritten before export.
    if span.is_recording():
        safe = safe_url(httpx.URL(request.url))
        span.set_attributes({"http.url": safe, "url.full": safe})
