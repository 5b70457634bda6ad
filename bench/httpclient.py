"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for paced (open-loop) load.

httpx costs far more CPU per request than the systems under test can spare on a 2-core box, so the
paced senders use this: a fixed pool of persistent connections, Content-Length bodies only (what
Sanic answers), no redirects, no chunked encoding. Only for 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class HttpError(RuntimeError):
    pass


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Pool:
    def __init__(self, host: str, port: int, size: int = 32, timeout_s: float = 10.0) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("benchmarks send load to the loopback interface only")
        self.host = host
        self.port = port
        self.size = size
        self.timeout_s = timeout_s
        self._idle: asyncio.Queue[_Conn | None] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(None)  # a slot; connected lazily

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Conn(reader, writer)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, float]:
        """Returns (status, body, time.time() just before the request was written)."""
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        conn = await self._idle.get()
        try:
            for attempt in (1, 2):  # a kept-alive connection may have been closed by the server
                c = conn if conn is not None else await self._connect()
                conn = c
                sent_at = time.time()
                try:
                    c.writer.write(request)
                    status, payload, close = await asyncio.wait_for(self._read(c), self.timeout_s)
                    if close:
                        c.close()
                        conn = None
                    return status, payload, sent_at
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    # Only a connection that died before any byte of the answer is retried (the server
                    # closed an idle keep-alive connection); the webhook may then arrive twice, which the
                    # duplicate check would show.
                    c.close()
                    conn = None
                    partial = isinstance(exc, asyncio.IncompleteReadError) and bool(exc.partial)
                    if attempt == 2 or partial:
                        raise
            raise AssertionError("unreachable")
        except BaseException:
            if conn is not None:
                conn.close()
            conn = None
            raise
        finally:
            self._idle.put_nowait(conn)

    async def _read(self, conn: _Conn) -> tuple[int, bytes, bool]:
        head = await conn.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"bad status line {lines[0]!r}")
        length = 0
        close = False
        for line in lines[1:]:
            key, _, value = line.partition(":")
            k = key.strip().lower()
            if k == "content-length":
                length = int(value.strip())
            elif k == "transfer-encoding":
                raise HttpError("chunked responses are not supported")
            elif k == "connection" and value.strip().lower() == "close":
                close = True
        payload = await conn.reader.readexactly(length) if length else b""
        return int(parts[1]), payload, close

    async def close(self) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                conn.close()
