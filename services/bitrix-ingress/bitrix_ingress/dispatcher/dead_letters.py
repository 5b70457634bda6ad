"""A customer's message that ends in the dead-letter topic (Bitrix24 refused it, retries exhausted, ...)
gets one attempt at a notice in the conversation's Bitrix24 chat: a SendFailure produced onto this flow,
posted like every other failure notice (notices.py) in the chat of the conversation's own portal.

The notice may fail too (often for the same cause); its own dead letter is then logged and counted, never
noticed again. The reason shown is plain words from a fixed vocabulary, never the technical text.
"""

from __future__ import annotations

import re

from zaptrix.kafka import EventProducer, PublishError, event_type, new_envelope
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcFailed, RpcNotFound
from zaptrix.v1 import events_pb2

from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher.sent_effects import SENT_NOT_RECORDED
from bitrix_ingress.metrics import DEAD_LETTER_NOTICES

log = get_logger(__name__)

_EXHAUSTED = re.compile(r"retries exhausted after (\d+) attempts")
_CODE = re.compile(r"(?:^|: )([A-Z][A-Z0-9_]{2,60})\b")
_DENIED = frozenset({"ACCESS_DENIED", "INSUFFICIENT_SCOPE", "WRONG_AUTH_TYPE", "USER_ACCESS_ERROR"})


def plain_reason(reason: str) -> str:
    """What the operator reads about a customer message that could not be shown (never the reason's text)."""
    if exhausted := _EXHAUSTED.match(reason):
        return f"Bitrix24 could not take it after {exhausted.group(1)} attempts"
    if re.search(r"channel \S+ is inactive", reason):
        return "the WhatsApp channel is switched off"
    code = _CODE.search(reason)
    if code is None:
        return "the gateway could not deliver it"
    name = code.group(1)
    if name == "NOT_ACTIVE_LINE":
        return "the Open Line is not active"
    if name in _DENIED:
        return "the Zaptrix app lacks the permission to post it"
    return f"Bitrix24 refused it ({name})"


class CustomerDeadLetters:
    """The bitrix dispatcher's dead-letter hook (EventConsumer ``on_dead_letter``)."""

    def __init__(self, deps: Deps, producer: EventProducer, topic: str) -> None:
        self.deps = deps
        self.producer = producer
        self.topic = topic

    async def __call__(self, env: events_pb2.Envelope, reason: str) -> None:
        kind = event_type(env)
        if kind == "send_failure":
            DEAD_LETTER_NOTICES.labels(kind, "notice_lost").inc()
            log.error(
                "a failure notice could not be posted in the operator's chat",
                event_id=env.event_id,
                external_chat_id=env.send_failure.external_chat_id,
                reason=reason,
            )
            return
        if kind != "customer_message":
            DEAD_LETTER_NOTICES.labels(kind, "none").inc()
            return
        if SENT_NOT_RECORDED in reason:  # Bitrix24 has it: the operator sees it; nothing to tell
            DEAD_LETTER_NOTICES.labels(kind, "delivered").inc()
            log.error(
                "dead-lettered customer message was delivered, only its recording failed",
                event_id=env.event_id,
            )
            return
        cm = env.customer_message
        try:
            conv = await self.deps.find_conversation_by_customer(cm.phone_number_id, cm.wa_id)
        except (RpcNotFound, RpcFailed):
            conv = None
        if conv is None or not conv.external_chat_id:
            DEAD_LETTER_NOTICES.labels(kind, "no_chat").inc()
            log.warning("dead-lettered customer message without a chat to tell", event_id=env.event_id)
            return
        # The conversation's own portal (notices.py checks it again); connector and line stay empty:
        # notices.py takes them from the channel.
        failure = events_pb2.SendFailure(
            member_id=conv.member_id,
            bitrix_chat_id=conv.bitrix_chat_id,
            external_chat_id=conv.external_chat_id,
            notice=f"a message from the customer could not be shown in this chat: {plain_reason(reason)}. "
            "An administrator can replay it once the cause is fixed.",
        )
        notice = new_envelope(
            f"dlq-notice:{env.event_id}",
            env.conversation_key,
            events_pb2.PLATFORM_WHATSAPP,
            send_failure=failure,
        )
        try:
            await self.producer.publish(self.topic, [notice])
        except PublishError:
            DEAD_LETTER_NOTICES.labels(kind, "failed").inc()
            log.error("dead-letter notice could not be produced", event_id=env.event_id)
            return
        DEAD_LETTER_NOTICES.labels(kind, "produced").inc()
        log.info("dead-letter notice produced", event_id=env.event_id, notice_event_id=notice.event_id)
