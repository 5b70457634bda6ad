"""Runs both stand-ins as real HTTP servers on free ports, plus a stub gateway that records what they post."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from zaptrix_testing.ports import free_port


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class GatewayStub:
    """Stands in for meta-ingress / bitrix-ingress: records requests, answers with queued status codes."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # next answers; 200 when empty
    files: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)  # path -> (status, type, body)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.received.clear()
            self.statuses.clear()
            self.files.clear()

    def on(self, prefix: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path.startswith(prefix)]

    async def wait_for(self, prefix: str, count: int, within: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            got = self.on(prefix)
            if len(got) >= count:
                return got
            await asyncio.sleep(0.02)
        raise AssertionError(f"expected {count} requests to {prefix}, got {len(self.on(prefix))}")


def _handler(stub: GatewayStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path in stub.files:
                status, ctype, data = stub.files[self.path]
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if self.path.startswith("/media/"):  # files not registered in stub.files do not exist
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with stub.lock:
                stub.received.append(Received(self.command, self.path, dict(self.headers.items()), body))
                status = stub.statuses.pop(0) if stub.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="session")
def stub() -> Iterator[GatewayStub]:
    gateway = GatewayStub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(gateway))
    gateway.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield gateway
    server.shutdown()


def _start(module: str, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{module} exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=0.5).raise_for_status()
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{module} did not start")


@pytest.fixture(scope="session")
def graph_url(stub: GatewayStub, processes: None) -> Iterator[str]:
    port = free_port()
    proc = _start(
        "zaptrix_sandbox.graph",
        {
            "SANDBOX_GRAPH_PORT": str(port),
            "SANDBOX_GRAPH_WEBHOOK_URL": f"{stub.url}/webhooks/meta",
            "SANDBOX_GRAPH_WEBHOOK_RETRY_DELAYS_S": "[0.05, 0.1]",
            "SANDBOX_GRAPH_TEMPLATES": json.dumps(
                [
                    {"name": "hello_world"},
                    {"name": "reopen", "languages": ["de"], "body_params": 1},
                    # test_graph_templates.py
                    {
                        "name": "order_update",
                        "languages": ["en_US", "pt_BR"],
                        "body_params": 2,
                        "header": "TEXT",
                        "header_params": 1,
                    },
                    {"name": "invoice_ready", "body_params": 1, "header": "DOCUMENT"},
                    {
                        "name": "summer_sale",
                        "category": "marketing",
                        "header": "IMAGE",
                        "named_params": ["first_name", "discount"],
                    },
                    {"name": "winter_sale", "category": "marketing", "status": "PAUSED", "quality": "RED"},
                ]
            ),
        },
        port,
    )
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def bitrix_url(stub: GatewayStub, processes: None) -> Iterator[str]:
    port = free_port()
    portals = [
        {},
        {
            "member_id": "sandbox-member-2",
            "domain": "second.bitrix24.com",
            "application_token": "second-app-token",
            "preregistered": False,
        },
    ]
    proc = _start(
        "zaptrix_sandbox.bitrix",
        {
            "SANDBOX_BITRIX_PORT": str(port),
            "SANDBOX_BITRIX_OUTBOUND_URL": f"{stub.url}/webhooks/bitrix24/outbound",
            "SANDBOX_BITRIX_INSTALL_URL": f"{stub.url}/webhooks/bitrix24/install",
            "SANDBOX_BITRIX_PORTALS": json.dumps(portals),
        },
        port,
    )
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def graph(graph_url: str, stub: GatewayStub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=graph_url, timeout=10) as client:
        (await client.post("/_sandbox/reset")).raise_for_status()
        stub.clear()
        yield client


@pytest.fixture
async def bitrix(bitrix_url: str, stub: GatewayStub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=bitrix_url, timeout=10) as client:
        (await client.post("/_sandbox/reset")).raise_for_status()
        stub.clear()
        yield client
