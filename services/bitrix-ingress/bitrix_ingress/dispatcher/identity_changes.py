"""A customer's identity changed (WhatsApp system message: new number and BSUID, or a new BSUID only):
the mapper adds the new identifiers to the person's conversation, so their next message lands in the same
Bitrix24 chat (the chat.id and user.id Bitrix24 knows never change)."""

from __future__ import annotations

from zaptrix.kafka import Outcome, Received
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcNotFound
from zaptrix.v1 import events_pb2

from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher.conversations import Conversations

log = get_logger(__name__)


async def apply_identity_change(
    rec: Received, change: events_pb2.CustomerIdentityChange, *, deps: Deps, conversations: Conversations
) -> Outcome:
    if not change.phone_number_id or not (change.previous_user_id or change.previous_wa_id):
        return Outcome.dead("identity change without channel or previous identity")
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
    return Outcome.ok()
