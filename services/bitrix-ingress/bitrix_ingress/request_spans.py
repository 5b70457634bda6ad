"""Spans of the REST requests that carry events: one per event, linked to the request's own span."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from bitrix_ingress import delivery as dl
from bitrix_ingress.work import LOGGER

tracer = trace.get_tracer(LOGGER)


@contextlib.contextmanager
def request_spans(calls: list[dl.Call]) -> Iterator[None]:
    """Each event's trace gets a span named after the method that carried it (``bitrix24
    imconnector.send.messages``); the HTTP request itself (a batch or a single call) runs inside the
    first event's span, and every event's span links to it."""
    owned = [(call.method, item.owner) for call in calls for item in call.items]
    if not owned:
        yield
        return
    request_name = "bitrix24 " + (calls[0].method if len(calls) == 1 else "batch")
    attributes = {"zaptrix.bitrix.calls": len(calls), "zaptrix.bitrix.items": len(owned)}
    spans = [
        tracer.start_span(
            f"bitrix24 {method}",
            context=trace.set_span_in_context(work.rec.span),
            kind=SpanKind.INTERNAL,
            attributes={
                **attributes,
                "zaptrix.bitrix.method": method,
                "zaptrix.event_id": work.rec.envelope.event_id,
            },
        )
        for method, work in owned
    ]
    try:
        with tracer.start_as_current_span(
            request_name,
            context=trace.set_span_in_context(spans[0]),
            kind=SpanKind.INTERNAL,
            links=[Link(span.get_span_context()) for span in spans[1:129]],
            attributes=attributes,
        ) as request_span:
            for span in spans:
                span.add_link(request_span.get_span_context())
            yield
    finally:
        for span in spans:
            span.end()
