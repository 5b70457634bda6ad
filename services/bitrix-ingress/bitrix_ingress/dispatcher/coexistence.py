"""Coexistence echoes (the business wrote from the WhatsApp Business app) and consent changes
(user_preferences), shown in the operator's chat.

Both become a NoticeWork with its own text. Bitrix24's connector API has no way to mark a message as the
operator side's: imconnector.send.messages always shows the customer as the author (bitrix24.md §2). The
documented way to put a line into the Open Lines chat that is not the customer's is im.message.add with
SYSTEM=Y; system messages are not relayed to the connector (custom connectors only get
OnImConnectorMessageAdd for operator messages, research-2026-12.md 2.2), so an echo never goes back to
WhatsApp. Without the im scope, or before the chat exists, the line goes through the connector with a
"🏢 Business" prefix (still never relayed: connector messages are the client's side).
"""

from __future__ import annotations

from zaptrix.kafka import Outcome, Received
from zaptrix.v1 import events_pb2, mapper_pb2

from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher import packing as dl
from bitrix_ingress.dispatcher.channels import Channels
from bitrix_ingress.dispatcher.conversations import Conversations
from bitrix_ingress.dispatcher.work import NoticeWork, Work
from bitrix_ingress.settings import DispatcherSettings

ECHO_PREFIX = "🏢 Business (WhatsApp Business app):"
_MAX_TEXT = 4000


def echo_text(echo: events_pb2.BusinessEcho) -> str:
    return f"{ECHO_PREFIX}\n{echo.text.strip()[:_MAX_TEXT]}"


def consent_text(change: events_pb2.ConsentChange) -> str:
    what = "marketing messages" if change.category == "marketing_messages" else change.category
    if change.value == "stop":
        line = f"🔕 The customer stopped {what}: marketing templates to them are refused."
    else:
        line = f"🔔 The customer resumed {what}."
    return f"{line}\n{change.detail[:500]}" if change.detail else line


async def prepare_coexistence(
    rec: Received,
    *,
    settings: DispatcherSettings,
    deps: Deps,
    channels: Channels,
    conversations: Conversations,
) -> Work | Outcome:
    env = rec.envelope
    kind = env.WhichOneof("kind")
    item: events_pb2.BusinessEcho | events_pb2.ConsentChange
    if kind == "business_echo":
        item, source = env.business_echo, "echo"
        shown = echo_text(env.business_echo)
    elif kind == "consent_change":
        item, source = env.consent_change, "consent"
        shown = consent_text(env.consent_change)
    else:
        return Outcome.dead(f"unexpected event type {kind}")
    if not item.phone_number_id or not item.wa_id:
        return Outcome.dead(f"{kind} without phone_number_id or wa_id")
    check = await deps.check_processed(env.event_id)
    if check.processed:
        return Outcome.duplicate()
    channel = await channels.get(item.phone_number_id)
    if isinstance(item, events_pb2.ConsentChange):  # recorded first: it counts even if no chat shows it
        await deps.record_customer_consent(
            mapper_pb2.CustomerConsent(
                phone_number_id=item.phone_number_id,
                wa_id=item.wa_id,
                category=item.category,
                value=item.value,
                detail=item.detail,
                changed_at=item.at,
            )
        )
    prefix = "📋 Zaptrix: " if kind == "consent_change" else ""
    return await customer_chat_line(rec, settings, channel, conversations, item.wa_id, source, shown, prefix)


async def customer_chat_line(
    rec: Received,
    settings: DispatcherSettings,
    channel: mapper_pb2.Channel,
    conversations: Conversations,
    wa_id: str,
    source: str,
    shown: str,
    connector_prefix: str = "",
) -> Work | Outcome:
    """chat_line in the chat of the channel's customer ``wa_id`` (the conversation is created for a customer
    never seen before); dead when the channel is inactive."""
    if not channel.active:
        return Outcome.dead(f"channel {channel.phone_number_id} is inactive")
    conv = await conversations.get(channel, wa_id, "")
    if not conv.external_chat_id:
        return Outcome.dead(f"conversation {conv.id} has no external_chat_id")
    return chat_line(
        rec,
        settings=settings,
        channel=channel,
        conv=conv,
        source=source,
        shown=shown,
        connector_prefix=connector_prefix,
    )


def chat_line(
    rec: Received,
    *,
    settings: DispatcherSettings,
    channel: mapper_pb2.Channel,
    conv: mapper_pb2.Conversation,
    source: str,
    shown: str,
    connector_prefix: str = "",
) -> NoticeWork:
    """A line in the conversation's chat that is not the customer's (echoes, consent, identity changes,
    history): a system message when ZAPTRIX_BITRIX_ECHO_VIA=im and the chat is known, else through the
    connector with ``connector_prefix`` (refused im calls fall back there too, notices.reroute_refused_im)."""
    via = "im" if settings.bitrix_echo_via == "im" and conv.bitrix_chat_id else "connector"
    if via == "connector":
        shown = f"{connector_prefix}{shown}"
    return NoticeWork(
        rec=rec,
        member_id=channel.member_id,
        conv_key=rec.envelope.conversation_key,
        connector=channel.connector_id or settings.connector_id,
        line=int(channel.line_id),
        source=source,
        wa_id=dl.customer_user(conv)[0],
        phone=dl.customer_user(conv)[1],
        contact_name=conv.contact_name or conv.customer_username,
        external_chat_id=conv.external_chat_id,
        bitrix_chat_id=conv.bitrix_chat_id,
        body=shown,
        via=via,
        shown=shown,
    )
