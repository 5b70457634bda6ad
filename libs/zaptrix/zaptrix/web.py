"""Sanic wiring shared by the two web services: SERVER spans, request metrics, /health, /ready, /metrics.

No official OpenTelemetry instrumentation exists for Sanic, so a small middleware opens the SERVER span with
HTTP semantic-convention attributes. These servers face the internet (Meta, Bitrix24, anyone): a caller's
``traceparent``/``tracestate``/``baggage`` is never the parent (it would choose our trace ids, force sampling
and have its baggage copied into Kafka headers). Every request starts a new root span; a valid incoming
span context is only recorded as a span link.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sanic import HTTPResponse, Request, Sanic, json, raw
from sanic.response import BaseHTTPResponse

from zaptrix.health import Check, Probes, always

tracer = trace.get_tracer("zaptrix.web")

HTTP_REQUESTS = Counter("zaptrix_http_requests_total", "HTTP requests", ["route", "method", "status"])
HTTP_SECONDS = Histogram(
    "zaptrix_http_request_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
_UNTRACED = frozenset({"/health", "/ready", "/metrics"})
_ROOT = otel_context.Context()  # empty: no parent span, no baggage
_W3C = TraceContextTextMapPropagator()  # traceparent/tracestate only: incoming baggage is never read


def _remote_link(request: Request) -> list[trace.Link]:
    """The caller's span context (if valid) as a link, so a trace on the caller's side can still be found."""
    header = request.headers.get("traceparent")
    if not header or len(header) > 128:
        return []
    remote = trace.get_current_span(_W3C.extract({"traceparent": header})).get_span_context()
    if not remote.is_valid:
        return []
    return [trace.Link(remote, {"zaptrix.link": "caller"})]


def instrument_sanic(app: Sanic) -> None:  # type: ignore[type-arg]
    async def _start(request: Request) -> None:
        request.ctx.started = time.perf_counter()
        if request.path in _UNTRACED:
            return
        route = request.route.path if request.route else request.path
        span = tracer.start_span(
            f"{request.method} /{route.lstrip('/')}",
            context=_ROOT,
            kind=SpanKind.SERVER,
            links=_remote_link(request),
            attributes={
                "http.request.method": request.method,
                "http.route": f"/{route.lstrip('/')}",
                "url.path": request.path,
                "server.port": request.server_port,
                "user_agent.original": request.headers.get("user-agent", ""),
            },
        )
        request.ctx.span = span
        request.ctx.otel_token = otel_context.attach(trace.set_span_in_context(span, _ROOT))

    async def _finish(request: Request, response: BaseHTTPResponse) -> None:
        route = f"/{request.route.path.lstrip('/')}" if request.route else "unmatched"
        status = response.status if response is not None else 500
        HTTP_REQUESTS.labels(route, request.method, str(status)).inc()
        started = getattr(request.ctx, "started", None)
        if started is not None:
            HTTP_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)
        span = getattr(request.ctx, "span", None)
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        token = getattr(request.ctx, "otel_token", None)
        if token is not None:
            otel_context.detach(token)
            request.ctx.otel_token = None

    app.register_middleware(_start, "request", priority=100)
    app.register_middleware(_finish, "response", priority=100)


def add_ops_routes(
    app: Sanic,  # type: ignore[type-arg]
    service: str,
    checks: Mapping[str, Check],
    ready: Check = always,
) -> Probes:
    """/health (200 while the process serves; the body reports ``checks``), /ready (200 while ``ready``:
    the pod's own state, never its dependencies'; see zaptrix.health) and /metrics."""
    probes = Probes(service, checks, ready=ready)

    async def health(_: Request) -> HTTPResponse:
        status, doc = await probes.health()
        return json(doc, status=status)

    async def ready_route(_: Request) -> HTTPResponse:
        status, doc = await probes.readiness()
        return json(doc, status=status)

    async def metrics(_: Request) -> HTTPResponse:
        await probes.refresh()  # zaptrix_dependency_up as of this scrape
        return raw(generate_latest(), content_type=CONTENT_TYPE_LATEST)

    app.add_route(health, "/health", methods=["GET"], name="health")
    app.add_route(ready_route, "/ready", methods=["GET"], name="ready")
    app.add_route(metrics, "/metrics", methods=["GET"], name="metrics")
    return probes
