"""Failure notices in the operator's chat (a send that failed, a failed status): a system message
(im.message.add SYSTEM=Y, ZAPTRIX_BITRIX_NOTICE_VIA=im, the default), falling back to the connector if
refused (scope, chat access); through the connector the text says it is a notice, not the customer's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from zaptrix.kafka import Outcome, Received
from zaptrix.logging import get_logger
from zaptrix.metrics import count_cross_tenant
from zaptrix.rpc import RpcNotFound
from zaptrix.v1 import events_pb2

from bitrix_ingress.bitrix_rest.client import AccessDenied, ArgumentError, MethodNotFound, WrongAuthType
from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher import bookkeeping
from bitrix_ingress.dispatcher import packing as dl
from bitrix_ingress.dispatcher.channels import Channels
from bitrix_ingress.dispatcher.work import Answer, NoticeWork, Work
from bitrix_ingress.metrics import NOTICES
from bitrix_ingress.settings import DispatcherSettings
from bitrix_ingress.text import notice_text

log = get_logger(__name__)


async def prepare_failure(
    rec: Received,
    sf: events_pb2.SendFailure,
    *,
    settings: DispatcherSettings,
    deps: Deps,
    channels: Channels,
) -> Work | Outcome:
    check = await deps.check_processed(rec.envelope.event_id)
    if check.processed:
        return Outcome.duplicate()
    # The notice goes to the conversation's portal, and only when the failure names that same portal: a
    # failure claiming another portal for this chat (or a chat it does not own) is refused, never posted.
    conv = None
    if sf.member_id:
        try:
            conv = await deps.find_portal_conversation(sf.member_id, sf.external_chat_id)
        except RpcNotFound:
            conv = None
    if conv is None or conv.member_id != sf.member_id:
        count_cross_tenant("bitrix-dispatcher", "notice")
        log.warning(
            "send failure refused: its chat is not a conversation of the portal it names",
            event_id=rec.envelope.event_id,
            member_id=sf.member_id,
            external_chat_id=sf.external_chat_id,
        )
        return Outcome.dead(
            f"cross-tenant: send failure names chat {sf.external_chat_id!r}, which is not a conversation of"
            f" portal {sf.member_id!r} (another portal's, or unknown)"
        )
    connector, line = sf.connector_id, int(sf.line_id)
    if not connector or not line:
        channel = await channels.get(conv.phone_number_id)
        connector = connector or channel.connector_id or settings.connector_id
        line = line or int(channel.line_id)
    body = sf.notice.strip() or dl.failure_text(
        sf.error if sf.HasField("error") else None, template_sent=sf.template_sent
    )
    return NoticeWork(
        rec=rec,
        member_id=conv.member_id,
        conv_key=f"{conv.phone_number_id}:{conv.wa_id}",  # from the conversation, not the event's key
        connector=connector,
        line=line,
        source="send_failure",
        wa_id=dl.customer_user(conv)[0],
        phone=dl.customer_user(conv)[1],
        contact_name=conv.contact_name or conv.customer_username,
        external_chat_id=conv.external_chat_id,
        bitrix_chat_id=sf.bitrix_chat_id or conv.bitrix_chat_id,
        body=body,
        via=notice_via(settings, sf.bitrix_chat_id or conv.bitrix_chat_id),
    )


def notice_via(settings: DispatcherSettings, bitrix_chat_id: str) -> str:
    """ "im" (a system message) only when configured and the chat is known; else through the connector."""
    return "im" if settings.bitrix_notice_via == "im" and bitrix_chat_id else "connector"


def im_notice_call(w: NoticeWork) -> dl.Call | None:
    """The im.message.add call of a notice that goes as a system message; None: through the connector."""
    if w.via == "im":
        params = {
            "DIALOG_ID": f"chat{w.bitrix_chat_id}",
            "MESSAGE": shown_text(w),
            "SYSTEM": "Y",
            "URL_PREVIEW": "N",
        }
        return dl.Call(dl.IM_MESSAGE_ADD, params, [dl.Item(w, params)], messages=False)
    return None


def connector_notice_item(w: NoticeWork) -> dl.Item:
    payload = dl.build_notice_item(
        event_id=w.rec.envelope.event_id,
        wa_id=w.wa_id,
        phone=w.phone,
        contact_name=w.contact_name,
        external_chat_id=w.external_chat_id,
        body=w.body,
    )
    if w.shown:  # else build_notice_item's text, which says it is not the customer's
        payload["message"]["text"] = w.shown
    return dl.Item(w, payload)


def shown_text(w: NoticeWork) -> str:
    return w.shown or notice_text(w.body)


def reroute_refused_im(works: Sequence[Work], answers: Mapping[Work, Answer]) -> dict[Work, Work]:
    """Notices whose im.message.add was refused → the same notice, to go again through the connector."""
    fallback: dict[Work, Work] = {}
    for w in works:
        answer = answers.get(w)
        if isinstance(w, NoticeWork) and w.via == "im" and _im_refused(answer):
            log.warning("im.message.add refused, posting the notice through the connector", error=str(answer))
            fallback[w] = replace(w, via="connector")
    return fallback


def _im_refused(exc: object) -> bool:
    return isinstance(exc, AccessDenied | MethodNotFound | ArgumentError | WrongAuthType)


async def finish_notice(deps: Deps, work: NoticeWork) -> Outcome:
    event_id = work.rec.envelope.event_id
    await bookkeeping.mark(deps, event_id, f"notice:{work.via}")
    NOTICES.labels(work.source, work.via).inc()
    log.info(
        "notice posted in the operator's chat",
        source=work.source,
        event_id=event_id,
        external_chat_id=work.external_chat_id,
        via=work.via,
        wamid=work.wamid,
    )
    if work.wamid:
        await deps.update_message_status(work.wamid, whatsapp_status="failed", bitrix_status="failed")
    return Outcome.ok()
