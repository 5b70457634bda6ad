"""Protobuf <-> model conversions, with the input validation that makes bad requests INVALID_ARGUMENT."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from zaptrix import identity
from zaptrix.v1 import mapper_pb2 as pb

from mapper.errors import InvalidArgument
from mapper.identity import Identity
from mapper.ledger import COUNTED_STATUSES, Priced
from mapper.model import (
    BITRIX_STATUSES,
    CONSENT_VALUES,
    WHATSAPP_STATUSES,
    ChannelActivity,
    ChannelBinding,
    ChannelSpec,
    Consent,
    Conversation,
    ConversationUpdate,
    CrmMode,
    Direction,
    LinkSpec,
    MessageLink,
)

MAX_ID = 256  # ids from Meta and Bitrix24 are far shorter; this stops abuse, not real data
MAX_TEXT = 1024  # contact names, template names
MAX_RESULT = 4096  # what a dedupe record remembers
# Timestamps only move forward, so one from a broken clock would freeze a field: refuse far-future ones.
MAX_CLOCK_SKEW = timedelta(days=1)

_CRM_FROM_PB = {
    pb.CRM_MODE_UNSPECIFIED: CrmMode.GATEWAY,
    pb.CRM_MODE_GATEWAY: CrmMode.GATEWAY,
    pb.CRM_MODE_OPEN_LINE: CrmMode.OPEN_LINE,
}
_CRM_TO_PB = {CrmMode.GATEWAY: pb.CRM_MODE_GATEWAY, CrmMode.OPEN_LINE: pb.CRM_MODE_OPEN_LINE}
_DIRECTION_FROM_PB = {pb.DIRECTION_INBOUND: Direction.INBOUND, pb.DIRECTION_OUTBOUND: Direction.OUTBOUND}
_DIRECTION_TO_PB = {v: k for k, v in _DIRECTION_FROM_PB.items()}


# --- input -----------------------------------------------------------------------------------------


def checked(value: str, field: str, max_len: int) -> str:
    if len(value) > max_len:
        raise InvalidArgument(f"{field} is longer than {max_len} characters")
    if "\x00" in value:
        raise InvalidArgument(f"{field} contains a NUL character")
    return value


def required(value: str, field: str, max_len: int = MAX_ID) -> str:
    if not value.strip():
        raise InvalidArgument(f"{field} is required")
    return checked(value, field, max_len)


def present(request: Message, name: str) -> Any:
    """The sub-message `name` of the request, which must be set."""
    if not request.HasField(name):
        raise InvalidArgument(f"{name} is required")
    return getattr(request, name)


def optional(value: str, field: str, max_len: int = MAX_ID) -> str | None:
    """Empty means absent."""
    return checked(value, field, max_len) if value.strip() else None


def conversation_id(value: str, field: str = "id") -> uuid.UUID:
    required(value, field)
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not a uuid") from exc


def timestamp(ts: Timestamp, field: str) -> datetime:
    try:
        value = ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(f"{field} is not a valid timestamp") from exc
    if value > datetime.now(UTC) + MAX_CLOCK_SKEW:
        raise InvalidArgument(f"{field} is more than {MAX_CLOCK_SKEW} in the future")
    return value


def status(value: str, field: str, vocabulary: tuple[str, ...]) -> str:
    if value not in vocabulary:
        raise InvalidArgument(f"{field} must be one of {', '.join(vocabulary)}")
    return value


def channel_spec(c: pb.Channel) -> ChannelSpec:
    crm_mode = _CRM_FROM_PB.get(c.crm_mode)
    if crm_mode is None:
        raise InvalidArgument(f"unknown crm_mode {c.crm_mode}")
    if c.line_id <= 0:
        raise InvalidArgument("line_id must be a positive Open Line id")
    template = optional(c.reengagement_template, "reengagement_template", MAX_TEXT)
    language = optional(c.template_language, "template_language", 32)
    if template is not None and language is None:
        raise InvalidArgument("template_language is required with reengagement_template")
    return ChannelSpec(
        phone_number_id=required(c.phone_number_id, "phone_number_id"),
        display_phone_number=checked(c.display_phone_number, "display_phone_number", 64),
        member_id=required(c.member_id, "member_id"),
        line_id=c.line_id,
        connector_id=required(c.connector_id, "connector_id"),
        crm_mode=crm_mode,
        reengagement_template=template,
        template_language=language,
        active=c.active,
    )


def conversation_update(r: pb.UpdateConversationRequest) -> ConversationUpdate:
    return ConversationUpdate(
        id=conversation_id(r.id),
        bitrix_contact_id=checked(r.bitrix_contact_id, "bitrix_contact_id", MAX_ID)
        if r.HasField("bitrix_contact_id")
        else None,
        bitrix_chat_id=checked(r.bitrix_chat_id, "bitrix_chat_id", MAX_ID)
        if r.HasField("bitrix_chat_id")
        else None,
        contact_name=checked(r.contact_name, "contact_name", MAX_TEXT)
        if r.HasField("contact_name")
        else None,
        last_message_at=timestamp(r.last_message_at, "last_message_at")
        if r.HasField("last_message_at")
        else None,
        last_customer_message_at=timestamp(r.last_customer_message_at, "last_customer_message_at")
        if r.HasField("last_customer_message_at")
        else None,
    )


def link_spec(link: pb.MessageLink) -> LinkSpec:
    direction = _DIRECTION_FROM_PB.get(link.direction)
    if direction is None:
        raise InvalidArgument("direction must be DIRECTION_INBOUND or DIRECTION_OUTBOUND")
    wa = optional(link.whatsapp_status, "whatsapp_status")
    b24 = optional(link.bitrix_status, "bitrix_status")
    return LinkSpec(
        wamid=required(link.wamid, "wamid"),
        conversation_id=conversation_id(link.conversation_id, "conversation_id"),
        direction=direction,
        member_id=optional(link.member_id, "member_id"),
        bitrix_message_id=optional(link.bitrix_message_id, "bitrix_message_id"),
        bitrix_chat_id=optional(link.bitrix_chat_id, "bitrix_chat_id"),
        whatsapp_status=None if wa is None else status(wa, "whatsapp_status", WHATSAPP_STATUSES),
        bitrix_status=None if b24 is None else status(b24, "bitrix_status", BITRIX_STATUSES),
    )


def status_update(r: pb.UpdateMessageStatusRequest) -> tuple[str, str | None, str | None]:
    wa = (
        status(r.whatsapp_status, "whatsapp_status", WHATSAPP_STATUSES)
        if r.HasField("whatsapp_status")
        else None
    )
    b24 = status(r.bitrix_status, "bitrix_status", BITRIX_STATUSES) if r.HasField("bitrix_status") else None
    return required(r.wamid, "wamid"), wa, b24


def priced(r: pb.UpdateMessageStatusRequest, now: datetime) -> Priced | None:
    """The request's pricing for the cost ledger, or None: only a delivered or read status is counted
    (Meta bills delivery; the dispatcher may send pricing with any status, the mapper decides)."""
    if not r.HasField("pricing") or not r.HasField("whatsapp_status"):
        return None
    if r.whatsapp_status.lower() not in COUNTED_STATUSES:
        return None
    p = r.pricing
    at = r.at.ToDatetime(tzinfo=UTC) if r.HasField("at") else now
    return Priced(
        wamid=required(r.wamid, "wamid"),
        at=now if at > now + MAX_CLOCK_SKEW else at,  # a broken clock must not book next year
        billable=p.billable,
        pricing_model=checked(p.pricing_model, "pricing.pricing_model", 40),
        category=checked(p.category, "pricing.category", 40),
        pricing_type=checked(p.type, "pricing.type", 40),
    )


# --- output ----------------------------------------------------------------------------------------


def _set_ts(target: Timestamp, value: datetime | None) -> None:
    if value is not None:
        target.FromDatetime(value)


def channel_pb(c: ChannelBinding) -> pb.Channel:
    out = pb.Channel(
        phone_number_id=c.phone_number_id,
        display_phone_number=c.display_phone_number,
        member_id=c.member_id,
        line_id=c.line_id,
        connector_id=c.connector_id,
        crm_mode=_CRM_TO_PB[c.crm_mode],
        reengagement_template=c.reengagement_template or "",
        template_language=c.template_language or "",
        active=c.active,
    )
    _set_ts(out.created_at, c.created_at)
    return out


def conversation_pb(c: Conversation) -> pb.Conversation:
    out = pb.Conversation(
        id=str(c.id),
        phone_number_id=c.phone_number_id,
        wa_id=c.wa_id,
        member_id=c.member_id,
        external_chat_id=c.external_chat_id,
        bitrix_contact_id=c.bitrix_contact_id or "",
        bitrix_chat_id=c.bitrix_chat_id or "",
        contact_name=c.contact_name or "",
        customer_phone=c.customer_phone or "",
        customer_user_id=c.customer_user_id or "",
        customer_parent_user_id=c.customer_parent_user_id or "",
        customer_username=c.customer_username or "",
        bitrix_user_id=c.bitrix_user_id,
    )
    _set_ts(out.last_message_at, c.last_message_at)
    _set_ts(out.last_customer_message_at, c.last_customer_message_at)
    _set_ts(out.created_at, c.created_at)
    return out


def link_pb(link: MessageLink) -> pb.MessageLink:
    out = pb.MessageLink(
        conversation_id=str(link.conversation_id),
        direction=_DIRECTION_TO_PB[link.direction],
        wamid=link.wamid,
        member_id=link.member_id,
        bitrix_message_id=link.bitrix_message_id or "",
        bitrix_chat_id=link.bitrix_chat_id or "",
        whatsapp_status=link.whatsapp_status or "",
        bitrix_status=link.bitrix_status or "",
    )
    _set_ts(out.created_at, link.created_at)
    _set_ts(out.updated_at, link.updated_at)
    return out


ALIAS_KIND_FROM_PB = {
    pb.IDENTITY_ALIAS_KIND_PHONE: "phone",
    pb.IDENTITY_ALIAS_KIND_BSUID: "bsuid",
    pb.IDENTITY_ALIAS_KIND_PARENT_BSUID: "parent_bsuid",
    pb.IDENTITY_ALIAS_KIND_USERNAME: "username",
}


def customer_identity(
    wa_id: str, user_id: str, parent_user_id: str, username: str, *, need_key: bool = True
) -> Identity:
    """A customer's identifiers from a request, each checked for its format (identity aliases)."""
    checks = (
        ("wa_id", wa_id, lambda v: len(v) <= MAX_ID and v.strip() == v and "\x00" not in v),
        ("user_id", user_id, identity.is_bsuid),
        ("parent_user_id", parent_user_id, identity.is_bsuid),
        ("username", username, identity.is_username),
    )
    for name, value, ok in checks:
        if value and not ok(value):
            raise InvalidArgument(f"{name} is not a valid identifier")
    out = Identity(wa_id or None, user_id or None, parent_user_id or None, username or None)
    if need_key and out.key is None:
        raise InvalidArgument("wa_id or user_id is required")
    return out


def consent(c: pb.CustomerConsent) -> Consent:
    if not c.HasField("changed_at"):
        raise InvalidArgument("changed_at is required")
    return Consent(
        phone_number_id=required(c.phone_number_id, "phone_number_id"),
        wa_id=required(c.wa_id, "wa_id"),
        category=required(c.category, "category", 64),
        value=status(c.value, "value", CONSENT_VALUES),
        detail=checked(c.detail, "detail", MAX_TEXT),
        changed_at=timestamp(c.changed_at, "changed_at"),
    )


def consent_pb(c: Consent) -> pb.CustomerConsent:
    out = pb.CustomerConsent(
        phone_number_id=c.phone_number_id, wa_id=c.wa_id, category=c.category, value=c.value, detail=c.detail
    )
    _set_ts(out.changed_at, c.changed_at)
    return out


def channel_activity_pb(a: ChannelActivity) -> pb.ChannelActivity:
    out = pb.ChannelActivity(
        phone_number_id=a.phone_number_id, open_windows=a.open_windows, conversations=a.conversations
    )
    _set_ts(out.last_inbound_at, a.last_inbound_at)
    _set_ts(out.last_outbound_at, a.last_outbound_at)
    return out
