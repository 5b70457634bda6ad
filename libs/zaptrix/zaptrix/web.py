"""Sanic wiring shared by the two web services: SERVER spans, request metrics, /health, /ready, /metrics.

No official OpenTelemetry instrumentation exists for Sanic, so every route's handler is wrapped (at server
start, once all routes exist) to open the SERVER span with HTTP semantic-convention attributes and count
the request. A wrapper, not request/response middleware: Sanic runs each middleware through its signal
machinery, which cost more than the span itself (docs/benchmarks.md). Requests that never reach a handler
(404, 405, a body over the limit, an unreadable request) are counted and get their span from Sanic's
``http.lifecycle.exception`` signal.

These servers face the internet (Meta, Bitrix24, anyone): a caller's ``traceparent``/``tracestate``/``baggage``
is never the parent (it would choose our trace ids, force sampling and have its baggage copied into Kafka
headers). Every request starts a new root span; a valid incoming span context is only recorded as a span link.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from inspect import isawaitable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sanic import HTTPResponse, Request, Sanic, json, raw
from sanic.exceptions import SanicException

from zaptrix.health import Check, Probes, always
from zaptrix.telemetry import LazyTracer

tracer = LazyTracer("zaptrix.web")

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
_CHILDREN_MAX = 512  # cached metric children; the method label comes from the request line

Handler = Callable[..., Any]


def _remote_link(request: Request) -> list[trace.Link]:
    """The caller's span context (if valid) as a link, so a trace on the caller's side can still be found."""
    header = request.headers.get("traceparent")
    if not header or len(header) > 128:
        return []
    remote = trace.get_current_span(_W3C.extract({"traceparent": header})).get_span_context()
    if not remote.is_valid:
        return []
    return [trace.Link(remote, {"zaptrix.link": "caller"})]


_counters: dict[tuple[str, str, int], Any] = {}
_timers: dict[tuple[str, str], Any] = {}


def _count(route: str, method: str, status: int, seconds: float | None) -> None:
    """zaptrix_http_requests_total and _seconds, through cached children (.labels() costs a lock each)."""
    counter = _counters.get((route, method, status))
    if counter is None:
        counter = HTTP_REQUESTS.labels(route, method, str(status))
        if len(_counters) < _CHILDREN_MAX:
            _counters[(route, method, status)] = counter
    counter.inc()
    if seconds is not None:
        timer = _timers.get((route, method))
        if timer is None:
            timer = HTTP_SECONDS.labels(route, method)
            if len(_timers) < _CHILDREN_MAX:
                _timers[(route, method)] = timer
        timer.observe(seconds)


def _start_span(request: Request, route: str) -> trace.Span:
    return tracer().start_span(
        f"{request.method} {route}",
        context=_ROOT,
        kind=SpanKind.SERVER,
        links=_remote_link(request),
        attributes={
            "http.request.method": request.method,
            "http.route": route,
            "url.path": request.path,
            "server.port": request.conn_info.server_port if request.conn_info else 0,
            "user_agent.original": request.headers.get("user-agent", ""),
        },
    )


def _end_span(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def _status_of(exc: BaseException) -> int:
    """The status Sanic's error handler answers for an exception."""
    return exc.status_code if isinstance(exc, SanicException) else 500


def _traced(handler: Handler, route: str, traced: bool) -> Handler:
    """The handler inside its SERVER span (unless an ops route), counted and timed."""

    @functools.wraps(handler)  # copies Sanic's markers (is_stream, ...) with __dict__
    async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        request.ctx.zaptrix_counted = True  # _on_exception must not count it again
        span = token = None
        if traced:
            span = _start_span(request, route)
            token = otel_context.attach(trace.set_span_in_context(span, _ROOT))
        status = 500
        try:
            response = handler(request, *args, **kwargs)
            if isawaitable(response):
                response = await response
            if response is None:  # a streamed answer: request.respond() already sent the headers
                response = getattr(request.stream, "response", None)
            status = response.status if response is not None else 500
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code): no answer was sent
            raise
        except Exception as exc:
            status = _status_of(exc)
            raise
        finally:
            _count(route, request.method, status, time.perf_counter() - started)
            if span is not None:
                _end_span(span, status)
            if token is not None:
                otel_context.detach(token)

    wrapper.__zaptrix_traced__ = True  # type: ignore[attr-defined]
    return wrapper


async def _on_exception(request: Request | None, exception: BaseException) -> None:
    """A request that never reached a handler (no route, wrong method, body too large, unreadable): count it
    and give it its (short) SERVER span, as the handled ones get."""
    if request is None or getattr(request.ctx, "zaptrix_counted", False):
        return
    request.ctx.zaptrix_counted = True
    route = f"/{request.route.path.lstrip('/')}" if request.route else "unmatched"
    status = _status_of(exception)
    method = request.method or "?"
    _count(route, method, status, None)
    if request.path not in _UNTRACED:
        _end_span(_start_span(request, route), status)


def instrument_sanic(app: Sanic) -> None:  # type: ignore[type-arg]
    """Wrap every route's handler when the server starts (after every add_route) and count the requests
    that never reach one."""

    def wrap_routes(app: Sanic) -> None:  # type: ignore[type-arg]
        for route in app.router.routes:
            if getattr(route.handler, "__zaptrix_traced__", False):
                continue  # a second start of the same app (tests)
            path = f"/{route.path.lstrip('/')}"
            route.handler = _traced(route.handler, path, path not in _UNTRACED)

    app.before_server_start(wrap_routes)
    app.signal("http.lifecycle.exception")(_on_exception)


def add_ops_routes(
    app: Sanic,  # type: ignore[type-arg]
    service: str,
    checks: Mapping[str, Check],
    ready: Check = always,
    live: Check = always,
) -> Probes:
    """/health (200 while the process serves and ``live``; the body reports ``checks``), /ready (200 while
    ``ready``: the pod's own state, never its dependencies'; see zaptrix.health) and /metrics."""
    probes = Probes(service, checks, ready=ready, live=live)

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
