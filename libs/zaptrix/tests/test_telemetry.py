from __future__ import annotations

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from zaptrix.telemetry import _strip_query


def test_query_strings_with_credentials_never_reach_spans(spans: InMemorySpanExporter) -> None:
    request = httpx.Request("GET", "https://portal.example/rest/profile.json?auth=SECRET-TOKEN&x=1")
    with trace.get_tracer("t").start_as_current_span("GET") as span:
        span.set_attribute("url.full", str(request.url))
        _strip_query(span, request)
    finished: ReadableSpan = spans.get_finished_spans()[-1]
    assert finished.attributes is not None
    assert finished.attributes["url.full"] == "https://portal.example/rest/profile.json"
    assert "SECRET-TOKEN" not in str(dict(finished.attributes))


def test_a_lazy_tracer_made_before_setup_records_to_the_sdk_provider(spans: InMemorySpanExporter) -> None:
    from opentelemetry.sdk.trace import Tracer
    from zaptrix.telemetry import LazyTracer

    lazy = LazyTracer("zaptrix.test")  # as a module does at import, possibly before setup_telemetry
    tracer = lazy()
    assert isinstance(tracer, Tracer)  # the SDK's, not a ProxyTracer re-checking the provider per span
    assert lazy() is tracer
    tracer.start_span("lazy").end()
    assert spans.get_finished_spans()[-1].name == "lazy"
