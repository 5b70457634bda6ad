"""WhatsApp statuses of operator messages → imconnector.send.status.delivery/reading (or, for a failed
message, a notice in the operator's chat).

Each status reaches Bitrix24 once and as what it is: ``delivered`` as .delivery, ``read`` (and a voice
note's ``played``, which implies read) as .reading. A read whose delivery is not yet recorded on the link
(delivered and read in one poll batch, or read first) carries the delivery too: the delivered of the same
batch rides on that one element (packing.merge_statuses), a later delivered finds the link reported. So a
message is never reported twice as delivered, nor its read as a delivery.

Each reply brings three statuses (sent, delivered, read): only the one that calls Bitrix24 pays for the
dedupe record and the conversation; the others update the message link (idempotent, the mapper keeps the
latest state; one UpdateMessageStatuses per poll batch for those). The links of a poll batch's statuses
come from one FindMessageLinks and their dedupe
answers from the batch's CheckProcessedMany (batch_handler.py); a status missing from those is asked
alone. The conversation comes from the known-conversation cache when it holds the link's conversation
under the link's portal and the status's channel and customer.
"""

from __future__ import annotations

from typing import Any

from zaptrix.kafka import Outcome, Received
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcNotFound
from zaptrix.v1 import events_pb2, mapper_pb2

from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher import bookkeeping
from bitrix_ingress.dispatcher import packing as dl
from bitrix_ingress.dispatcher.channels import Channels
from bitrix_ingress.dispatcher.conversations import Conversations
from bitrix_ingress.dispatcher.customer_messages import Processed
from bitrix_ingress.dispatcher.notices import notice_via
from bitrix_ingress.dispatcher.work import NoticeWork, StatusWork, Work
from bitrix_ingress.metrics import STATUSES
from bitrix_ingress.settings import DispatcherSettings

log = get_logger(__name__)

StatusUpdates = list[tuple[Received, mapper_pb2.UpdateMessageStatusRequest]]


def _recorded(status: str) -> str:
    """The WhatsApp status the link keeps (the mapper knows no ``played``: a played voice note is read)."""
    status = status.lower()
    return "read" if status == "played" else status


def with_pricing(
    req: mapper_pb2.UpdateMessageStatusRequest, st: events_pb2.WhatsAppStatus
) -> mapper_pb2.UpdateMessageStatusRequest:
    """The status's pricing rides on its link update: the mapper counts it in the cost ledger, once per
    wamid, in the same transaction (ledger.py), so a redelivered status adds nothing."""
    if st.HasField("pricing"):
        req.pricing.CopyFrom(st.pricing)
        req.at.CopyFrom(st.at)
    return req


async def _update(
    deps: Deps, rec: Received, updates: StatusUpdates | None, st: events_pb2.WhatsAppStatus, status: str
) -> None:
    req = with_pricing(mapper_pb2.UpdateMessageStatusRequest(wamid=st.wamid, whatsapp_status=status), st)
    if updates is None:
        await deps.update_message_statuses([req])
    else:
        updates.append((rec, req))


async def prepare_status(
    rec: Received,
    st: events_pb2.WhatsAppStatus,
    *,
    settings: DispatcherSettings,
    deps: Deps,
    channels: Channels,
    conversations: Conversations | None = None,
    links: dict[str, mapper_pb2.MessageLink] | None = None,
    processed: Processed | None = None,
    updates: StatusUpdates | None = None,
) -> Work | Outcome:
    """``links``/``processed``: the poll batch's FindMessageLinks and CheckProcessedMany answers (None
    when that call failed: each status then asks alone). ``updates``: where a status that only updates its
    link puts that update, for the batch's one UpdateMessageStatuses (its ``ok`` stands only once that
    succeeded; None: UpdateMessageStatuses of that one at once)."""
    status = st.status.lower()
    if status == "played":  # a voice note played: Bitrix24 has no such receipt, it is read
        status = "read"
    event_id = rec.envelope.event_id
    if not st.wamid:
        return Outcome.dead("status without wamid")
    # The link first: most statuses only update it (sent, and delivered/read once the delivery is reported),
    # which is idempotent and needs no dedupe record; CheckProcessed only guards a status that calls Bitrix24.
    try:
        if links is None:
            link = await deps.find_message_link(st.wamid)
        elif (found := links.get(st.wamid)) is not None:
            link = found
        else:
            raise RpcNotFound(f"no message link for wamid {st.wamid}")
    except RpcNotFound:
        # Meta can report a status before the meta dispatcher has recorded the link of the message it
        # just sent: look again a few times (retry topic), then accept that it is not ours.
        if rec.attempt < settings.status_link_attempts:
            STATUSES.labels(status, "link_not_yet_recorded").inc()
            # Not ordered: a status waiting for its link must not hold the customer's next messages.
            return Outcome.retry(f"no message link for {st.wamid} yet", ordered=False)
        STATUSES.labels(status, "unknown_wamid").inc()
        log.info("status for a message that is not ours", wamid=st.wamid, status=status)
        return Outcome.ok()
    if link.direction == mapper_pb2.DIRECTION_INBOUND:
        STATUSES.labels(status, "not_ours").inc()
        return Outcome.ok()
    if status not in ("delivered", "read", "failed"):
        if status == "sent":
            await _update(deps, rec, updates, st, "sent")
        STATUSES.labels(status or "empty", "recorded").inc()
        return Outcome.ok()
    already = link.bitrix_status in ("delivered", "read")
    if status == "delivered" and already:
        await _update(deps, rec, updates, st, status)
        STATUSES.labels(status, "already_reported").inc()
        return Outcome.ok()
    method = dl.STATUS_DELIVERY
    reading = status == "read" and settings.bitrix_send_read_status
    if status == "read" and already:
        if not reading or link.bitrix_status == "read":
            await _update(deps, rec, updates, st, status)
            STATUSES.labels(status, "already_reported").inc()
            return Outcome.ok()
        method, reading = dl.STATUS_READING, False
    check = (processed or {}).get(event_id) or await deps.check_processed(event_id)
    if check.processed:
        STATUSES.labels(status, "duplicate").inc()
        return Outcome.duplicate()
    channel = await channels.get(st.phone_number_id)
    known = (
        conversations.known(link.member_id, st.phone_number_id, st.wa_id)
        if conversations is not None
        else None
    )
    if known is not None and known.id == link.conversation_id:
        conv = known
    else:
        try:
            conv = await deps.find_conversation_by_id(link.conversation_id)
        except RpcNotFound:
            conv = await deps.find_conversation_by_customer(st.phone_number_id, st.wa_id)
    base: dict[str, Any] = {
        "rec": rec,
        "member_id": link.member_id or channel.member_id,
        "conv_key": rec.envelope.conversation_key,
        "connector": channel.connector_id or settings.connector_id,
        "line": int(channel.line_id),
    }
    if status == "failed":
        error = st.errors[0] if st.errors else None
        return NoticeWork(
            **base,
            source="status",
            wa_id=dl.customer_user(conv)[0] if conv.wa_id else st.wa_id,
            phone=dl.customer_user(conv)[1] if conv.wa_id else None,
            contact_name=conv.contact_name or conv.customer_username,
            external_chat_id=conv.external_chat_id,
            bitrix_chat_id=link.bitrix_chat_id or conv.bitrix_chat_id,
            body=dl.failure_text(error),
            wamid=st.wamid,
            via=notice_via(settings, link.bitrix_chat_id or conv.bitrix_chat_id),
        )
    if not link.bitrix_message_id or not link.bitrix_chat_id:
        log.warning("status for a message without Bitrix24 ids", wamid=st.wamid)
        await _update(deps, rec, updates, st, status)
        STATUSES.labels(status, "no_bitrix_ids").inc()
        return Outcome.ok()

    def item(delivery: bool) -> dict[str, Any]:
        return dl.build_status_item(
            bitrix_chat_id=link.bitrix_chat_id,
            bitrix_message_id=link.bitrix_message_id,
            wamids=[st.wamid],
            external_chat_id=conv.external_chat_id,
            at=dl.unix(st.at) if delivery else None,
        )

    # "delivered" also marks the message read in Open Lines, so a read reported as delivery is "read".
    return StatusWork(
        **base,
        st=st,
        method=method,
        payload=item(method == dl.STATUS_DELIVERY),
        reading_payload=item(False) if reading else None,
        new_bitrix_status=status,
    )


async def finish_statuses(deps: Deps, works: list[StatusWork]) -> None:
    """The statuses one request reported to Bitrix24: each recorded as processed and on its link, all in
    one UpdateMessageStatuses (one transaction), retried in place to keep the duplicate window small."""
    updates = [
        with_pricing(
            mapper_pb2.UpdateMessageStatusRequest(
                wamid=w.st.wamid,
                whatsapp_status=_recorded(w.st.status),
                bitrix_status=w.new_bitrix_status,
                processed=mapper_pb2.MarkProcessedRequest(event_id=w.rec.envelope.event_id, result=w.method),
            ),
            w.st,
        )
        for w in works
    ]
    await bookkeeping.in_place(lambda: deps.update_message_statuses(updates))
    for w in works:
        STATUSES.labels(w.st.status, "reported").inc()
