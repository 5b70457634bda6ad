"""OpenTelemetry set-up: one TracerProvider per process, OTLP export, official instrumentations.

The SDK reads the standard variables itself: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER(_ARG). Spans are exported only when an OTLP endpoint is
configured (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or an exporter is passed in.

aiokafka's official instrumentation is deliberately not enabled: its send wrapper injects a second
traceparent header and its consumer span ends before the handler runs, so zaptrix.kafka creates the
PRODUCER and CONSUMER spans itself (with messaging semantic conventions) and propagates W3C context.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span

_configured = False


class LazyTracer:
    """A module's tracer, resolved on first use after the SDK provider is set.

    ``trace.get_tracer()`` at import time (before setup_telemetry) returns a ProxyTracer, which re-checks the
    global provider and adds a call on every span (a hot path: two spans per webhook). The global provider
    can be set only once, so the real tracer is cached as soon as it exists."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tracer: trace.Tracer | None = None

    def __call__(self) -> trace.Tracer:
        if self._tracer is not None:
            return self._tracer
        tracer = trace.get_tracer(self.name)
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            self._tracer = tracer
        return tracer


def setup_telemetry(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """Configure tracing once per process and instrument grpc (aio), asyncpg and httpx.

    A second call (or a provider set up earlier, e.g. by a test) reuses the installed SDK provider and only
    adds the given exporter to it."""
    global _configured
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        provider = current
    else:
        resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)})
        provider = TracerProvider(resource=resource)
        trace.set_tracer_provider(provider)
        if exporter is None and (
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        ):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if not _configured:
        _instrument_libraries()
        _configured = True
    return provider


def _instrument_libraries() -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]
    GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    HTTPXClientInstrumentor().instrument(request_hook=_strip_query, async_request_hook=_strip_query_async)


def _without_query(url: object) -> str:
    text = str(url)
    return text.split("?", 1)[0]


def _strip_query(span: Span, request: Any) -> None:
    """Query strings may carry credentials (Bitrix24 `auth=`, OAuth refresh parameters): never record them."""
    if span.is_recording():
        url = _without_query(request.url)
        span.set_attribute("url.full", url)
        span.set_attribute("http.url", url)


async def _strip_query_async(span: Span, request: Any) -> None:
    _strip_query(span, request)


def shutdown_telemetry() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis=5000)
        provider.shutdown()
