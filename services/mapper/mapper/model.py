"""The mapper's records as plain typed values (what the repository returns and the servicer converts)."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class CrmMode(StrEnum):
    GATEWAY = "gateway"  # the gateway finds (by phone) or creates the CRM contact
    OPEN_LINE = "open_line"  # the Open Line's own CRM tracker does it


class Direction(StrEnum):
    INBOUND = "inbound"  # customer -> operator
    OUTBOUND = "outbound"  # operator -> customer


# Statuses move forward only: a later webhook for an earlier state (Meta does not order its status
# webhooks) never overwrites a later one. "failed" is terminal.
WHATSAPP_STATUSES: tuple[str, ...] = ("accepted", "sent", "delivered", "read", "failed")
BITRIX_STATUSES: tuple[str, ...] = ("delivered", "read", "failed")


_DIGITS = re.compile(r"[0-9]+")
_ALNUM = re.compile(r"[A-Za-z0-9]+")


def external_chat_id(phone_number_id: str, wa_id: str) -> str:
    """The chat.id we give Bitrix24 for a conversation: stable, and only letters, digits and underscores.

    The readable form ``wa_<phone_number_id>_<wa_id>`` is used when phone_number_id is digits and wa_id
    letters/digits (every id Meta issues today). It is injective because phone_number_id holds no
    underscore. Anything else (e.g. a future business-scoped user id with punctuation) becomes
    ``wa_x_<32 hex of sha256>``; "x" is not a digit, so the two forms never collide. The value is stored
    with the conversation, so a later change of this rule never changes an existing chat's id.
    """
    if _DIGITS.fullmatch(phone_number_id) and _ALNUM.fullmatch(wa_id):
        return f"wa_{phone_number_id}_{wa_id}"
    digest = hashlib.sha256(f"{phone_number_id}\0{wa_id}".encode()).hexdigest()[:32]
    return f"wa_x_{digest}"


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    phone_number_id: str
    display_phone_number: str
    member_id: str
    line_id: int
    connector_id: str
    crm_mode: CrmMode
    reengagement_template: str | None
    template_language: str | None
    active: bool


@dataclass(frozen=True, slots=True)
class ChannelBinding(ChannelSpec):
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Conversation:
    id: uuid.UUID
    phone_number_id: str
    wa_id: str
    member_id: str
    external_chat_id: str
    bitrix_contact_id: str | None
    bitrix_chat_id: str | None
    contact_name: str | None
    last_message_at: datetime | None
    last_customer_message_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ConversationUpdate:
    """None leaves a field unchanged; "" clears it. Timestamps only move forward."""

    id: uuid.UUID
    bitrix_contact_id: str | None = None
    bitrix_chat_id: str | None = None
    contact_name: str | None = None
    last_message_at: datetime | None = None
    last_customer_message_at: datetime | None = None

    @property
    def changes_anything(self) -> bool:
        return any(
            v is not None
            for v in (
                self.bitrix_contact_id,
                self.bitrix_chat_id,
                self.contact_name,
                self.last_message_at,
                self.last_customer_message_at,
            )
        )


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A link to record. member_id / bitrix_chat_id None: taken from the conversation."""

    wamid: str
    conversation_id: uuid.UUID
    direction: Direction
    member_id: str | None
    bitrix_message_id: str | None
    bitrix_chat_id: str | None
    whatsapp_status: str | None
    bitrix_status: str | None


@dataclass(frozen=True, slots=True)
class MessageLink:
    wamid: str
    conversation_id: uuid.UUID
    direction: Direction
    member_id: str
    bitrix_message_id: str | None
    bitrix_chat_id: str | None
    whatsapp_status: str | None
    bitrix_status: str | None
    created_at: datetime
    updated_at: datetime
