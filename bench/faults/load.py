"""The load of one scenario: customer messages through the Graph stand-in (which signs each webhook and
retries it like Meta) and operator replies through the Bitrix24 stand-in (which posts the event once, as
Bitrix24 does), both open loop: message i is due at t0 + i / rate whatever happened to earlier ones."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass

import httpx

from bench.faults.count import CustomerSent, OperatorSent


@dataclass(frozen=True)
class Customer:
    wa_id: str
    phone_number_id: str
    member_id: str
    chat_id: str  # the external chat id of its Open Lines chat (what operator replies name)


@dataclass
class Load:
    customers: list[CustomerSent]
    operators: list[OperatorSent]


CUSTOMER_TEXT = "{ident} Hallo, ich habe noch eine Frage zu meiner Bestellung"
OPERATOR_TEXT = "{ident} Danke, wir kümmern uns darum"


async def _paced(count: int, duration_s: float, t0: float, one: object) -> list[asyncio.Task[None]]:
    tasks: list[asyncio.Task[None]] = []
    for i in range(count):
        delay = t0 + i * duration_s / max(count, 1) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))  # type: ignore[operator]
    return tasks


async def run_load(
    graph: httpx.AsyncClient,
    bitrix: httpx.AsyncClient,
    customers: list[Customer],
    marker: str,
    messages: int,
    replies: int,
    duration_s: float,
    seed: int = 13,
    concurrency: int = 48,
) -> Load:
    """Sends `messages` customer messages (round-robin over the customers) and `replies` operator replies
    (to customers picked at random) evenly over `duration_s`; returns once every request was answered."""
    rng = random.Random(seed)
    targets = [rng.choice(customers) for _ in range(replies)]
    load = Load([], [])
    gate = asyncio.Semaphore(concurrency)

    async def customer(i: int) -> None:
        c = customers[i % len(customers)]
        item = CustomerSent(f"{marker}-c{i:06d}", time.time())
        load.customers.append(item)
        body = {
            "text": CUSTOMER_TEXT.format(ident=item.ident),
            "phone_number_id": c.phone_number_id,
            "name": "Fault Customer",
        }
        async with gate:
            try:
                resp = await graph.post(f"/_sandbox/customers/{c.wa_id}/messages", json=body, timeout=60)
                resp.raise_for_status()
                item.first_status = resp.json().get("gateway_status")
            except (httpx.HTTPError, ValueError) as exc:
                item.error = f"{type(exc).__name__}: {exc}"[:200]

    async def operator(i: int) -> None:
        c = targets[i]
        item = OperatorSent(f"{marker}-o{i:06d}", time.time(), c.member_id, c.chat_id)
        load.operators.append(item)
        body = {"chat_id": c.chat_id, "text": OPERATOR_TEXT.format(ident=item.ident)}
        async with gate:
            try:
                resp = await bitrix.post(
                    f"/_sandbox/portals/{c.member_id}/operator-messages", json=body, timeout=60
                )
                resp.raise_for_status()
                item.gateway_status = resp.json().get("gateway_status")
                item.error = resp.json().get("error")
            except (httpx.HTTPError, ValueError) as exc:
                item.error = f"{type(exc).__name__}: {exc}"[:200]

    t0 = time.time() + 0.1
    pacers = [
        asyncio.create_task(_paced(messages, duration_s, t0, customer)),
        asyncio.create_task(_paced(replies, duration_s, t0 + 0.05, operator)),
    ]
    tasks: list[asyncio.Task[None]] = []
    try:
        for pacer in pacers:
            tasks += await pacer
        await asyncio.gather(*tasks)
    finally:
        for t in [*pacers, *tasks]:
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pacers, *tasks, return_exceptions=True)
    return load
