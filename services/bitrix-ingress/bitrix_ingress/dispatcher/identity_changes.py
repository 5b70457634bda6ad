"""A customer's identity changed (WhatsApp system message: new number and BSUID, or a new BSUID only):
the mapper adds the new identifiers to the person's conversation, so their next message lands in the same
Bitrix24 chat (the chat.id and user.id Bitrix24 knows never change), and the operator sees a system line
saying so (coexistence.chat_line: im.message.add SYSTEM=Y, connector fallback). Once per change event: a
redelivered change is found by CheckProcessed; applying it again would be harmless, posting it again not."""

from __future__ import annotations

from zaptrix.kafka import Outcome, Received
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcNotFound
from zaptrix.v1 import events_pb2

from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher.channels import Channels
from bitrix_ingress.dispatcher.coexistence import chat_line
from bitrix_ingress.dispatcher.conversations import Conversations
from bitrix_ingress.dispatcher.work import Work
from bitrix_ingress.settings import DispatcherSettings

log = get_logger(__name__)


def _shown_phone(number: str) -> str:
    return f"+{number}" if number and number.isdigit() else number


def identity_change_text(change: events_pb2.CustomerIdentityChange) -> str:
    if change.change_type == "user_changed_number":
        old, new = _shown_phone(change.previous_wa_id), _shown_phone(change.wa_id)
        if old and new:
            return f"📱 The customer changed their number from {old} to {new}."
        if new:
            return f"📱 The customer changed their number to {new}."
        return "📱 The customer changed their number."
    return "🪪 The customer's WhatsApp account id changed (same person, same chat)."


async def apply_identity_change(
    rec: Received,
    change: events_pb2.CustomerIdentityChange,
    *,
    settings: DispatcherSettings,
    deps: Deps,
    channels: Channels,
    conversations: Conversations,
) -> Work | Outcome:
    if not change.phone_number_id or not (change.previous_user_id or change.previous_wa_id):
        return Outcome.dead("identity change without channel or previous identity")
    check = await deps.check_processed(rec.envelope.event_id)
    if check.processed:
        return Outcome.duplicate()
    try:
        got = await deps.apply_identity_change(change)
    except RpcNotFound:
        # Nobody we know: the person's first message will create the conversation under the new identity.
        log.info("identity change of an unknown customer", event_id=rec.envelope.event_id)
        return Outcome.ok()
    conversations.forget(got.conversation)
    log.info(
        "customer identity changed",
        event_id=rec.envelope.event_id,
        conversation_id=got.conversation.id,
        change=change.change_type,
        merged=len(got.merged_conversation_ids),
    )
    conv = got.conversation
    channel = await channels.get(change.phone_number_id)
    if not channel.active or not conv.external_chat_id or conv.member_id not in ("", channel.member_id):
        return Outcome.ok()  # applied; there is no chat of this channel's portal to tell
    return chat_line(
        rec,
        settings=settings,
        channel=channel,
        conv=conv,
        source="identity",
        shown=identity_change_text(change),
        connector_prefix="📋 Zaptrix: ",
    )
