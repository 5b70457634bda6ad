"""Meta's webhook envelope, X-Hub-Signature-256 signing and delivery with retries (whatsapp.md A1, A2).

Webhooks leave through a WebhookLane: a semaphore, then a small keep-alive HTTP/1.1 client for a
plain-http gateway (webhook_http.py; httpx for https) with as many connections as the lane's concurrency.
At 80 sends/s the stand-in posts 240 status webhooks/s; through one httpx client each of them queued inside
httpcore's pool, whose scans grow with the queue (PoolTimeout, a starved event loop and late answers to
the sends themselves). Waiting happens in the semaphore instead, in arrival order, and a webhook's timeout
starts when it leaves.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import httpx

from .graph_settings import Channel, GraphOptions
from .graph_state import Delivery, GraphState
from .tasks import Background
from .webhook_http import Answer, PlainHttp, WebhookFailed


def envelope(channel: Channel, value: dict[str, Any], field: str = "messages") -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": channel.waba_id, "changes": [{"value": value, "field": field}]}],
    }


def metadata(channel: Channel) -> dict[str, str]:
    return {"display_phone_number": channel.display_phone_number, "phone_number_id": channel.phone_number_id}


def value_of(channel: Channel, **parts: Any) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "metadata": metadata(channel), **parts}


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: dict[str, Any], ascii_escape: bool) -> bytes:
    return json.dumps(payload, ensure_ascii=ascii_escape, separators=(",", ":")).encode()


class WebhookLane:
    """At most ``concurrency`` webhooks in flight; plain-http gateways through PlainHttp (webhook_http.py),
    https through an httpx client with a pool of as many kept-alive connections."""

    def __init__(self, concurrency: int, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.concurrency = concurrency
        self.plain = PlainHttp(concurrency) if transport is None else None
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=30.0
            ),
            transport=transport,
        )
        self.slots = asyncio.Semaphore(concurrency)

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Answer:
        async with self.slots:
            if self.plain is not None and url.startswith("http://"):
                return await self.plain.post(url, body, headers, timeout_s)
            response = await self.client.post(url, content=body, headers=headers, timeout=timeout_s)
            return Answer(response.status_code, response.text)

    async def aclose(self) -> None:
        if self.plain is not None:
            await self.plain.aclose()
        await self.client.aclose()


class WebhookSender:
    """Posts webhooks to the gateway. The first attempt is awaited (its status is reported to the
    simulator caller); on a non-200 answer Meta-style retries continue in the background."""

    def __init__(self, state: GraphState, lane: WebhookLane, background: Background) -> None:
        self.state = state
        self.lane = lane
        self.background = background

    @property
    def options(self) -> GraphOptions:
        return self.state.options

    def prepare(self, kind: str, payload: dict[str, Any], signature: str = "valid") -> Delivery:
        body = encode(payload, self.options.webhook_ascii_escape)
        good = sign(self.options.app_secret, body)
        headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
        if signature == "valid":
            headers["X-Hub-Signature-256"] = good
            # Meta also sends the legacy SHA-1 header.
            sha1 = hmac.new(self.options.app_secret.encode(), body, hashlib.sha1).hexdigest()
            headers["X-Hub-Signature"] = "sha1=" + sha1
        elif signature == "invalid":
            headers["X-Hub-Signature-256"] = sign(self.options.app_secret + "-wrong", body)
        delivery = Delivery(
            id=self.state.next_id("wh-"),
            kind=kind,
            body=body,
            signature=headers.get("X-Hub-Signature-256", ""),
            headers=headers,
        )
        self.state.deliveries[delivery.id] = delivery
        return delivery

    async def _attempt(self, delivery: Delivery) -> int | None:
        started = time.time()
        record: dict[str, Any] = {
            "attempt": len(delivery.attempts) + 1,
            "at": started,
            "url": self.options.webhook_url,
        }
        try:
            response = await self.lane.post(
                self.options.webhook_url, delivery.body, delivery.headers, self.options.webhook_timeout_s
            )
            record.update(status_code=response.status_code, response=response.text[:2000], error=None)
        except WebhookFailed as exc:
            record.update(status_code=None, response=None, error=str(exc))
        except httpx.HTTPError as exc:
            record.update(status_code=None, response=None, error=f"{type(exc).__name__}: {exc}")
        record["duration_ms"] = round((time.time() - started) * 1000, 1)
        delivery.attempts.append(record)
        status: int | None = record["status_code"]
        return status

    async def _retry(self, delivery: Delivery) -> None:
        for delay in self.options.webhook_retry_delays_s:
            await asyncio.sleep(delay)
            if await self._attempt(delivery) == 200:
                return

    async def deliver(self, delivery: Delivery) -> int | None:
        status = await self._attempt(delivery)
        if status != 200:
            self.background.spawn(self._retry(delivery))
        return status

    async def send(
        self, kind: str, payload: dict[str, Any], signature: str = "valid"
    ) -> tuple[Delivery, int | None]:
        delivery = self.prepare(kind, payload, signature)
        return delivery, await self.deliver(delivery)
