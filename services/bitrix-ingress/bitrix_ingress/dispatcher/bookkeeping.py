"""Bookkeeping with the mapper after Bitrix24 confirmed: RecordDelivery for a delivered customer message
(MarkProcessed alone should that fail), MarkProcessed for the other events, each retried in place to keep
the duplicate window small (docs/bitrix-ingress.md, "Idempotency and the crash window").
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter
from zaptrix.rpc import RpcFailed
from zaptrix.v1 import events_pb2, mapper_pb2

from bitrix_ingress.deps import Deps, conversation_update

T = TypeVar("T")
IN_PLACE_BUDGET_S = 8.0  # per call; past it the event goes to the retry topic with its effect noted


async def in_place(fn: Callable[[], Awaitable[T]], budget_s: float | None = None) -> T:
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(IN_PLACE_BUDGET_S if budget_s is None else budget_s),
        wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
        retry=retry_if_exception_type(RpcFailed),
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover


async def mark(deps: Deps, event_id: str, result: str) -> None:
    """MarkProcessed right after Bitrix24 confirmed; retried in place to keep the duplicate window small."""
    await in_place(lambda: deps.mark_processed(event_id, result))


def _delivery(
    cm: events_pb2.CustomerMessage,
    record: dict[str, Any],
    conv: mapper_pb2.Conversation | None,
    name: str,
) -> tuple[mapper_pb2.MessageLink, mapper_pb2.UpdateConversationRequest]:
    conv_id = str(record.get("conv") or (conv.id if conv is not None else ""))
    chat_id = str(record.get("chat") or "")
    link = mapper_pb2.MessageLink(
        conversation_id=conv_id,
        direction=mapper_pb2.DIRECTION_INBOUND,
        wamid=cm.wamid,
        member_id=str(record.get("member") or (conv.member_id if conv is not None else "")),
        bitrix_chat_id=chat_id,
        bitrix_status="delivered",
    )
    sent_at = cm.sent_at.ToDatetime(UTC) if cm.HasField("sent_at") else datetime.now(UTC)
    update: dict[str, Any] = {"last_message_at": sent_at, "last_customer_message_at": sent_at}
    if chat_id and (conv is None or conv.bitrix_chat_id != chat_id):
        update["bitrix_chat_id"] = chat_id
    if name and (conv is None or conv.contact_name != name):
        update["contact_name"] = name
    return link, conversation_update(conv_id, **update)


def delivery_request(
    event_id: str,
    result: str,
    cm: events_pb2.CustomerMessage,
    record: dict[str, Any],
    conv: mapper_pb2.Conversation | None,
    name: str,
) -> mapper_pb2.RecordDeliveryRequest:
    """The RecordDelivery of one delivered message (an item of RecordDeliveries)."""
    link, update = _delivery(cm, record, conv, name)
    return mapper_pb2.RecordDeliveryRequest(
        link=mapper_pb2.LinkMessageRequest(link=link),
        conversation=update,
        processed=mapper_pb2.MarkProcessedRequest(event_id=event_id, result=result),
    )


async def record_delivery(
    deps: Deps,
    event_id: str,
    result: str,
    cm: events_pb2.CustomerMessage,
    record: dict[str, Any],
    conv: mapper_pb2.Conversation | None,
    name: str,
) -> None:
    """One RecordDelivery (processed record `result` for `event_id`, link, conversation), retried in place."""
    link, update = _delivery(cm, record, conv, name)
    await in_place(lambda: deps.record_delivery(link, update, event_id, result))


async def record_from_result(
    deps: Deps, event_id: str, cm: events_pb2.CustomerMessage, result: str, *, mark_alone: bool = False
) -> None:
    """An already-sent message (processed record, or the effect an earlier attempt noted): redo the
    (idempotent) bookkeeping, never the send. ``mark_alone``: a result without a conversation is still
    written as the processed record."""
    try:
        record = json.loads(result) if result else {}
    except ValueError:
        record = {}
    if isinstance(record, dict) and record.get("conv"):
        await record_delivery(deps, event_id, result, cm, record, None, "")
    elif mark_alone:
        await mark(deps, event_id, result)
