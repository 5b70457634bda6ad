"""Seeding the sandbox's WhatsApp channel into a running system, used by dev/localsystem.py (`make run`),
bench/ and tests/e2e: its credentials in token-keeper and its binding to the Open Line in the mapper.

The identities are the dev/sandbox defaults (docs/sandbox.md). Imports no pytest (`make run` uses it).
"""

from __future__ import annotations

from typing import Any

import grpc
from zaptrix.v1 import mapper_pb2, mapper_pb2_grpc, token_keeper_pb2, token_keeper_pb2_grpc

SANDBOX_MEMBER_ID = "sandbox-member-1"
SANDBOX_PHONE_NUMBER_ID = "100000000000001"
SANDBOX_DISPLAY_NUMBER = "15550000001"
SANDBOX_WABA_ID = "200000000000001"
SANDBOX_WA_TOKEN = "sandbox-wa-token"
SANDBOX_APP_SECRET = "sandbox-app-secret"
SANDBOX_VERIFY_TOKEN = "sandbox-verify-token"
SANDBOX_LINE_ID = 1
CONNECTOR_ID = "zaptrix_whatsapp"
SEED_TIMEOUT_S = 10.0


def sandbox_channel(reengagement_template: str = "") -> mapper_pb2.Channel:
    """The sandbox channel's binding (optionally with a re-engagement template, in en_US)."""
    return mapper_pb2.Channel(
        phone_number_id=SANDBOX_PHONE_NUMBER_ID,
        display_phone_number=SANDBOX_DISPLAY_NUMBER,
        member_id=SANDBOX_MEMBER_ID,
        line_id=SANDBOX_LINE_ID,
        connector_id=CONNECTOR_ID,
        crm_mode=mapper_pb2.CRM_MODE_GATEWAY,
        reengagement_template=reengagement_template,
        template_language="en_US" if reengagement_template else "",
        active=True,
    )


async def bind_sandbox_channel(mapper: grpc.aio.Channel, reengagement_template: str = "") -> None:
    """Bind (or re-bind: idempotent) the sandbox channel to the sandbox portal's Open Line."""
    await mapper_pb2_grpc.MapperStub(mapper).BindChannel(
        mapper_pb2.BindChannelRequest(channel=sandbox_channel(reengagement_template)), timeout=SEED_TIMEOUT_S
    )


async def store_sandbox_credentials(token_keeper: grpc.aio.Channel) -> None:
    """Give token-keeper the sandbox channel's Graph API token, app secret and webhook verify token."""
    await token_keeper_pb2_grpc.TokenKeeperStub(token_keeper).UpsertChannelCredentials(
        token_keeper_pb2.UpsertChannelCredentialsRequest(
            phone_number_id=SANDBOX_PHONE_NUMBER_ID,
            access_token=SANDBOX_WA_TOKEN,
            app_secret=SANDBOX_APP_SECRET,
            verify_token=SANDBOX_VERIFY_TOKEN,
            waba_id=SANDBOX_WABA_ID,
        ),
        timeout=SEED_TIMEOUT_S,
    )


async def seed_sandbox_channel(mapper: grpc.aio.Channel, token_keeper: grpc.aio.Channel) -> None:
    """Credentials first: once bound, the channel's webhooks are accepted and must verify."""
    await store_sandbox_credentials(token_keeper)
    await bind_sandbox_channel(mapper)


def chat_customer(chat: dict[str, Any]) -> str:
    """The customer of a chat in the Bitrix24 stand-in: the number we gave as user.phone, else user.id (the
    user.id is the conversation's opaque key; conversations from before identity aliases used the number)."""
    user = chat.get("user") or {}
    return str(user.get("phone") or "").lstrip("+") or str(user.get("id", ""))
