"""A tiny HTTP server for processes without a web framework (dispatchers): /health, /ready, /metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from zaptrix.health import Check, Probes, always


async def serve_ops(
    port: int,
    service: str,
    checks: Mapping[str, Check],
    ready: Check = always,
    live: Check = always,
    host: str = "0.0.0.0",
) -> asyncio.Server:
    """/health (``live``; the body reports ``checks``), /ready (``ready``) and /metrics; see zaptrix.health."""
    probes = Probes(service, checks, ready=ready, live=live)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode(errors="replace").split()
            path = parts[1].split("?", 1)[0] if len(parts) > 1 else "/"
            if path == "/metrics":
                await probes.refresh()  # zaptrix_dependency_up as of this scrape
                status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest()
            elif path in ("/health", "/ready"):
                status, doc = await (probes.health() if path == "/health" else probes.readiness())
                ctype, body = "application/json", json.dumps(doc).encode()
            else:
                status, ctype, body = 404, "text/plain", b"not found"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host=host, port=port)
