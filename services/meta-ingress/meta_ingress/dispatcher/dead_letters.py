"""An operator's message, correction or re-engagement template that ends in the dead-letter topic (any
reason: a permanent Graph error, a rejected token, retries exhausted, a crash loop) becomes one notice in
the conversation's Bitrix24 chat: a SendFailure on the wa-to-b24 flow, which the bitrix dispatcher posts as
"⚠️ Zaptrix: your message '…' was not delivered: <reason>".

The reason shown is plain words from the fixed vocabulary below, chosen from the technical reason (the
dead-letter header); the technical text itself (Graph's details, exception texts) is never shown. The
notice's event id is the one every failure notice of that message uses, so the bitrix dispatcher shows at
most one failure notice per operator message, also when a dead letter is replayed and fails again.
"""

from __future__ import annotations

import re

from zaptrix.kafka import event_type
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcNotFound
from zaptrix.v1 import events_pb2

from meta_ingress.dispatcher.context import Context
from meta_ingress.dispatcher.notices import Notice
from meta_ingress.graph.errors import AUTH_CODES, MEDIA_CODES
from meta_ingress.metrics import DEAD_LETTER_NOTICES

log = get_logger(__name__)

PREVIEW_CHARS = 80
_EXHAUSTED = re.compile(r"retries exhausted after (\d+) attempts")
_GRAPH = re.compile(r"Graph API(?: [a-z]+)?:? (\d+|http_\d+)\b")
_BBCODE = re.compile(r"\[/?[a-zA-Z*]+(?:=[^\]]*)?\]")
_AUTHOR = re.compile(r"^\s*\[b\][^\[\]\n]{1,100}:\[/b\]\s*(?:\[br\])?")  # Bitrix24's "[b]Name:[/b] [br]"
_ACCOUNT_CODES = frozenset({3, 10, 368, 131031, 131042, 131045, 133010})

# The fixed vocabulary of what an operator is told.
WINDOW_CLOSED = "the 24-hour window is closed (WhatsApp accepts only a template until the customer writes)"
NOT_ON_WHATSAPP = "the number is not on WhatsApp"
FILE_TOO_LARGE = "the file is too large"
FILE_REFUSED = "WhatsApp could not process the attached file"
TOKEN_REJECTED = "WhatsApp rejected the channel's access token (an administrator must renew it)"
ACCOUNT_BLOCKED = "the WhatsApp Business account cannot send right now (an administrator must check it)"
UNKNOWN_CHAT = "this chat is not linked to a WhatsApp conversation"
CHANNEL_NOT_SET_UP = "the WhatsApp channel of this chat is not set up"
UNSUPPORTED = "WhatsApp does not support this kind of message"
OPTED_OUT = "the customer has stopped messages from this business"
CRASHED = "the gateway failed while sending it"
GENERIC = "the gateway could not deliver it"


def _graph_words(label: str, reason: str) -> str:
    if not label.isdigit():
        return TOKEN_REJECTED if label == "http_401" else f"WhatsApp refused it (HTTP {label[5:]})"
    code = int(label)
    if code == 131047:
        return WINDOW_CLOSED
    if code == 131026:
        return NOT_ON_WHATSAPP
    if code in AUTH_CODES:
        return TOKEN_REJECTED
    if code in MEDIA_CODES:
        return FILE_TOO_LARGE if re.search(r"(?i)too large|size", reason) else FILE_REFUSED
    if code == 131051:
        return UNSUPPORTED
    if code == 131050:
        return OPTED_OUT
    if code in _ACCOUNT_CODES or 200 <= code <= 299:
        return f"{ACCOUNT_BLOCKED[:-1]}; error {code})"
    return f"WhatsApp refused it (error {code})"


def plain_reason(reason: str) -> str:
    """What the operator reads, from the dead-letter reason (never the reason's own text)."""
    exhausted = _EXHAUSTED.match(reason)
    graph = _GRAPH.search(reason)
    if exhausted:
        return f"the gateway could not deliver it after {exhausted.group(1)} attempts"
    if graph:
        return _graph_words(graph.group(1), reason)
    if reason.startswith("unknown conversation"):
        return UNKNOWN_CHAT
    if reason.startswith("channel not configured"):
        return CHANNEL_NOT_SET_UP
    if re.search(r"(?i)crash|poison", reason):
        return CRASHED
    return GENERIC


def graph_code(reason: str) -> int:
    """The Graph error code in a dead-letter reason, 0 when there is none (for SendFailure.error)."""
    graph = _GRAPH.search(reason)
    return int(graph.group(1)) if graph and graph.group(1).isdigit() and not _EXHAUSTED.match(reason) else 0


def preview(bbcode: str, files: list[str]) -> str:
    """The first 80 characters of what the operator wrote (their name and BB-code removed), else the first
    file's name."""
    text = " ".join(_BBCODE.sub("", _AUTHOR.sub("", bbcode)).split()) or (files[0] if files else "")
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS].rstrip() + "…"


class DeadLetterNotices:
    """The meta dispatcher's dead-letter hook (EventConsumer ``on_dead_letter``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def __call__(self, env: events_pb2.Envelope, reason: str) -> None:
        kind = event_type(env)
        try:
            built = await self._notice(env, kind, reason)
        except RpcNotFound:
            built = None
        if built is None:
            DEAD_LETTER_NOTICES.labels(kind, "none").inc()
            log.info("dead letter without a chat to tell", event_id=env.event_id, event_type=kind)
            return
        notice, text = built
        error = None
        if code := graph_code(reason):
            error = events_pb2.GraphError(code=code)
        try:
            await self.ctx.notifier.send(notice, error, text)
        except Exception:
            DEAD_LETTER_NOTICES.labels(kind, "failed").inc()
            log.exception("dead-letter notice could not be produced", event_id=env.event_id)
            return
        DEAD_LETTER_NOTICES.labels(kind, "produced").inc()

    async def _notice(self, env: events_pb2.Envelope, kind: str, reason: str) -> tuple[Notice, str] | None:
        if reason.startswith("cross-tenant"):
            return None  # the event's portal does not own the chat: nobody may be told (tenancy rule)
        words = plain_reason(reason)
        if kind == "operator_message":
            om = env.operator_message
            conversation = await self.ctx.records.conversation(om.member_id, om.external_chat_id)
            about = om.bitrix_message_id or env.event_id  # a template picker send has no Bitrix24 message
            notice = Notice.about(om, f"wa-fail:{om.member_id}:{about}", conversation)
            what = preview(om.text_bbcode, [f.name for f in om.files])
            return notice, f"your message '{what}' was not delivered: {words}."
        if kind == "operator_message_edit":
            ed = env.operator_message_edit
            conversation = await self.ctx.records.conversation(ed.member_id, ed.external_chat_id)
            notice = Notice.about(
                ed, f"wa-fail:{ed.member_id}:{ed.bitrix_message_id}:edit:dead", conversation
            )
            what = preview(ed.text_bbcode, [])
            return notice, f"your correction '{what}' was not delivered: {words}."
        if kind == "window_closed":
            wc = env.window_closed
            conversation = await self.ctx.records.conversation_of(wc.phone_number_id, wc.wa_id)
            # line and connector are left to the bitrix dispatcher, which takes them from the channel
            notice = Notice.for_conversation(
                conversation, f"wa-fail:{conversation.member_id}:window:{wc.wamid}"
            )
            return notice, f"the re-engagement template was not delivered: {words}."
        return None  # reads, deletes, removed lines: nothing the operator is waiting for
