"""The mapper's records as plain typed values (what the repository returns and the servicer converts)."""

from __future__ import annotations

import secrets
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


def new_external_chat_id() -> str:
    """The chat.id we give Bitrix24 for a new conversation: ``wa_`` + 32 random hex digits (128 bits).

    Random, not derived from anything: an operator event names a chat by this id, so it must not be
    computable from a phone_number_id and a customer's phone number. Only letters, digits and one
    underscore (Bitrix24-safe). It never equals an id of the earlier derived forms, which all have a
    second underscore (``wa_<phone_number_id>_<wa_id>``, ``wa_x_<hex>``); those stay valid for their
    conversations (the value is stored), and every lookup by chat id is scoped by portal anyway.
    """
    return f"wa_{secrets.token_hex(16)}"


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
    # The customer's current identity (identity_aliases): phone only when known; the BSUID is the one the
    # customer has now. bitrix_user_id is the user.id Bitrix24 knows (never changes).
    customer_phone: str | None = None
    customer_user_id: str | None = None
    customer_parent_user_id: str | None = None
    customer_username: str | None = None
    bitrix_user_id: str = ""


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


CONSENT_VALUES: tuple[str, ...] = ("stop", "resume")


@dataclass(frozen=True, slots=True)
class Consent:
    """The latest user_preferences change of a customer on a channel, for one category."""

    phone_number_id: str
    wa_id: str
    category: str
    value: str  # stop | resume
    detail: str
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class ChannelActivity:
    """What a number has been doing (the connector settings page's health panel)."""

    phone_number_id: str
    last_inbound_at: datetime | None
    last_outbound_at: datetime | None
    open_windows: int
    conversations: int
