""" "Sent to Bitrix24" as an effect that survives the process (zaptrix/kafka/effects.py).

Bitrix24 has no idempotency key for imconnector.send.messages. The moment a request has answered for an
event, the batch handler notes what would be recorded (``rec.happened(SENT, result)``). Should the
recording then fail (the mapper is down past the in-place attempts), the consumer carries the note in the
retry record, and whichever dispatcher handles the retry only records (``record_sent``): it never sends
again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from zaptrix.kafka import Outcome, Received
from zaptrix.v1 import mapper_pb2

from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher import bookkeeping
from bitrix_ingress.dispatcher.customer_messages import delivery_record
from bitrix_ingress.dispatcher.statuses import with_pricing
from bitrix_ingress.dispatcher.work import DeliverWork, NoticeWork, StatusWork, Work
from bitrix_ingress.metrics import DELIVERED, STATUSES

SENT = "bitrix24.sent"
# Starts the reason of an event that reached Bitrix24 but could not be recorded: its dead letter must not
# tell the operator it was not delivered (dead_letters.py).
SENT_NOT_RECORDED = "sent to Bitrix24, not recorded"


def with_sent_reason(rec: Received, outcome: Outcome) -> Outcome:
    """A retry or dead letter of an event already sent says so in its reason."""
    if outcome.kind in ("retry", "dead") and SENT in rec.effects and SENT_NOT_RECORDED not in outcome.reason:
        return replace(outcome, reason=f"{SENT_NOT_RECORDED}: {outcome.reason}"[:500])
    return outcome


def sent_result(work: Work, answer: dict[str, Any]) -> str:
    """What is recorded once Bitrix24 answered for ``work`` (the MarkProcessed/RecordDelivery result)."""
    if isinstance(work, DeliverWork):
        return delivery_record(work, answer)
    if isinstance(work, NoticeWork):
        return f"notice:{work.via}"
    if isinstance(work, StatusWork):
        return work.method
    return "sent"


async def record_sent(deps: Deps, rec: Received, result: str) -> Outcome:
    """An event an earlier attempt already sent: record it as that attempt would have (idempotent; the
    first processed result wins), without a request to Bitrix24."""
    event_id = rec.envelope.event_id
    kind = rec.event_type
    if kind == "customer_message":
        cm = rec.envelope.customer_message
        await bookkeeping.record_from_result(deps, event_id, cm, result, mark_alone=True)
        DELIVERED.labels("recorded_late").inc()
        return Outcome.ok()
    await bookkeeping.mark(deps, event_id, result)
    if kind == "whatsapp_status":  # a delivery/read report, or the notice of a failed message
        st = rec.envelope.whatsapp_status
        status = st.status.lower()
        # With its pricing: the attempt that sent it may have failed before the ledger counted it.
        update = mapper_pb2.UpdateMessageStatusRequest(
            wamid=st.wamid, whatsapp_status=status, bitrix_status=status
        )
        await deps.update_message_statuses([with_pricing(update, st)])
        STATUSES.labels(status, "recorded_late").inc()
    return Outcome.ok()
