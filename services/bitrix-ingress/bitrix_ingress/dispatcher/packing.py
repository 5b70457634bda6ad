"""Pure building blocks of the dispatcher: MESSAGES[] items, calls, and packing calls into requests.

Throughput at Bitrix24's limit comes from packing, not from parallelism: a portal allows 2 requests/s,
so 100 customer messages/s need ~50 messages per request. Messages for one (connector, line) are
chunked into imconnector.send.messages calls of at most ``max_messages`` messages (and at most
``max_files`` messages with files, because Bitrix24 downloads files inside the request); several
calls (other lines, delivery statuses, CRM look-ups) are packed into one ``batch`` request of at most
``max_commands`` sub-calls, ``max_batch_messages`` messages and ``max_statuses`` delivery/read marks.
Order within a conversation is preserved: items keep their order inside a call, and calls keep their
order across requests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from zaptrix.v1 import events_pb2, mapper_pb2

from bitrix_ingress.text import connector_notice_text, file_name, quote_block, split_name, whatsapp_to_bbcode

SEND_MESSAGES = "imconnector.send.messages"
STATUS_DELIVERY = "imconnector.send.status.delivery"
STATUS_READING = "imconnector.send.status.reading"
IM_MESSAGE_ADD = "im.message.add"


def unix(ts: Timestamp | None) -> int:
    if ts is not None and (ts.seconds or ts.nanos):
        return int(ts.seconds)
    return int(datetime.now(UTC).timestamp())


def build_user(user_id: str, contact_name: str, phone: str | None = None) -> dict[str, Any]:
    """The external user. Always built the same way from (id, name, phone): Bitrix24 rewrites the user's
    name whenever the block changes, and an empty name would turn the customer into "Guest".

    ``user_id`` is the conversation's bitrix_user_id (opaque and stable through number and BSUID changes;
    conversations from before identity aliases keep their wa_id). ``phone``: the customer's number, only
    when known (a BSUID-only customer has none); None means the old rule, the id is the number."""
    name, last_name = split_name(contact_name)
    user = {"id": user_id, "name": name, "last_name": last_name}
    phone = user_id if phone is None else phone
    if phone:
        user["phone"] = f"+{phone}"
    return user


def customer_user(conv: mapper_pb2.Conversation) -> tuple[str, str | None]:
    """(user.id, phone) of a conversation; a mapper without identity aliases answers neither field."""
    if not conv.bitrix_user_id:
        return conv.wa_id, None
    return conv.bitrix_user_id, conv.customer_phone


def render_text(
    cm: events_pb2.CustomerMessage, reply_label: str = "", *, convert_formatting: bool = True
) -> str:
    text = cm.text
    if not text and cm.reaction_emoji:
        text = f"Reacted {cm.reaction_emoji}"
    if not text and cm.HasField("location"):
        loc = cm.location
        lines = [x for x in (loc.name, loc.address) if x]
        lines.append(loc.url or f"https://maps.google.com/?q={loc.latitude},{loc.longitude}")
        text = "📍 " + "\n".join(lines)
    body = whatsapp_to_bbcode(text, convert_formatting=convert_formatting) if text else ""
    missing = [m.kind or "file" for m in cm.media if not m.url]
    if missing:
        note = ", ".join(sorted(set(missing)))
        body = (body + "\n" if body else "") + f"[i]({note} could not be fetched from WhatsApp)[/i]"
    if cm.forwarded:
        body = "[i]Forwarded[/i]\n" + body
    if reply_label:
        body = quote_block(reply_label) + body
    if not body and not any(m.url for m in cm.media):
        body = f"[i]({cm.type or 'empty'} message)[/i]"
    return body


def build_files(cm: events_pb2.CustomerMessage) -> list[dict[str, str]]:
    return [
        {"url": m.url, "name": file_name(m.filename, m.mime_type, m.kind, m.media_id or cm.wamid)}
        for m in cm.media
        if m.url
    ]


def build_customer_item(
    cm: events_pb2.CustomerMessage,
    *,
    contact_name: str,
    external_chat_id: str,
    reply_label: str = "",
    chat_name: str = "",
    user: tuple[str, str | None] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"id": cm.wamid, "date": unix(cm.sent_at)}
    text = render_text(cm, reply_label)
    if text:
        message["text"] = text
    files = build_files(cm)
    if files:
        message["files"] = files
    chat: dict[str, Any] = {"id": external_chat_id}
    if chat_name:
        chat["name"] = chat_name
    user_id, phone = user or (cm.wa_id, None)
    return {"user": build_user(user_id, contact_name, phone), "message": message, "chat": chat}


def notice_id(event_id: str) -> str:
    return "zaptrix-notice-" + hashlib.sha256(event_id.encode()).hexdigest()[:24]


def build_notice_item(
    *,
    event_id: str,
    wa_id: str,
    contact_name: str,
    external_chat_id: str,
    body: str,
    phone: str | None = None,
) -> dict[str, Any]:
    """A failure notice posted through the connector (the fallback of the system message): lands in the
    conversation's chat under the customer's name, so its text says it is not theirs; it is never relayed
    back to WhatsApp (connector events fire only for operator messages), and skips the CRM tracker."""
    return {
        "user": build_user(wa_id, contact_name, phone),
        "message": {
            "id": notice_id(event_id),
            "date": int(datetime.now(UTC).timestamp()),
            "text": connector_notice_text(body),
            "disable_crm": "Y",
        },
        "chat": {"id": external_chat_id},
    }


def build_status_item(
    *, bitrix_chat_id: str, bitrix_message_id: str, wamids: list[str], external_chat_id: str, at: int | None
) -> dict[str, Any]:
    message: dict[str, Any] = {"id": wamids}
    if at is not None:
        message["date"] = at
    return {
        "im": {"chat_id": bitrix_chat_id, "message_id": bitrix_message_id},
        "message": message,
        "chat": {"id": external_chat_id},
    }


BSUID_RECIPIENT_NOT_ALLOWED = 131062  # Meta: "BSUID recipient not supported for this message"


def failure_text(
    error: events_pb2.GraphError | None, *, template_sent: bool = False, template: str = ""
) -> str:
    """The operator-facing reason an operator message did not reach WhatsApp."""
    code = error.code if error is not None else 0
    if code == 131047:
        reason = (
            "more than 24 hours have passed since the customer's last message, so WhatsApp only accepts "
            "a template message now."
        )
        if template_sent:
            reason += f" The re-engagement template{f' {template}' if template else ''} was sent instead."
        else:
            reason += (
                " Send an approved template with the WhatsApp templates button above the message box, or type"
                " /template NAME value | value; or wait until the customer writes."
            )
        return f"Not delivered to WhatsApp: {reason}"
    if code == BSUID_RECIPIENT_NOT_ALLOWED:
        return (
            "Not delivered to WhatsApp: this customer is known only by their WhatsApp username (no phone "
            "number shared), and WhatsApp does not allow this kind of message (e.g. authentication "
            "templates) to such a customer (error 131062). Reply with a normal message, or ask the "
            "customer to share their phone number."
        )
    if error is None:
        return "Not delivered to WhatsApp."
    detail = error.title or error.message or "unknown error"
    if error.details and error.details not in detail:
        detail = f"{detail}: {error.details}"
    return f"Not delivered to WhatsApp: {detail} (error {code})."


@dataclass(eq=False)
class Item:
    """One element of a call's MESSAGES[] (or a whole single-purpose call), owned by one work item;
    ``riders`` are further works answered by the same element (a status of the same message)."""

    owner: Any
    payload: dict[str, Any]
    has_files: bool = False
    riders: list[Any] = field(default_factory=list)

    @property
    def owners(self) -> list[Any]:
        return [self.owner, *self.riders]


def status_key(payload: dict[str, Any]) -> tuple[str, str]:
    """The Bitrix24 message a status item is about: (chat id, message id)."""
    im = payload.get("im") or {}
    return str(im.get("chat_id", "")), str(im.get("message_id", ""))


def merge_statuses(items: list[Item]) -> list[Item]:
    """One MESSAGES element per Bitrix24 message: a later status of the same message (its delivered and
    read webhooks in one poll batch, both reported as delivery because the link was not yet marked) rides
    on the first element and gets its answer; the message is reported once. Order is kept."""
    first: dict[tuple[str, str], Item] = {}
    out: list[Item] = []
    for item in items:
        key = status_key(item.payload)
        if key in first:
            first[key].riders.extend(item.owners)
            continue
        first[key] = item
        out.append(item)
    return out


@dataclass(eq=False)
class Call:
    """One REST method invocation. ``items`` fill ``MESSAGES``; other calls carry ``params`` only."""

    method: str
    base: dict[str, Any]
    items: list[Item] = field(default_factory=list)
    messages: bool = True

    def params(self) -> dict[str, Any]:
        if not self.messages:
            return dict(self.base)
        return {**self.base, "MESSAGES": [i.payload for i in self.items]}

    @property
    def weight(self) -> int:
        return max(1, len(self.items)) if self.messages else 1

    def split(self) -> tuple[Call, Call]:
        half = len(self.items) // 2
        return (
            Call(self.method, self.base, self.items[:half], self.messages),
            Call(self.method, self.base, self.items[half:], self.messages),
        )


def chunk(
    method: str, base: dict[str, Any], items: list[Item], *, max_messages: int, max_files: int
) -> list[Call]:
    """Cut a line's ordered items into calls of at most max_messages (max_files of them with files)."""
    calls: list[Call] = []
    current: list[Item] = []
    files = 0
    for item in items:
        if current and (len(current) >= max_messages or (item.has_files and files >= max_files)):
            calls.append(Call(method, base, current))
            current, files = [], 0
        current.append(item)
        files += 1 if item.has_files else 0
    if current:
        calls.append(Call(method, base, current))
    return calls


STATUS_METHODS = (STATUS_DELIVERY, STATUS_READING)


def pack(
    calls: list[Call],
    *,
    use_batch: bool,
    max_commands: int,
    max_messages: int,
    max_statuses: int | None = None,
) -> list[list[Call]]:
    """Group calls (in order) into HTTP requests: a list of one call is sent as is, more as a batch.

    With ``max_statuses``, status calls count against it instead of ``max_messages``: marking an existing
    message delivered or read is light next to a new message (no chat, no file download), and a reply
    brings two marks, so the message budget would cap a portal's receipts below its replies."""
    if not use_batch:
        return [[c] for c in calls]
    requests: list[list[Call]] = []
    current: list[Call] = []
    messages = statuses = 0
    for call in calls:
        is_status = max_statuses is not None and call.method in STATUS_METHODS
        m, st = (0, call.weight) if is_status else (call.weight, 0)
        if current and (
            len(current) >= max_commands
            or messages + m > max_messages
            or (max_statuses is not None and statuses + st > max_statuses)
        ):
            requests.append(current)
            current, messages, statuses = [], 0, 0
        current.append(call)
        messages += m
        statuses += st
    if current:
        requests.append(current)
    return requests
