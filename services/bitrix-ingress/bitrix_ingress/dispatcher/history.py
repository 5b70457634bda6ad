"""The coexistence history import (Meta's `history` webhook, up to 180 days of the WhatsApp Business app's
chats): each old message becomes a system line in the conversation's chat, marked as history, by the same
path as echoes (coexistence.chat_line). Never sent to WhatsApp, never recorded as a customer message (no
message link, no 24-hour window), once per message (event ``wa-history:<wamid>``, CheckProcessed).

The events come on their own topic (wa-history) to their own consumer (process.py), so that thousands of old
messages never wait in front of live traffic; within a conversation they keep their order (Kafka key, and the
batch handler holds a conversation's later lines behind one that will be retried)."""

from __future__ import annotations

from datetime import UTC, datetime

from zaptrix.kafka import Outcome, Received
from zaptrix.v1 import events_pb2

from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher.channels import Channels
from bitrix_ingress.dispatcher.coexistence import customer_chat_line
from bitrix_ingress.dispatcher.conversations import Conversations
from bitrix_ingress.dispatcher.work import Work
from bitrix_ingress.settings import DispatcherSettings

HISTORY_MARK = "🕘"
_MAX_TEXT = 4000


def history_text(item: events_pb2.HistoryMessage) -> str:
    """``🕘 12.11.2026 14:03 UTC — customer: …`` / ``— business: …``."""
    when = datetime.fromtimestamp(item.sent_at.seconds, UTC).strftime("%d.%m.%Y %H:%M UTC")
    who = "business" if item.from_business else "customer"
    return f"{HISTORY_MARK} {when} — {who}: {item.text.strip()[:_MAX_TEXT]}"


async def prepare_history(
    rec: Received,
    *,
    settings: DispatcherSettings,
    deps: Deps,
    channels: Channels,
    conversations: Conversations,
) -> Work | Outcome:
    item = rec.envelope.history_message
    if not item.phone_number_id or not item.wa_id or not item.wamid:
        return Outcome.dead("history message without phone_number_id, wa_id or wamid")
    check = await deps.check_processed(rec.envelope.event_id)
    if check.processed:
        return Outcome.duplicate()
    channel = await channels.get(item.phone_number_id)
    # A customer we never saw live gets their conversation now (GetOrCreateConversation); their chat
    # still only gets these marked lines, and no customer message is recorded.
    return await customer_chat_line(
        rec, settings, channel, conversations, item.wa_id, "history", history_text(item)
    )
