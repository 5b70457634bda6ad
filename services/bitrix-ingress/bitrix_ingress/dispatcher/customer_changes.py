"""Coexistence changes to what the chat shows: the customer's edits and revokes (imconnector.update.messages
/ delete.messages with the original wamid as the external message id, as it was sent) and names from the
WhatsApp Business app's contact sync (the conversation's contact name in the mapper, so that the next
message's user block carries it, and imconnector.chat.name.set for the chat title at once)."""

from __future__ import annotations

from typing import Any

from zaptrix.kafka import Outcome, Received
from zaptrix.rpc import RpcNotFound
from zaptrix.v1 import events_pb2, mapper_pb2

from bitrix_ingress.deps import Deps, conversation_update
from bitrix_ingress.dispatcher import bookkeeping
from bitrix_ingress.dispatcher import packing as dl
from bitrix_ingress.dispatcher.channels import Channels
from bitrix_ingress.dispatcher.conversations import Conversations
from bitrix_ingress.dispatcher.work import ChangeWork, Work
from bitrix_ingress.settings import DispatcherSettings
from bitrix_ingress.text import display_name

UPDATE_MESSAGES = "imconnector.update.messages"
DELETE_MESSAGES = "imconnector.delete.messages"
CHAT_NAME_SET = "imconnector.chat.name.set"
EDITED_MARK = "✏️ edited"


async def prepare_change(
    rec: Received,
    *,
    settings: DispatcherSettings,
    deps: Deps,
    channels: Channels,
    conversations: Conversations,
) -> Work | Outcome:
    env = rec.envelope
    kind = env.WhichOneof("kind")
    item = env.customer_message_change if kind == "customer_message_change" else env.contact_name_sync
    if not item.phone_number_id or not item.wa_id:
        return Outcome.dead(f"{kind} without phone_number_id or wa_id")
    if (await deps.check_processed(env.event_id)).processed:
        return Outcome.duplicate()
    channel = await channels.get(item.phone_number_id)
    if not channel.active:
        return Outcome.dead(f"channel {item.phone_number_id} is inactive")
    try:  # a change only concerns a conversation that exists: nothing is created for it
        conv = await deps.find_conversation_by_customer(item.phone_number_id, item.wa_id)
    except RpcNotFound:
        await bookkeeping.mark(deps, env.event_id, "no-conversation")
        return Outcome.ok()
    if conv.member_id != channel.member_id or not conv.external_chat_id:
        return Outcome.dead(f"conversation {conv.id} is not the channel portal's, or has no chat id")

    def work(method: str, payload: dict[str, Any], messages: bool = True) -> ChangeWork:
        return ChangeWork(
            rec=rec,
            member_id=channel.member_id,
            conv_key=env.conversation_key,
            connector=channel.connector_id or settings.connector_id,
            line=int(channel.line_id),
            method=method,
            payload=payload,
            messages=messages,
        )

    if isinstance(item, events_pb2.CustomerMessageChange):
        user = dl.build_user(*_user_of(conv))
        chat = {"id": conv.external_chat_id}
        if item.action == "revoke":
            payload = {"user": {"id": user["id"]}, "message": {"id": item.original_wamid}, "chat": chat}
            return work(DELETE_MESSAGES, payload)
        message = {"id": item.original_wamid, "date": item.at.seconds, "text": f"{item.text}\n{EDITED_MARK}"}
        return work(UPDATE_MESSAGES, {"user": user, "message": message, "chat": chat})
    name = item.full_name.strip()
    if item.action != "add" or not name:  # a removed contact keeps the name the operator knows
        await bookkeeping.mark(deps, env.event_id, f"contact-{item.action or 'empty'}")
        return Outcome.ok()
    conversations.remember(await deps.update_conversation(conversation_update(conv.id, contact_name=name)))
    params = {
        "CHAT_ID": conv.external_chat_id,
        "NAME": display_name(name, dl.customer_user(conv)[1] or conv.wa_id),
        "USER_ID": dl.customer_user(conv)[0],
    }
    return work(CHAT_NAME_SET, params, messages=False)


async def finish_change(deps: Deps, work: ChangeWork) -> Outcome:
    await bookkeeping.mark(deps, work.rec.envelope.event_id, work.method)
    return Outcome.ok()


def _user_of(conv: mapper_pb2.Conversation) -> tuple[str, str, str | None]:
    """(user.id, name, phone) the chat knows the customer by: the conversation's stable bitrix_user_id."""
    user_id, phone = dl.customer_user(conv)
    return user_id, conv.contact_name or conv.customer_username, phone
