"""More tenants for a scenario: extra Bitrix24 portals (each installed through the real ONAPPINSTALL flow
of bitrix-ingress) and extra WhatsApp numbers (credentials in token-keeper, bound to a portal's Open Line in
the mapper), through the same APIs as LocalSystem.seed() and bench/faults/world.py; and signed webhooks
for a given number. The sandbox portal and number (seeded by LocalSystem.seed()) are tenant 0."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from bench.common import (
    CONNECTOR_ID,
    SANDBOX_APP_SECRET,
    SANDBOX_DISPLAY_NUMBER,
    SANDBOX_LINE_ID,
    SANDBOX_MEMBER_ID,
    SANDBOX_PHONE_NUMBER_ID,
    SANDBOX_VERIFY_TOKEN,
    SANDBOX_WABA_ID,
    LocalSystem,
)
from bench.webhooks import encode, sample_text, sign, text_message_payload

UNLIMITED = {"rate_limit_drain_per_s": 100000.0, "rate_limit_burst": 100000.0}


@dataclass(frozen=True)
class Tenant:
    """One WhatsApp number and the portal (and Open Line) it is bound to."""

    phone_number_id: str
    display_phone_number: str
    member_id: str
    line_id: int = SANDBOX_LINE_ID


SANDBOX = Tenant(SANDBOX_PHONE_NUMBER_ID, SANDBOX_DISPLAY_NUMBER, SANDBOX_MEMBER_ID)


def portal_tenant(i: int) -> Tenant:
    """Tenant i >= 1 of the portals axis: its own portal with its own number."""
    return Tenant(f"10000000011{i:04d}", f"155511{i:05d}", f"bench-portal-{i:03d}")


def number_tenant(i: int) -> Tenant:
    """Tenant i >= 1 of the numbers axis: another number on the sandbox portal's Open Line."""
    return Tenant(f"10000000022{i:04d}", f"155522{i:05d}", SANDBOX_MEMBER_ID)


async def add_portal(
    bitrix: httpx.AsyncClient, member_id: str, limits: dict[str, float] | None = None
) -> None:
    """A new portal in the Bitrix24 stand-in (connector registered and active on line 1, as after the
    app's settings step), installed through bitrix-ingress (ONAPPINSTALL, verified like any install)."""
    spec = {
        "member_id": member_id,
        "domain": f"{member_id}.bitrix24.com",
        "application_token": f"{member_id}-app-token",
        "line_id": SANDBOX_LINE_ID,
        "preregistered": True,
        **(limits or {}),
    }
    resp = await bitrix.post("/_sandbox/portals", json=spec, timeout=30)
    if resp.status_code not in (201, 409):
        raise RuntimeError(f"portal {member_id} not added: {resp.text}")
    installed = (await bitrix.post(f"/_sandbox/portals/{member_id}/install", timeout=60)).json()
    if installed.get("gateway_status") != 200:
        raise RuntimeError(f"install of portal {member_id} failed: {installed}")


async def add_numbers(local: LocalSystem, tenants: Sequence[Tenant]) -> None:
    """Credentials in token-keeper (one Meta app: the sandbox app secret signs every number's webhooks)
    and the binding to the tenant's portal and line in the mapper, for each number."""
    from zaptrix.v1 import mapper_pb2, mapper_pb2_grpc, token_keeper_pb2, token_keeper_pb2_grpc

    async with local.grpc_channel("token-keeper") as tk, local.grpc_channel("mapper") as mp:
        keeper = token_keeper_pb2_grpc.TokenKeeperStub(tk)
        mapper = mapper_pb2_grpc.MapperStub(mp)
        for t in tenants:
            await keeper.UpsertChannelCredentials(
                token_keeper_pb2.UpsertChannelCredentialsRequest(
                    phone_number_id=t.phone_number_id,
                    access_token=f"bench-token-{t.phone_number_id}",
                    app_secret=SANDBOX_APP_SECRET,
                    verify_token=SANDBOX_VERIFY_TOKEN,
                    waba_id=SANDBOX_WABA_ID,
                ),
                timeout=10,
            )
            await mapper.BindChannel(
                mapper_pb2.BindChannelRequest(
                    channel=mapper_pb2.Channel(
                        phone_number_id=t.phone_number_id,
                        display_phone_number=t.display_phone_number,
                        member_id=t.member_id,
                        line_id=t.line_id,
                        connector_id=CONNECTOR_ID,
                        crm_mode=mapper_pb2.CRM_MODE_GATEWAY,
                        active=True,
                    )
                ),
                timeout=10,
            )


async def add_tenants(
    local: LocalSystem, bitrix: httpx.AsyncClient, tenants: Sequence[Tenant], parallel: int = 4
) -> None:
    """New portals first (installed), then the numbers bound to them. Tenants whose portal is the sandbox
    portal only get their number."""
    gate = asyncio.Semaphore(parallel)

    async def portal(member: str) -> None:
        async with gate:
            await add_portal(bitrix, member, UNLIMITED)

    await asyncio.gather(*(portal(m) for m in sorted({t.member_id for t in tenants} - {SANDBOX_MEMBER_ID})))
    await add_numbers(local, tenants)


def signed_webhook(tenant: Tenant, wa_id: str, message_id: str, n: int) -> tuple[bytes, str]:
    """A text message from `wa_id` to the tenant's number, signed like Meta's (the sandbox app secret)."""
    payload = text_message_payload(wa_id, message_id, sample_text(n))
    payload["entry"][0]["changes"][0]["value"]["metadata"] = {
        "display_phone_number": tenant.display_phone_number,
        "phone_number_id": tenant.phone_number_id,
    }
    body = encode(payload)
    return body, sign(body)
