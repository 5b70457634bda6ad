"""The tenants of a fault run: two portals, two WhatsApp numbers (one bound to each portal's Open Line) and
many customers who have each written once, so every customer has an Open Lines chat and an open 24-hour
window. The first portal and number are the sandbox's own, seeded by LocalSystem.seed()."""

from __future__ import annotations

import asyncio
import time

import httpx
from zaptrix_testing.seeding import chat_customer

from bench.common import (
    CONNECTOR_ID,
    SANDBOX_APP_SECRET,
    SANDBOX_MEMBER_ID,
    SANDBOX_PHONE_NUMBER_ID,
    SANDBOX_VERIFY_TOKEN,
    SANDBOX_WABA_ID,
    LocalSystem,
)
from bench.faults.load import Customer

SECOND_MEMBER = "faults-member-2"
SECOND_LINE = 2
SECOND_NUMBER = "100000000000002"
SECOND_DISPLAY = "15550000002"
SECOND_TOKEN = "sandbox-wa-token-2"
# Meta retries an unanswered webhook for up to 7 days with growing pauses; the stand-in does it for ~8 min.
META_RETRY_DELAYS_S = [1.0, 2.0, 4.0, 8.0, 15.0, 30.0, *([30.0] * 14)]


async def add_second_tenant(local: LocalSystem, graph: httpx.AsyncClient, bitrix: httpx.AsyncClient) -> None:
    from zaptrix.v1 import mapper_pb2, mapper_pb2_grpc, token_keeper_pb2, token_keeper_pb2_grpc

    spec = {
        "member_id": SECOND_MEMBER,
        "domain": f"{SECOND_MEMBER}.bitrix24.com",
        "application_token": f"{SECOND_MEMBER}-app-token",
        "line_id": SECOND_LINE,
        "preregistered": True,  # connector registered and active on the line, as after the settings step
    }
    resp = await bitrix.post("/_sandbox/portals", json=spec, timeout=30)
    if resp.status_code not in (201, 409):
        raise RuntimeError(f"second portal not added: {resp.text}")
    installed = (await bitrix.post(f"/_sandbox/portals/{SECOND_MEMBER}/install", timeout=60)).json()
    if installed.get("gateway_status") != 200:
        raise RuntimeError(f"second portal's install failed: {installed}")
    number = {
        "phone_number_id": SECOND_NUMBER,
        "display_phone_number": SECOND_DISPLAY,
        "access_token": SECOND_TOKEN,
        "waba_id": SANDBOX_WABA_ID,
    }
    resp = await graph.post("/_sandbox/numbers", json=number, timeout=30)
    if resp.status_code not in (201, 409):
        raise RuntimeError(f"second number not added: {resp.text}")
    async with local.grpc_channel("token-keeper") as channel:
        await token_keeper_pb2_grpc.TokenKeeperStub(channel).UpsertChannelCredentials(
            token_keeper_pb2.UpsertChannelCredentialsRequest(
                phone_number_id=SECOND_NUMBER,
                access_token=SECOND_TOKEN,
                app_secret=SANDBOX_APP_SECRET,  # one Meta app, two numbers: the stand-in signs with one secret
                verify_token=SANDBOX_VERIFY_TOKEN,
                waba_id=SANDBOX_WABA_ID,
            ),
            timeout=10,
        )
    async with local.grpc_channel("mapper") as channel:
        await mapper_pb2_grpc.MapperStub(channel).BindChannel(
            mapper_pb2.BindChannelRequest(
                channel=mapper_pb2.Channel(
                    phone_number_id=SECOND_NUMBER,
                    display_phone_number=SECOND_DISPLAY,
                    member_id=SECOND_MEMBER,
                    line_id=SECOND_LINE,
                    connector_id=CONNECTOR_ID,
                    crm_mode=mapper_pb2.CRM_MODE_GATEWAY,
                    active=True,
                )
            ),
            timeout=10,
        )


def tenants(two: bool) -> list[tuple[str, str]]:
    """(phone_number_id, member_id) of each number and the portal it is bound to."""
    first = (SANDBOX_PHONE_NUMBER_ID, SANDBOX_MEMBER_ID)
    return [first, (SECOND_NUMBER, SECOND_MEMBER)] if two else [first]


async def open_customers(
    graph: httpx.AsyncClient,
    bitrix: httpx.AsyncClient,
    per_number: int,
    two: bool,
    prefix: str = "49176",
    timeout_s: float = 240.0,
) -> list[Customer]:
    """Every customer writes once (through the Graph stand-in, so its window opens there too); returns them
    once each has an Open Lines chat in its number's portal."""
    wanted: dict[str, tuple[str, str]] = {}
    for n, (pnid, member) in enumerate(tenants(two)):
        for i in range(per_number):
            wanted[f"{prefix}{n}{i:06d}"] = (pnid, member)
    gate = asyncio.Semaphore(8)

    async def first(wa_id: str, pnid: str) -> None:
        async with gate:
            body = {"text": "Hallo, ich habe eine Frage.", "phone_number_id": pnid, "name": "Fault Customer"}
            resp = await graph.post(f"/_sandbox/customers/{wa_id}/messages", json=body, timeout=60)
            resp.raise_for_status()

    await asyncio.gather(*(first(w, pnid) for w, (pnid, _) in wanted.items()))
    deadline = time.monotonic() + timeout_s
    while True:
        found: dict[str, Customer] = {}
        for member in {m for _, m in wanted.values()}:
            resp = await bitrix.get(f"/_sandbox/portals/{member}/chats", timeout=60)
            resp.raise_for_status()
            for chat in resp.json()["chats"]:
                wa_id = chat_customer(chat)
                if wa_id in wanted and wanted[wa_id][1] == member:
                    found[wa_id] = Customer(wa_id, wanted[wa_id][0], member, str(chat["external_chat_id"]))
        if len(found) == len(wanted):
            return [found[w] for w in wanted]
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(found)} of {len(wanted)} customers reached an Open Lines chat")
        await asyncio.sleep(1.0)


async def configure_stand_ins(graph: httpx.AsyncClient) -> None:
    """Status webhooks ON (sent, delivered, read per send, as Meta) and Meta-like webhook retries."""
    resp = await graph.post(
        "/_sandbox/config",
        json={"webhook_retry_delays_s": META_RETRY_DELAYS_S, "auto_read": True},
        timeout=30,
    )
    resp.raise_for_status()


__all__ = ["add_second_tenant", "configure_stand_ins", "open_customers", "tenants"]
