"""zaptrix.web wraps each route's handler: one SERVER span per request (never for the ops routes), the
request counted by route, method and status, also when the handler raises and when no handler is reached."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import count
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sanic import HTTPResponse, Request, Sanic, text
from zaptrix.web import HTTP_REQUESTS, add_ops_routes, instrument_sanic
from zaptrix_testing.ports import free_port

_apps = count()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app: Sanic = Sanic(f"web_instrumentation_{next(_apps)}", configure_logging=False)  # type: ignore[type-arg]
    app.config.REQUEST_MAX_SIZE = 1000
    app.config.TOUCHUP = False  # Sanic rewrites its request path once per process, not per test app
    app.config.MOTD = False
    instrument_sanic(app)
    add_ops_routes(app, "test", checks={})

    async def ok(request: Request, item: str) -> HTTPResponse:
        current = trace.get_current_span().get_span_context()
        return text(format(current.trace_id, "032x"))

    async def boom(request: Request) -> HTTPResponse:
        raise RuntimeError("a bug")

    app.add_route(ok, "/items/<item:str>", methods=["POST"], name="ok")
    app.add_route(boom, "/boom", methods=["GET"], name="boom")
    port = free_port()
    server: Any = await app.create_server(host="127.0.0.1", port=port, return_asyncio_server=True)
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            yield http
    finally:
        await server.before_stop()
        await server.close()
        await server.after_stop()


def _count(route: str, method: str, status: str) -> float:
    return float(HTTP_REQUESTS.labels(route, method, status)._value.get())


async def test_a_handled_request_is_one_server_span_and_counted(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    before = _count("/items/<item:str>", "POST", "200")
    resp = await client.post("/items/a", content=b"x", headers={"user-agent": "meta"})
    assert resp.status_code == 200
    assert _count("/items/<item:str>", "POST", "200") == before + 1
    server = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(server) == 1
    span = server[0]
    assert span.name == "POST /items/<item:str>"
    assert resp.text == format(span.context.trace_id, "032x")  # the handler runs inside the span
    assert span.parent is None
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["url.path"] == "/items/a"
    assert span.attributes["user_agent.original"] == "meta"


async def test_a_raising_handler_is_counted_as_500_with_an_error_span(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    before = _count("/boom", "GET", "500")
    assert (await client.get("/boom")).status_code == 500
    assert _count("/boom", "GET", "500") == before + 1
    (span,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert span.status.status_code == StatusCode.ERROR


async def test_requests_that_reach_no_handler_are_counted_and_traced(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    unmatched, too_large = _count("unmatched", "GET", "404"), _count("/items/<item:str>", "POST", "413")
    assert (await client.get("/nowhere")).status_code == 404
    assert (await client.post("/items/a", content=b"x" * 5000)).status_code == 413
    assert _count("unmatched", "GET", "404") == unmatched + 1
    assert _count("/items/<item:str>", "POST", "413") == too_large + 1
    statuses = sorted(
        int(str((s.attributes or {})["http.response.status_code"]))
        for s in spans.get_finished_spans()
        if s.kind == SpanKind.SERVER
    )
    assert statuses == [404, 413]


async def test_ops_routes_are_counted_but_not_traced(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    before = _count("/health", "GET", "200")
    assert (await client.get("/health")).status_code == 200
    assert _count("/health", "GET", "200") == before + 1
    assert not spans.get_finished_spans()
