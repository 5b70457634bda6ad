"""A stand-in OTLP/gRPC trace collector for the benchmarks: takes every export, keeps nothing, counts spans.

The services export their spans to it as they would to Jaeger's OTLP port, so a scenario can show what
export costs the exporting process (the BatchSpanProcessor thread encodes each span) without building and
running Jaeger. The count of spans received goes to ``--count-file`` after every export, so the scenario
can compare it with the requests it sent (the SDK drops spans when its queue is full).

    python -m bench.otlp_sink --port 14317 --count-file /tmp/spans
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, count_file: Path) -> None:
        self.count_file = count_file
        self.spans = 0

    def note(self) -> None:
        """The count so far, for the scenario (a few bytes, once per export batch of up to 512 spans)."""
        self.count_file.write_text(str(self.spans))

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        self.note()
        return trace_service_pb2.ExportTraceServiceResponse()


async def start(port: int, count_file: Path) -> grpc.aio.Server:
    """The sink listening on 127.0.0.1:``port``."""
    server = grpc.aio.server()
    sink = Sink(count_file)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    sink.note()  # the file's existence says it listens
    return server


async def serve(port: int, count_file: Path) -> None:
    await (await start(port, count_file)).wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.count_file))


if __name__ == "__main__":
    main()
