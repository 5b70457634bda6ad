"""The stand-in OTLP collector of the ingress scenario's exported variant takes what the SDK's real OTLP/gRPC
exporter sends (the same exporter the services use) and counts every span: a sink that answered without
reading would report export as free."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from zaptrix_testing.ports import free_port

from bench import otlp_sink


async def test_sink_counts_the_spans_the_real_exporter_sends(tmp_path: Path) -> None:
    port = free_port()
    count_file = tmp_path / "spans"
    server = await otlp_sink.start(port, count_file)
    try:
        assert count_file.read_text() == "0"
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True, timeout=10)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")

        def spans(n: int) -> None:
            for i in range(n):
                with tracer.start_as_current_span(f"span {i}"), tracer.start_as_current_span("child"):
                    pass

        await asyncio.to_thread(spans, 3)  # the exporter blocks: off the loop that serves the sink
        assert count_file.read_text() == "6"
        await asyncio.to_thread(provider.shutdown)
    finally:
        await server.stop(None)
