"""A small HTTP/1.1 keep-alive client for the stand-in's webhooks to a plain-http gateway.

At 80 sends/s the Graph stand-in posts 240 status webhooks/s from the same Python process that answers the
sends. httpx spends several milliseconds of CPU on each (a py-spy profile: ~40 % of the stand-in's time in
httpcore's pool assigning requests to connections and checking each connection for expiry), which is what
starved the stand-in. This writes the request bytes on a kept-alive connection and reads the answer
(Content-Length, chunked, or until close), nothing else: one fixed set of connections per gateway, never
more requests on a connection than one at a time. https URLs keep using httpx (graph_webhooks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_ANSWER = 1 << 20  # a gateway's answer is small; never buffer more


class WebhookFailed(Exception):
    """No usable answer (connection refused or lost, timeout, malformed answer)."""


@dataclass(frozen=True)
class Answer:
    status_code: int
    text: str


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class PlainHttp:
    """Connections per (host, port), at most ``size`` each; callers bound their own concurrency."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: dict[tuple[str, int], list[_Conn]] = {}

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Answer:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"plain http only: {url}")
        host, port = parts.hostname, parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        try:
            return await asyncio.wait_for(self._exchange((host, port), request), timeout_s)
        except TimeoutError as exc:
            raise WebhookFailed(f"ReadTimeout: no answer within {timeout_s:g} s") from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise WebhookFailed(f"{type(exc).__name__}: {exc}") from exc

    async def _exchange(self, key: tuple[str, int], request: bytes) -> Answer:
        idle = self._idle.setdefault(key, [])
        reused = bool(idle)
        conn = idle.pop() if idle else await self._connect(key)
        try:
            try:
                conn.writer.write(request)
                await conn.writer.drain()
                status, text, keep = await self._read(conn)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                # A kept-alive connection the gateway closed meanwhile, before any byte of an answer:
                # once more on a new one (Meta may deliver a webhook twice too).
                partial = isinstance(exc, asyncio.IncompleteReadError) and bool(exc.partial)
                if not reused or partial:
                    raise
                conn.close()
                conn = await self._connect(key)
                conn.writer.write(request)
                await conn.writer.drain()
                status, text, keep = await self._read(conn)
        except BaseException:
            conn.close()
            raise
        if keep and len(idle) < self.size:
            idle.append(conn)
        else:
            conn.close()
        return Answer(status, text)

    @staticmethod
    async def _connect(key: tuple[str, int]) -> _Conn:
        reader, writer = await asyncio.open_connection(*key)
        return _Conn(reader, writer)

    @staticmethod
    async def _read(conn: _Conn) -> tuple[int, str, bool]:
        head = (await conn.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status_line = head[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[1].isdigit() or not status_line[0].startswith("HTTP/1."):
            raise ValueError(f"bad status line {head[0][:80]!r}")
        fields: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name:
                fields[name.strip().lower()] = value.strip()
        keep = status_line[0] == "HTTP/1.1" and fields.get("connection", "").lower() != "close"
        if "content-length" in fields:
            length = int(fields["content-length"])
            if not 0 <= length <= MAX_ANSWER:
                raise ValueError(f"answer of {length} bytes")
            payload = await conn.reader.readexactly(length)
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            payload = await _read_chunked(conn.reader)
        else:  # the body ends when the gateway closes the connection
            payload = await conn.reader.read(MAX_ANSWER)
            keep = False
        return int(status_line[1]), payload.decode(errors="replace"), keep

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(out)
        if len(out) + size > MAX_ANSWER:
            raise ValueError("chunked answer too large")
        out += await reader.readexactly(size)
        await reader.readexactly(2)
