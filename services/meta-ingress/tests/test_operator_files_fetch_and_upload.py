"""dispatcher/bitrix_files.py and spool.py in process: the byte budget, streamed uploads, allowed file hosts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from meta_ingress.dispatcher.bitrix_files import BitrixFiles, PartFailed
from meta_ingress.dispatcher.portal_hosts import PortalHosts
from meta_ingress.dispatcher.send_plan import Part
from meta_ingress.dispatcher.sender import Sender
from meta_ingress.dispatcher.spool import ByteBudget
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import DispatcherSettings
from zaptrix.egress import EgressPolicy, GuardedTransport, HostAllowlist, guarded_client
from zaptrix.kafka import TransientError
from zaptrix.v1 import events_pb2

BODY = bytes(range(256)) * 1024  # 256 KiB


async def test_budget_makes_the_excess_wait_until_bytes_are_released() -> None:
    budget = ByteBudget(100)
    order: list[str] = []
    async with budget.reserve(70):
        waiter = asyncio.create_task(_hold(budget, 50, order))
        await asyncio.sleep(0.05)
        assert order == [] and budget.used == 70  # 70 + 50 > 100: still waiting
        order.append("released")
    await waiter
    assert order == ["released", "got 50"] and budget.used == 0


async def _hold(budget: ByteBudget, size: int, order: list[str]) -> None:
    async with budget.reserve(size) as held:
        order.append(f"got {held}")


async def test_a_reservation_larger_than_the_budget_is_capped() -> None:
    budget = ByteBudget(100)
    async with budget.reserve(10_000) as held:
        assert held == 100


@pytest.fixture(scope="module")
def cdn() -> Iterator[str]:
    """The portal redirects to a file CDN (an allowlisted suffix); both stand-ins are this server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/disk/1":
                self.send_response(302)
                self.send_header(
                    "Location", f"http://files.cdn-b24.test:{self.server.server_address[1]}/f.pdf"
                )
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/pdf")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield str(httpd.server_address[1])
    httpd.shutdown()


async def _resolve(host: str, port: int) -> list[str]:
    return {"portal.test": ["127.0.0.1"], "files.cdn-b24.test": ["127.0.0.1"]}[host]


class _Hosts(PortalHosts):
    async def allowlist(self, member_id: str) -> HostAllowlist:
        assert member_id == "member-1"
        return HostAllowlist.of(["portal.test"], self.extra)


def _files(uploads: list[bytes], fail_first: bool = False, **kw: Any) -> BitrixFiles:
    settings = DispatcherSettings(  # type: ignore[call-arg]
        environment="test", allow_insecure_http=True, graph_api_base_url="http://graph.test", **kw
    )

    def handler(request: httpx.Request) -> httpx.Response:
        uploads.append(request.read())
        if fail_first and len(uploads) == 1:
            return httpx.Response(503, json={"error": {"code": 2, "message": "try again"}})
        return httpx.Response(200, json={"id": "media-1"})

    graph = GraphClient(settings, transport=httpx.MockTransport(handler))
    http = guarded_client(
        GuardedTransport(
            EgressPolicy.of(["127.0.0.1/32"], allow_http=True), HostAllowlist(), "file", resolver=_resolve
        )
    )
    return BitrixFiles(
        settings, graph, Sender(settings, graph), http, _Hosts(None, settings.file_host_allowlist)
    )


def _part(link: str) -> Part:
    f = events_pb2.BitrixFile(name="f.pdf", type="file", link=link, mime_type="application/pdf")
    return Part(0, "document", file=f, mime="application/pdf", filename="f.pdf")


async def test_a_redirect_to_an_allowlisted_file_host_is_fetched_and_streamed_whole(cdn: str) -> None:
    uploads: list[bytes] = []
    files = _files(uploads, fail_first=True, file_host_allowlist=["cdn-b24.test"], send_backoff_base_s=0.01)
    ref = await files.media_ref("55", _part(f"http://portal.test:{cdn}/disk/1"), "tok", "member-1")
    await files.aclose()
    assert ref == {"id": "media-1"}
    assert len(uploads) == 2  # the retry sent the spooled file again, from its start
    assert all(BODY in body for body in uploads)
    assert files.budget.used == 0


async def test_without_the_allowlist_the_cdn_hop_is_refused(cdn: str) -> None:
    uploads: list[bytes] = []
    files = _files(uploads)
    with pytest.raises(PartFailed, match="does not point to this Bitrix24 portal"):
        await files.media_ref("55", _part(f"http://portal.test:{cdn}/disk/1"), "tok", "member-1")
    await files.aclose()
    assert uploads == [] and files.budget.used == 0


async def test_link_mode_passes_on_only_the_portals_links() -> None:
    files = _files([], media_send_mode="link")
    link = "http://portal.test/disk/1"
    assert await files.media_ref("55", _part(link), "tok", "member-1") == {"link": link}
    with pytest.raises(PartFailed, match="does not point to this Bitrix24 portal"):
        await files.media_ref("55", _part("https://evil.example/x.pdf"), "tok", "member-1")
    with pytest.raises(PartFailed, match="not allowed"):
        await files.media_ref("55", _part("http://portal.test:8443/x.pdf"), "tok", "member-1")
    await files.aclose()


async def test_busy_download_slots_mean_retry_later_not_file_not_sent() -> None:
    files = _files([], file_fetch_concurrency=1, file_spool_wait_s=0.05)
    await files.slots.acquire()  # another conversation's download holds the only slot
    with pytest.raises(TransientError, match="slots busy"):
        await files.media_ref("55", _part("http://portal.test/disk/1"), "tok", "member-1")
    files.slots.release()
    await files.aclose()
    assert files.budget.used == 0
