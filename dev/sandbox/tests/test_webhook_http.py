"""The stand-in's small keep-alive client for plain-http webhooks (webhook_http.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from zaptrix_sandbox.webhook_http import PlainHttp, WebhookFailed


@dataclass
class Gateway:
    """An asyncio HTTP/1.1 server: records each request's body, answers with ``answer(n)`` bytes."""

    answer: Callable[[int], bytes]
    connections: int = 0
    bodies: list[bytes] = field(default_factory=list)
    close_after_each: bool = False
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                self.bodies.append(await reader.readexactly(length))
                writer.write(self.answer(len(self.bodies)))
                await writer.drain()
                if self.close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Gateway], Awaitable[Gateway]]]:
    servers: list[asyncio.Server] = []

    async def start(gateway: Gateway) -> Gateway:
        server = await asyncio.start_server(gateway.handle, "127.0.0.1", 0)
        servers.append(server)
        gateway.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/webhooks/meta"
        return gateway

    yield start
    for server in servers:
        server.close()


def ok(_: int) -> bytes:
    return b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


async def test_requests_share_one_kept_alive_connection(
    serve: Callable[[Gateway], Awaitable[Gateway]],
) -> None:
    gateway = await serve(Gateway(ok))
    client = PlainHttp(4)
    answers = [
        await client.post(gateway.url, f"body-{i}".encode(), {"X-Hub-Signature-256": "s"}, 5.0)
        for i in range(5)
    ]
    await client.aclose()
    assert [(a.status_code, a.text) for a in answers] == [(200, '{"ok":true}')] * 5
    assert gateway.bodies == [f"body-{i}".encode() for i in range(5)]
    assert gateway.connections == 1


async def test_a_connection_the_gateway_closed_is_replaced_and_each_webhook_sent_once(
    serve: Callable[[Gateway], Awaitable[Gateway]],
) -> None:
    gateway = await serve(Gateway(ok, close_after_each=True))
    client = PlainHttp(4)
    for i in range(3):
        await asyncio.sleep(0.05)  # the gateway has closed the idle connection by now
        assert (await client.post(gateway.url, f"b{i}".encode(), {}, 5.0)).status_code == 200
    await client.aclose()
    assert gateway.bodies == [b"b0", b"b1", b"b2"]


async def test_chunked_and_error_answers(serve: Callable[[Gateway], Awaitable[Gateway]]) -> None:
    def chunked(n: int) -> bytes:
        if n == 1:
            return b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbad \r\n3\r\nsig\r\n0\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    gateway = await serve(Gateway(chunked))
    client = PlainHttp(2)
    first = await client.post(gateway.url, b"x", {}, 5.0)
    second = await client.post(gateway.url, b"y", {}, 5.0)
    await client.aclose()
    assert (first.status_code, first.text) == (401, "bad sig")
    assert (second.status_code, second.text) == (200, "")
    assert gateway.connections == 1


async def test_no_answer_in_time_and_no_gateway_are_failures() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    server = await asyncio.start_server(never, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PlainHttp(2)
    with pytest.raises(WebhookFailed, match="ReadTimeout"):
        await client.post(f"http://127.0.0.1:{port}/w", b"x", {}, 0.2)
    server.close()
    await server.wait_closed()
    with pytest.raises(WebhookFailed):  # nothing listens there any more: connection refused
        await client.post(f"http://127.0.0.1:{port}/w", b"x", {}, 1.0)
    await client.aclose()
