"""SSRF and resource exhaustion through operator file links (review findings H2, H7, L4).

Service level: the meta dispatcher's handler runs in this process with the in-test gRPC fakes
(meta_support), a Graph API double (httpx.MockTransport) and small local HTTP servers standing in for
the portal's file host. The portal is `portal.test` with its REST endpoint on 127.0.0.1; the egress
allow-list lets exactly 127.0.0.1/32 through, so 127.0.0.2 stands in for an internal address.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services" / "meta-ingress" / "tests"))
from meta_ingress.dispatcher.process import MetaDispatcher
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import DispatcherSettings
from meta_support import Fakes, operator_message, start_fakes
from opentelemetry import trace
from zaptrix.clients import Clients
from zaptrix.egress import EgressPolicy, GuardedTransport, HostAllowlist, guarded_client
from zaptrix.kafka import Received
from zaptrix.settings import GrpcClientSettings
from zaptrix.v1 import events_pb2

CAP = 4 * 1024 * 1024  # upload_max_bytes in these tests
CHUNK = b"x" * 65536


@dataclass
class FileServer:
    base: str
    hits: list[str] = field(default_factory=list)


def _serve(host: str) -> FileServer:
    server = FileServer("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.hits.append(self.path)
            if self.path.startswith("/to?u="):  # an allowed host that redirects elsewhere
                self.send_response(302)
                self.send_header("Location", self.path[len("/to?u=") :])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/slow.pdf":  # a slow drip: one byte every 0.1 s
                self.send_response(200)
                self.send_header("Content-Type", "application/pdf")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the fetcher gives up
                    for _ in range(600):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.1)
            elif self.path == "/big.pdf":  # no Content-Length: the size shows only while reading
                self.send_response(200)
                self.send_header("Content-Type", "application/pdf")
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # cut off at the cap
                    for _ in range(3 * CAP // len(CHUNK)):
                        self.wfile.write(CHUNK)
            else:
                body = b"%PDF-1.4 tiny"
                self.send_response(200)
                self.send_header("Content-Type", "application/pdf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((host, 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server.base = f"http://{host}:{httpd.server_address[1]}"
    return server


@pytest.fixture(scope="module")
def portal_files() -> FileServer:
    return _serve("127.0.0.1")


@pytest.fixture(scope="module")
def internal() -> FileServer:
    """An "internal" service the attacker wants to reach (127.0.0.2 is outside the allowed 127.0.0.1/32)."""
    return _serve("127.0.0.2")


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    f = start_fakes()
    yield f
    f.stop()


class Published:
    def __init__(self) -> None:
        self.envelopes: list[events_pb2.Envelope] = []

    async def publish(self, topic: str, envelopes: list[events_pb2.Envelope]) -> None:
        self.envelopes.extend(envelopes)


@dataclass
class Harness:
    dispatcher: MetaDispatcher
    notices: Published
    sends: list[dict[str, Any]]
    uploads: list[int]

    async def deliver(self, env: events_pb2.Envelope) -> None:
        async with asyncio.timeout(30):  # a guard against a hang, not a timing assertion
            rec = Received(env, "b24-to-wa", 0, 0, None, b"", [], 1, trace.INVALID_SPAN)
            await self.dispatcher.messages.on_message(rec, env.operator_message)

    def notice_texts(self) -> list[str]:
        return [e.send_failure.notice for e in self.notices.envelopes]


def _graph() -> tuple[httpx.MockTransport, list[dict[str, Any]], list[int]]:
    sends: list[dict[str, Any]] = []
    uploads: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/media"):
            uploads.append(len(request.read()))
            return httpx.Response(200, json={"id": f"media-{len(uploads)}"})
        import json

        sends.append(json.loads(request.content))
        return httpx.Response(200, json={"messages": [{"id": f"wamid.{uuid.uuid4().hex}"}]})

    return httpx.MockTransport(handler), sends, uploads


async def _resolve(host: str, port: int) -> list[str]:
    """DNS of this test: portal.test's file host is public-looking but internal.portal.test is not."""
    table = {"internal.portal.test": ["10.0.0.7"], "localhost": ["127.0.0.1"]}
    if host in table:
        return table[host]
    raise OSError(f"unknown host {host}")


@pytest.fixture
async def harness(fakes: Fakes) -> AsyncIterator[Harness]:
    fakes.reset()
    settings = DispatcherSettings(  # type: ignore[call-arg]
        environment="test",
        allow_insecure_http=True,
        graph_api_base_url="http://graph.test",
        egress_allow_networks=["127.0.0.1/32"],
        file_host_allowlist=["portal.test"],
        upload_max_bytes=CAP,
        file_fetch_deadline_s=1.5,
        pair_rate_per_s=1000,
        window_precheck=False,
    )
    transport, sends, uploads = _graph()
    graph = GraphClient(settings, transport=transport)
    clients = Clients(GrpcClientSettings(mapper_addr=fakes.addr, token_keeper_addr=fakes.addr))
    published = Published()
    files_http = guarded_client(
        GuardedTransport(
            EgressPolicy.of(["127.0.0.1/32"], allow_http=True), HostAllowlist(), "file", resolver=_resolve
        )
    )
    dispatcher = MetaDispatcher(settings, clients, graph, published, "wa-to-b24", files_http)  # type: ignore[arg-type]
    yield Harness(dispatcher, published, sends, uploads)
    await dispatcher.aclose()
    await graph.aclose()
    await clients.close()


def _message(fakes: Fakes, *files: events_pb2.BitrixFile, text: str = "") -> events_pb2.Envelope:
    conv = fakes.mapper.add_conversation(f"1650555{uuid.uuid4().int % 10**4:04d}")
    return operator_message(conv, text, files=list(files))


def _pdf(name: str, link: str) -> events_pb2.BitrixFile:
    return events_pb2.BitrixFile(name=name, type="file", link=link, mime_type="application/pdf")


async def test_file_link_to_another_host_is_not_fetched(
    harness: Harness, fakes: Fakes, portal_files: FileServer
) -> None:
    port = portal_files.base.rsplit(":", 1)[1]
    before = len(portal_files.hits)
    # localhost is the same machine, but not the portal's host: the link is refused before any request.
    await harness.deliver(_message(fakes, _pdf("a.pdf", f"http://localhost:{port}/other-host.pdf")))
    assert "/other-host.pdf" not in portal_files.hits[before:]
    assert harness.uploads == [] and harness.sends == []
    assert any("a.pdf" in t and "not sent" in t for t in harness.notice_texts())


@pytest.mark.parametrize("target", ["127.0.0.2", "169.254.169.254"])
async def test_redirect_from_the_portal_to_an_internal_address_is_not_followed(
    harness: Harness, fakes: Fakes, portal_files: FileServer, internal: FileServer, target: str
) -> None:
    port = internal.base.rsplit(":", 1)[1]
    secret = f"http://{target}:{port}/latest/meta-data/iam/security-credentials/"
    before = len(internal.hits)
    await harness.deliver(_message(fakes, _pdf("creds.pdf", f"{portal_files.base}/to?u={secret}")))
    assert internal.hits[before:] == []
    assert harness.uploads == [] and harness.sends == []
    assert any("creds.pdf" in t and "not sent" in t for t in harness.notice_texts())


async def test_allowed_name_resolving_to_a_private_address_is_refused(harness: Harness, fakes: Fakes) -> None:
    await harness.deliver(_message(fakes, _pdf("x.pdf", "http://internal.portal.test/x.pdf")))
    assert harness.uploads == [] and harness.sends == []
    assert any("x.pdf" in t and "not sent" in t for t in harness.notice_texts())


async def test_slow_drip_file_is_abandoned_and_becomes_a_notice(
    harness: Harness, fakes: Fakes, portal_files: FileServer
) -> None:
    await harness.deliver(_message(fakes, _pdf("slow.pdf", f"{portal_files.base}/slow.pdf")))
    assert harness.uploads == [] and harness.sends == []
    assert any("slow.pdf" in t and "not sent" in t for t in harness.notice_texts())


async def test_oversized_file_is_refused_without_being_held_in_memory(
    harness: Harness, fakes: Fakes, portal_files: FileServer
) -> None:
    env = _message(fakes, _pdf("big.pdf", f"{portal_files.base}/big.pdf"))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        await harness.deliver(env)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < CAP // 4, f"{peak} bytes held while fetching a file larger than {CAP}"
    assert harness.uploads == [] and harness.sends == []
    assert any("big.pdf" in t and "larger than" in t for t in harness.notice_texts())


async def test_malformed_link_is_one_part_notice_and_the_rest_is_delivered(
    harness: Harness, fakes: Fakes, portal_files: FileServer
) -> None:
    env = _message(
        fakes,
        _pdf("good.pdf", f"{portal_files.base}/good.pdf"),
        _pdf("broken.pdf", "http://[::1"),
        text="both files",
    )
    await harness.deliver(env)
    assert [s["type"] for s in harness.sends] == ["document"]
    assert harness.sends[0]["document"]["caption"] == "both files"
    [notice] = harness.notice_texts()
    assert "broken.pdf" in notice and "not sent" in notice and "rest of the message was delivered" in notice
    assert fakes.mapper.processed[env.event_id].startswith("wamid.")
