"""Customer messages: what to send for one (prepare), its MESSAGES[] item, and the bookkeeping once sent."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC
from typing import Any

import grpc
from zaptrix.errors import TransientError
from zaptrix.kafka import Outcome, Received
from zaptrix.rpc import RpcFailed, RpcNotFound, RpcTransient, error_for
from zaptrix.v1 import events_pb2, mapper_pb2

from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher import bookkeeping
from bitrix_ingress.dispatcher import packing as dl
from bitrix_ingress.dispatcher.channels import Channels
from bitrix_ingress.dispatcher.conversations import Conversations
from bitrix_ingress.dispatcher.work import DeliverWork, Work
from bitrix_ingress.metrics import DELIVERED
from bitrix_ingress.settings import DispatcherSettings
from bitrix_ingress.text import display_name, format_time

_CODES = {code.value[0]: code for code in grpc.StatusCode}
# CheckProcessed answers of a poll batch, by event id.
Processed = dict[str, mapper_pb2.CheckProcessedResponse]


async def prepare_customer(
    rec: Received,
    cm: events_pb2.CustomerMessage,
    *,
    settings: DispatcherSettings,
    deps: Deps,
    channels: Channels,
    conversations: Conversations,
    processed: Processed | None = None,
) -> Work | Outcome:
    """``processed``: the poll batch's CheckProcessedMany answers (an event missing from it is asked alone)."""
    event_id = rec.envelope.event_id
    if not cm.wamid or not (cm.wa_id or cm.user_id) or not cm.phone_number_id:
        return Outcome.dead("customer message without wamid, wa_id or phone_number_id")
    check = (processed or {}).get(event_id) or await deps.check_processed(event_id)
    if check.processed:
        await bookkeeping.record_from_result(deps, event_id, cm, check.result)
        DELIVERED.labels("duplicate").inc()
        return Outcome.duplicate()
    channel = await channels.get(cm.phone_number_id)
    if not channel.active:
        return Outcome.dead(f"channel {cm.phone_number_id} is inactive")
    try:
        conv = await conversations.get(channel, cm.wa_id, cm.profile_name, cm)
    except TransientError:
        channels.forget(cm.phone_number_id)
        raise
    if not conv.external_chat_id:
        return Outcome.dead(f"conversation {conv.id} has no external_chat_id")
    crm_gateway = channel.crm_mode in (mapper_pb2.CRM_MODE_UNSPECIFIED, mapper_pb2.CRM_MODE_GATEWAY)
    reply_label = await _reply_label(deps, cm)
    return DeliverWork(
        rec=rec,
        member_id=channel.member_id,
        conv_key=rec.envelope.conversation_key,
        connector=channel.connector_id or settings.connector_id,
        line=int(channel.line_id),
        cm=cm,
        conv=conv,
        contact_name=cm.profile_name or conv.contact_name or cm.username or conv.customer_username,
        # No phone, nothing to find or create a CRM contact by: the Open Line's tracker still gets the chat.
        need_contact=crm_gateway and not conv.bitrix_contact_id and dl.customer_user(conv)[1] != "",
        contact_id=conv.bitrix_contact_id,
        reply_label=reply_label,
    )


async def _reply_label(deps: Deps, cm: events_pb2.CustomerMessage) -> str:
    target = cm.reply_to_wamid or cm.reaction_to_wamid
    if not target:
        return ""
    verb = "Reaction to" if cm.reaction_to_wamid and not cm.reply_to_wamid else "Reply to"
    try:
        link = await deps.find_message_link(target)
    except (RpcNotFound, RpcFailed):
        return f"{verb} an earlier message"
    whose = "the operator's message" if link.direction == mapper_pb2.DIRECTION_OUTBOUND else "their message"
    when = f" of {format_time(link.created_at.ToDatetime(UTC))}" if link.HasField("created_at") else ""
    return f"{verb} {whose}{when}"


def customer_item(w: DeliverWork) -> dl.Item:
    payload = dl.build_customer_item(
        w.cm,
        contact_name=w.contact_name,
        external_chat_id=w.conv.external_chat_id,
        reply_label=w.reply_label,
        chat_name=display_name(w.contact_name, dl.customer_user(w.conv)[1] or w.cm.wa_id),
        user=dl.customer_user(w.conv),
    )
    return dl.Item(w, payload, has_files=bool(payload["message"].get("files")))


def delivery_record(work: DeliverWork, result: dict[str, Any]) -> str:
    """What is recorded of a delivered message (the processed result, and the effect noted for a retry)."""
    raw_session = result.get("session")
    session: dict[str, Any] = raw_session if isinstance(raw_session, dict) else {}
    chat_id = str(session.get("CHAT_ID") or session.get("chat_id") or work.conv.bitrix_chat_id or "")
    record = {
        "chat": chat_id,
        "session": str(session.get("ID") or session.get("id") or ""),
        "conv": work.conv.id,
        "member": work.member_id,
        "contact": work.contact_id,
        "at": int(time.time()),
    }
    return json.dumps(record, separators=(",", ":"))


async def finish_customer(deps: Deps, work: DeliverWork, recorded: str) -> Outcome:
    """Record a delivered message (``recorded``: its delivery_record)."""
    record = json.loads(recorded)
    event_id = work.rec.envelope.event_id
    try:
        await bookkeeping.record_delivery(
            deps, event_id, recorded, work.cm, record, work.conv, work.contact_name
        )
    except (RpcFailed, RpcNotFound):
        # All or nothing, so not even the processed record was written: write it alone, or a
        # redelivery would send the message to Bitrix24 again. The rest is redone from `recorded` then.
        await bookkeeping.mark(deps, event_id, recorded)
        DELIVERED.labels("ok").inc()
        raise
    DELIVERED.labels("ok").inc()
    return Outcome.ok()


async def finish_customers(
    deps: Deps, conversations: Conversations, done: list[tuple[DeliverWork, str]]
) -> list[Outcome | BaseException]:
    """finish_customer for what one request delivered, with ONE RecordDeliveries (retried in place). An
    item the mapper refused ends as finish_customer's would (MarkProcessed alone, then its error); an item
    answering a transient error is recorded alone (finish_customer). Each conversation the mapper answered
    for is remembered as it now is."""
    requests = [
        bookkeeping.delivery_request(
            w.rec.envelope.event_id, recorded, w.cm, json.loads(recorded), w.conv, w.contact_name
        )
        for w, recorded in done
    ]
    try:
        results = await bookkeeping.in_place(lambda: _record_deliveries(deps, requests))
    except _Unimplemented:  # a mapper older than RecordDeliveries (mid-upgrade): one RecordDelivery each
        return list(await asyncio.gather(*(_finish_one(deps, w, r) for w, r in done)))
    except (RpcFailed, RpcNotFound) as exc:
        # Nothing of the list was recorded: each keeps a redelivery from sending again with its
        # processed record alone (as finish_customer does), then goes to the retry with its effect.
        return list(await asyncio.gather(*(_mark_alone(deps, w, r, exc) for w, r in done)))

    async def one(work: DeliverWork, recorded: str, result: mapper_pb2.RecordDeliveryResult) -> Outcome:
        if result.error_code:
            error = error_for(
                "mapper RecordDelivery",
                _CODES.get(result.error_code, grpc.StatusCode.UNKNOWN),
                result.error_details,
            )
            if isinstance(error, RpcTransient):
                return await finish_customer(deps, work, recorded)
            raise await _mark_alone(deps, work, recorded, error)
        latest[result.response.conversation.id] = result.response.conversation
        DELIVERED.labels("ok").inc()
        return Outcome.ok()

    async def safe(
        work: DeliverWork, recorded: str, result: mapper_pb2.RecordDeliveryResult
    ) -> Outcome | BaseException:
        try:
            return await one(work, recorded, result)
        except Exception as exc:
            return exc

    latest: dict[str, mapper_pb2.Conversation] = {}  # each conversation as the mapper last answered
    outcomes = await asyncio.gather(*(safe(w, r, res) for (w, r), res in zip(done, results, strict=True)))
    for conv in latest.values():
        conversations.remember(conv)
    return list(outcomes)


class _Unimplemented(Exception):
    """The mapper does not know RecordDeliveries (not retried in place)."""


async def _record_deliveries(
    deps: Deps, requests: list[mapper_pb2.RecordDeliveryRequest]
) -> list[mapper_pb2.RecordDeliveryResult]:
    try:
        return await deps.record_deliveries(requests)
    except RpcFailed as exc:
        if exc.code == grpc.StatusCode.UNIMPLEMENTED:
            raise _Unimplemented from exc
        raise


async def _finish_one(deps: Deps, work: DeliverWork, recorded: str) -> Outcome | BaseException:
    try:
        return await finish_customer(deps, work, recorded)
    except Exception as exc:
        return exc


async def _mark_alone(deps: Deps, work: DeliverWork, recorded: str, error: BaseException) -> BaseException:
    """The processed record alone for a message its RecordDelivery did not record; returns ``error`` (or
    the MarkProcessed failure) for the event's outcome."""
    try:
        await bookkeeping.mark(deps, work.rec.envelope.event_id, recorded)
    except Exception as exc:
        return exc
    DELIVERED.labels("ok").inc()
    return error
