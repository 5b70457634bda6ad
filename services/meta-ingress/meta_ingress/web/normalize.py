"""Meta's `messages` webhook → one zaptrix.v1.Envelope per customer message and per status.

Pure functions, no I/O. The payload shapes follow whatsapp.md A2: ``entry[].changes[].value`` with
``metadata``, ``contacts``, ``messages``, ``statuses`` and ``errors``. Every documented message type gets a
readable ``text`` (what Bitrix24 cannot show natively: locations, contact cards, reactions, orders,
interactive replies, unsupported messages); the original message object travels in ``raw_json``.

Shape errors that make an item impossible to route or dedupe (no message id, no customer, a value that
is not an object) raise WebhookShapeError → HTTP 400. Meta then keeps the webhook and retries it for
days, so a payload we cannot read yet is not lost: it arrives again once we deploy a fix. Anything merely
unknown (a new message type, an unknown interactive reply) is normalized leniently instead.

Sizes: parse_envelope refuses more than ``max_updates`` entries, changes or messages+statuses and more than
``max_channels`` distinct numbers (WebhookTooLarge → 413); ``fit`` cuts an event that would not fit in one
Kafka record (a huge text, a huge unknown payload) with a visible "[truncated]" marker.
"""

from __future__ import annotations

import json
import mimetypes
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from zaptrix import identity
from zaptrix.v1 import events_pb2

from meta_ingress.sent_parts import CONFIRMING_STATUSES, opaque_of, sent_record_id
from meta_ingress.web.template_webhooks import (
    TEMPLATE_FIELDS,
    TemplateChange,
    TemplateShapeError,
    template_event,
)

MediaUrl = Callable[[str, str, str], str]  # (phone_number_id, media_id, filename) -> signed URL

_MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z, the end of google.protobuf.Timestamp
WINDOW_CLOSED = 131047  # the customer's 24-h window is closed (whatsapp.md A5, A6)
MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "video/3gpp": ".3gp",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/aac": ".aac",
    "audio/amr": ".amr",
    "audio/mp4": ".m4a",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
}


class WebhookShapeError(ValueError):
    """The payload is not a Cloud API webhook we can read; the reason is returned to the caller (400)."""


class WebhookTooLarge(WebhookShapeError):
    """More entries, changes, items or channels than one webhook may carry (413)."""


# The change fields read here (research-2026-12.md 1.6, 1.11); any other field is counted and ignored.
MESSAGES, ECHOES, PREFERENCES = "messages", "smb_message_echoes", "user_preferences"
STATE_SYNC, HISTORY = "smb_app_state_sync", "history"
READ_FIELDS = (MESSAGES, ECHOES, PREFERENCES, STATE_SYNC, HISTORY)
# The lists of a change value that count against ``max_updates``.
_ITEM_LISTS = ("messages", "statuses", "message_echoes", "user_preferences", "state_sync")
CHANGE_TYPES = ("edit", "revoke")  # a customer's edit or revoke of an earlier message (coexistence)


@dataclass
class Change:
    """One ``entry[].changes[]`` item of a field we read (``messages``, echoes, user preferences)."""

    phone_number_id: str
    display_phone_number: str
    value: dict[str, Any]
    field: str = MESSAGES


@dataclass
class Webhook:
    changes: list[Change] = field(default_factory=list)
    ignored_fields: list[str] = field(default_factory=list)  # changes of other fields (not ours)
    # WABA-level template webhooks (no phone number): status, quality, category (template_webhooks.py)
    templates: list[TemplateChange] = field(default_factory=list)

    @property
    def channels(self) -> list[str]:
        return list(dict.fromkeys(c.phone_number_id for c in self.changes))


@dataclass
class Normalized:
    envelopes: list[events_pb2.Envelope] = field(default_factory=list)
    messages: int = 0
    statuses: int = 0
    echoes: int = 0  # smb_message_echoes (coexistence): the business's own messages from the app
    consents: int = 0  # user_preferences (marketing stop / resume)
    changes: int = 0  # customer edits and revokes (coexistence)
    contact_syncs: int = 0  # smb_app_state_sync contacts
    # value-level errors[] (not tied to a message): (phone_number_id, code, title, details)
    system_errors: list[tuple[str, int, str, str]] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    # WindowClosed events (failed statuses with 131047), for the b24-to-wa flow: the meta dispatcher
    # sends the re-engagement template. The WhatsAppStatus of the same status stays in ``envelopes``.
    window_closed: list[events_pb2.Envelope] = field(default_factory=list)
    # Statuses echoing one of our part ids (biz_opaque_callback_data): (mapper record id, wamid), see
    # sent_parts.py; the web records them for the dispatcher's reconciliation of ambiguous sends.
    confirmations: list[tuple[str, str]] = field(default_factory=list)
    # HistoryMessage events (coexistence history import), for their own topic (wa-history): thousands of
    # old messages must never queue in front of live traffic.
    history: list[events_pb2.Envelope] = field(default_factory=list)
    # Template webhooks (TemplateStatusUpdate, ...), for the b24-to-wa flow: the meta dispatcher keeps the
    # template catalogue (mapper) current with them.
    templates: list[events_pb2.Envelope] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.envelopes) + len(self.window_closed) + len(self.history) + len(self.templates)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebhookShapeError(f"{where} must be a JSON object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise WebhookShapeError(f"{where} must be a JSON array")
    return value


def _str(value: Any) -> str:
    """A scalar as text ("" for missing or structured values)."""
    if value.__class__ is str:  # the usual case first (about 15 calls per message)
        return value
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a list (anything else: none). For optional, display-only sub-structures."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _sub(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _id(value: Any, where: str) -> str:
    text = _str(value).strip()
    if not text:
        raise WebhookShapeError(f"{where} is missing")
    if len(text) > 512:
        raise WebhookShapeError(f"{where} is too long")
    return text


def parse_envelope(payload: Any, max_updates: int = 1000, max_channels: int = 10) -> Webhook:
    """Validate the outer shape and find the channels (``metadata.phone_number_id``) it concerns.
    Raises WebhookTooLarge past ``max_updates`` entries, changes or items, or ``max_channels`` numbers.

    The ``entry[i].changes[j]`` paths of the error messages are built only on an error: formatting them for
    every change cost more than the checks themselves (docs/benchmarks.md, ingress)."""
    body = _obj(payload, "the webhook body")
    if body.get("object") != "whatsapp_business_account":
        raise WebhookShapeError(f"unexpected object {_str(body.get('object'))[:60]!r}")
    hook = Webhook()
    entries = _list(body.get("entry"), "entry")
    if len(entries) > max_updates:
        raise WebhookTooLarge(f"more than {max_updates} entries")
    changes = items = 0
    channels: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            _obj(entry, f"entry[{i}]")
        entry_changes = entry.get("changes")
        if not isinstance(entry_changes, list):
            entry_changes = _list(entry_changes, f"entry[{i}].changes")
        changes += len(entry_changes)
        if changes > max_updates:
            raise WebhookTooLarge(f"more than {max_updates} changes")
        for j, change in enumerate(entry_changes):
            value: Any = change.get("value") if isinstance(change, dict) else None
            metadata: Any = value.get("metadata") if isinstance(value, dict) else None
            if not isinstance(metadata, dict):  # the slow path only names what is wrong
                where = f"entry[{i}].changes[{j}]"
                change = _obj(change, where)
                value = _obj(change.get("value"), f"{where}.value")
            fld = _str(change.get("field"))
            if fld in TEMPLATE_FIELDS:  # WABA-level: no metadata, the entry id names the account
                waba = _id(entry.get("id"), f"entry[{i}].id")
                value = _obj(change.get("value"), f"entry[{i}].changes[{j}].value")
                hook.templates.append(TemplateChange(waba, _timestamp(entry.get("time")), fld, value))
                continue
            if fld not in READ_FIELDS:
                hook.ignored_fields.append(fld or "?")
                continue
            metadata = _obj(metadata, f"entry[{i}].changes[{j}].value.metadata")
            pnid = _id_at(metadata.get("phone_number_id"), i, j)
            channels.add(pnid)
            if len(channels) > max_channels:
                raise WebhookTooLarge(f"more than {max_channels} phone numbers")
            items += sum(len(v) for k in _ITEM_LISTS if isinstance(v := value.get(k), list))
            if fld == HISTORY:
                items += _history_size(value)
            if items > max_updates:
                raise WebhookTooLarge(f"more than {max_updates} messages and statuses (and other items)")
            hook.changes.append(Change(pnid, _str(metadata.get("display_phone_number")), value, fld))
    return hook


def _history_size(value: dict[str, Any]) -> int:
    """The chunks, threads and messages of a history change (what counts against ``max_updates``); shapes
    that are not lists count nothing here and are refused when normalized."""
    chunks = value.get("history")
    if not isinstance(chunks, list):
        return 0
    size = len(chunks)
    for chunk in chunks:
        threads = chunk.get("threads") if isinstance(chunk, dict) else None
        if isinstance(threads, list):
            size += len(threads)
            for thread in threads:
                messages = thread.get("messages") if isinstance(thread, dict) else None
                size += len(messages) if isinstance(messages, list) else 0
    return size


def _id_at(value: Any, i: int, j: int) -> str:
    """The change's phone_number_id, its path formatted only when it is missing or too long."""
    if (
        isinstance(value, str)
        and 0 < len(value) <= 512
        and not value[0].isspace()
        and not value[-1].isspace()
    ):
        return value
    return _id(value, f"entry[{i}].changes[{j}].value.metadata.phone_number_id")


def _timestamp(value: Any) -> int:
    text = _str(value)
    if text.isascii() and text.isdigit() and int(text) <= _MAX_TIMESTAMP:  # "²".isdigit() is True
        return int(text)
    return int(time.time())


def _size(value: Any) -> int:
    text = _str(value)
    return int(text) if text.isascii() and text.isdigit() and int(text) < 2**63 else 0


def _filename(kind: str, media_id: str, mime: str, given: str) -> str:
    if given:
        return given
    base = mime.split(";", 1)[0].strip().lower()
    ext = _EXTENSIONS.get(base) or mimetypes.guess_extension(base) or ""
    return f"{kind}-{media_id}{ext}"


def _num(value: Any) -> str:
    if isinstance(value, bool):
        return ""
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return _str(value)


def render_location(loc: dict[str, Any]) -> tuple[str, events_pb2.Location]:
    lat, lon = loc.get("latitude"), loc.get("longitude")
    name, address, url = _str(loc.get("name")), _str(loc.get("address")), _str(loc.get("url"))
    proto = events_pb2.Location(name=name, address=address, url=url)
    try:
        proto.latitude, proto.longitude = float(lat), float(lon)  # type: ignore[arg-type]
        coords = f"{_num(lat)}, {_num(lon)}"
        maps = f"https://maps.google.com/?q={_num(lat)},{_num(lon)}"
    except (TypeError, ValueError):
        coords, maps = "", ""
    label = ", ".join(p for p in (name, address) if p)
    parts = ["📍 Location:"]
    if label:
        parts.append(label)
    if coords:
        parts.append(f"({coords})")
    if maps:
        parts.append(maps)
    text = " ".join(parts)
    if url:
        text += f"\n{url}"
    return text, proto


def render_contacts(cards: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for card in cards:
        name = _sub(card.get("name"))
        full = _str(name.get("formatted_name")) or " ".join(
            p for p in (_str(name.get("first_name")), _str(name.get("last_name"))) if p
        )
        lines = [f"👤 Contact: {full or 'unnamed'}"]
        for phone in _dicts(card.get("phones")):
            number = _str(phone.get("phone")) or _str(phone.get("wa_id"))
            tags = [t for t in (_str(phone.get("type")), "WhatsApp" if phone.get("wa_id") else "") if t]
            lines.append(f"📞 {number}" + (f" ({', '.join(tags)})" if tags else ""))
        lines += [f"✉️ {_str(e.get('email'))}" for e in _dicts(card.get("emails")) if e.get("email")]
        org = _sub(card.get("org"))
        company = ", ".join(_str(org.get(k)) for k in ("company", "department", "title") if org.get(k))
        if company:
            lines.append(f"🏢 {company}")
        lines += [f"🔗 {_str(u.get('url'))}" for u in _dicts(card.get("urls")) if u.get("url")]
        for addr in _dicts(card.get("addresses")):
            text = ", ".join(
                _str(addr.get(k)) for k in ("street", "city", "state", "zip", "country") if addr.get(k)
            )
            if text:
                lines.append(f"🏠 {text}")
        if card.get("birthday"):
            lines.append(f"🎂 {_str(card.get('birthday'))}")
        out.append("\n".join(lines))
    return "\n\n".join(out) or "👤 Contact card (empty)"


def render_interactive(obj: dict[str, Any]) -> str:
    kind = _str(obj.get("type"))
    reply = _sub(obj.get(kind))
    if kind in ("button_reply", "list_reply"):
        title, description = _str(reply.get("title")), _str(reply.get("description"))
        text = title or _str(reply.get("id")) or f"[{kind}]"
        return f"{text} ({description})" if description else text
    if kind == "nfm_reply":  # WhatsApp Flows: the customer submitted a form
        lines = [f"📝 Form submitted: {_str(reply.get('name')) or 'flow'}"]
        body = _str(reply.get("body"))
        if body and body.lower() != "sent":
            lines.append(body)
        try:
            answers = json.loads(_str(reply.get("response_json")) or "{}")
        except ValueError:
            answers = {}
        if isinstance(answers, dict):
            lines += [f"• {k}: {_str(v) or json.dumps(v, ensure_ascii=False)}" for k, v in answers.items()]
        return "\n".join(lines)
    title = _str(reply.get("title")) or _str(reply.get("body"))
    return f"[Interactive reply: {kind or 'unknown'}]" + (f" {title}" if title else "")


def render_order(order: dict[str, Any]) -> str:
    items = _dicts(order.get("product_items"))
    head = f"🛒 Order: {len(items)} item{'s' if len(items) != 1 else ''}"
    if order.get("catalog_id"):
        head += f" (catalog {_str(order.get('catalog_id'))})"
    lines = [head]
    for item in items:
        line = f"• {_num(item.get('quantity')) or '1'} x {_str(item.get('product_retailer_id'))}"
        if item.get("item_price") is not None:
            line += f" @ {_num(item.get('item_price'))} {_str(item.get('currency'))}".rstrip()
        lines.append(line)
    if order.get("text"):
        lines.append(_str(order.get("text")))
    return "\n".join(lines)


def _errors(value: Any) -> list[events_pb2.GraphError]:
    out = []
    for err in _dicts(value):
        data = _sub(err.get("error_data"))
        code = _str(err.get("code"))
        out.append(
            events_pb2.GraphError(
                code=int(code) if code.isascii() and code.isdigit() and int(code) < 2**31 else 0,
                title=_str(err.get("title")),
                message=_str(err.get("message")),
                details=_str(data.get("details")),
            )
        )
    return out


def _error_text(errors: list[events_pb2.GraphError]) -> str:
    parts = []
    for e in errors:
        detail = e.details or e.message
        parts.append(f"{e.code}: {e.title}" + (f" ({detail})" if detail and detail != e.title else ""))
    return "; ".join(parts)


def _referral_text(ref: dict[str, Any]) -> str:
    headline, body, url = _str(ref.get("headline")), _str(ref.get("body")), _str(ref.get("source_url"))
    source = _str(ref.get("source_type"))
    text = "📣 Came from " + ("an ad" if source in ("ad", "") else f"a {source}")
    if headline or body:
        text += ": " + " — ".join(p for p in (headline, body) if p)
    if url:
        text += f" {url}"
    return text


def _envelope(
    event_id: str, phone_number_id: str, customer: str, at: int, **kind: Any
) -> events_pb2.Envelope:
    """An event from WhatsApp, keyed by its conversation (``<phone_number_id>:<customer>``)."""
    env = events_pb2.Envelope(
        event_id=event_id,
        conversation_key=f"{phone_number_id}:{customer}",
        source=events_pb2.PLATFORM_WHATSAPP,
        **kind,
    )
    env.occurred_at.seconds = at
    return env


def _raw_json(msg: dict[str, Any]) -> str:
    """Meta's message object as compact JSON, non-ASCII kept as is."""
    try:
        return orjson.dumps(msg).decode()
    except orjson.JSONEncodeError:  # integers beyond 64 bits or lone surrogates: never from orjson.loads
        return json.dumps(msg, ensure_ascii=False, separators=(",", ":"))


def customer_message(
    change: Change,
    msg: dict[str, Any],
    names: dict[str, ContactIdentity],
    media_url: MediaUrl,
    default_customer: str,
) -> events_pb2.Envelope:
    pnid = change.phone_number_id
    wamid = _id(msg.get("id"), "messages[].id")
    from_user = _bsuid(msg.get("from_user_id"))
    customer = _str(msg.get("from")) or from_user or default_customer
    if not customer:
        raise WebhookShapeError(f"message {wamid[:80]} names no customer (from / from_user_id / contacts[])")
    if len(customer) > 512:  # it is part of the Kafka key
        raise WebhookShapeError(f"message {wamid[:80]}: the customer id is too long")
    who = names.get(customer) or names.get(from_user) or ContactIdentity()
    # The key is the phone when Meta shares it, else the BSUID (a BSUID-only customer).
    phone = customer if not identity.is_bsuid(customer) else who.phone
    if phone:
        customer = phone
    kind = _str(msg.get("type")) or "unknown"
    out = events_pb2.CustomerMessage(
        phone_number_id=pnid,
        display_phone_number=change.display_phone_number,
        wa_id=customer,
        profile_name=who.name,
        wamid=wamid,
        type=kind,
        raw_json=_raw_json(msg),
        user_id=from_user or who.user_id or ("" if phone else customer),
        parent_user_id=who.parent_user_id,
        username=who.username,
        phone_known=bool(phone),
    )
    sent_at = _timestamp(msg.get("timestamp"))
    out.sent_at.seconds = sent_at
    text = ""
    body = _sub(msg.get(kind))
    errors = _errors(msg.get("errors"))
    if kind == "text":
        text = _str(body.get("body"))
    elif kind in MEDIA_TYPES:
        media_id = _id(body.get("id"), f"messages[].{kind}.id")
        mime = _str(body.get("mime_type"))
        media_kind = "voice" if kind == "audio" and body.get("voice") is True else kind
        filename = _filename(media_kind, media_id, mime, _str(body.get("filename")))
        caption = _str(body.get("caption"))
        out.media.append(
            events_pb2.Media(
                media_id=media_id,
                mime_type=mime,
                sha256=_str(body.get("sha256")),
                filename=filename,
                caption=caption,
                kind=media_kind,
                url=media_url(pnid, media_id, filename),
                file_size=_size(body.get("file_size")),
            )
        )
        text = caption
    elif kind == "location":
        text, location = render_location(body)
        out.location.CopyFrom(location)
    elif kind == "contacts":
        text = render_contacts(_dicts(msg.get("contacts")))
    elif kind == "interactive":
        text = render_interactive(body)
    elif kind == "button":
        text = _str(body.get("text")) or _str(body.get("payload")) or "[button]"
    elif kind == "reaction":
        emoji = _str(body.get("emoji"))
        out.reaction_emoji = emoji
        out.reaction_to_wamid = _str(body.get("message_id"))
        text = f"Reacted {emoji} to your message" if emoji else "Removed a reaction from your message"
    elif kind == "order":
        text = render_order(body)
    elif kind == "system":
        text = _str(body.get("body")) or f"[System message: {_str(body.get('type')) or 'unknown'}]"
    elif kind == "request_welcome":
        text = "👋 The customer opened the chat"
    else:  # "unsupported" and any type this code does not know yet
        shown = _str(body.get("type")) if kind == "unsupported" else kind
        if not shown and errors:
            shown = errors[0].title or str(errors[0].code)
        text = f"[Unsupported message type: {shown or kind}]"
    if errors:
        text = f"{text}\n⚠️ {_error_text(errors)}" if text else f"⚠️ {_error_text(errors)}"
    context = _sub(msg.get("context"))
    out.reply_to_wamid = _str(context.get("id"))
    out.forwarded = bool(context.get("forwarded") or context.get("frequently_forwarded"))
    product = context.get("referred_product")
    if isinstance(product, dict):
        text += f"\n🛍 Asked about product {_str(product.get('product_retailer_id'))}"
        if product.get("catalog_id"):
            text += f" (catalog {_str(product.get('catalog_id'))})"
    referral = msg.get("referral")
    if isinstance(referral, dict):
        text = f"{text}\n\n{_referral_text(referral)}" if text else _referral_text(referral)
    out.text = text.strip()
    return _envelope(f"wa:{wamid}", pnid, customer, sent_at, customer_message=out)


def status_event(change: Change, st: dict[str, Any]) -> events_pb2.Envelope:
    pnid = change.phone_number_id
    wamid = _id(st.get("id"), "statuses[].id")
    status = _id(st.get("status"), "statuses[].status").lower()
    user_id = _bsuid(st.get("recipient_user_id"))
    recipient = _str(st.get("recipient_id")) or user_id
    if len(recipient) > 512:  # it is part of the Kafka key
        raise WebhookShapeError(f"status {wamid[:80]}: the recipient id is too long")
    at = _timestamp(st.get("timestamp"))
    out = events_pb2.WhatsAppStatus(
        phone_number_id=pnid,
        wa_id=recipient,
        wamid=wamid,
        status=status,
        user_id=user_id,
        parent_user_id=_bsuid(st.get("recipient_parent_user_id")),
    )
    out.at.seconds = at
    out.errors.extend(_errors(st.get("errors")))
    pricing = _pricing(st.get("pricing"))
    if pricing is not None:
        out.pricing.CopyFrom(pricing)
    return _envelope(f"wa-status:{wamid}:{status}", pnid, recipient, at, whatsapp_status=out)


def _pricing_word(value: Any) -> str:
    """A pricing enum value as the ledger keeps it: lower case, short, [a-z0-9_] only (it becomes a
    database key and a metric label; anything else is kept as "other", never as what was sent)."""
    text = _str(value).strip().lower()
    if not text:
        return ""
    return text if len(text) <= 40 and all(c.isalnum() or c == "_" for c in text) else "other"


def _pricing(value: Any) -> events_pb2.Pricing | None:
    """statuses[].pricing (billable, pricing_model, category, type), None when absent or not an object.
    `billable` is a JSON boolean; a string "true" (seen from proxies) counts too."""
    if not isinstance(value, dict):
        return None
    billable = value.get("billable")
    return events_pb2.Pricing(
        billable=billable is True or (isinstance(billable, str) and billable.lower() == "true"),
        pricing_model=_pricing_word(value.get("pricing_model")).upper(),
        category=_pricing_word(value.get("category")),
        type=_pricing_word(value.get("type")),
    )


def business_echo(change: Change, echo: dict[str, Any], media_url: MediaUrl) -> events_pb2.Envelope:
    """A message the business sent from the WhatsApp Business app (coexistence): same object as a customer
    message but ``from`` is the business and ``to`` the customer. Rendered with the customer-message
    rules; a media file is named, not attached (it is the business's own file, already on its phone)."""
    customer = _id(echo.get("to"), "message_echoes[].to")
    if len(customer) > 512:
        raise WebhookShapeError("message_echoes[].to is too long")
    rendered = customer_message(change, {**echo, "from": customer}, {}, media_url, "").customer_message
    text = rendered.text
    for m in rendered.media:
        label = f"📎 {m.kind}: {m.filename}"
        text = f"{label}\n{text}" if text else label
    out = events_pb2.BusinessEcho(
        phone_number_id=change.phone_number_id,
        wa_id=customer,
        wamid=rendered.wamid,
        sent_at=rendered.sent_at,
        type=rendered.type,
        text=text or f"[{rendered.type}]",
    )
    return _envelope(
        f"wa-echo:{rendered.wamid}", change.phone_number_id, customer, out.sent_at.seconds, business_echo=out
    )


def customer_change(
    change: Change, msg: dict[str, Any], media_url: MediaUrl, default_customer: str
) -> events_pb2.Envelope:
    """``type: edit`` {edit: {original_message_id, message: {type, <type>: ...}}} or ``type: revoke``
    {revoke: {original_message_id}}: the customer changed an earlier message (coexistence numbers only)."""
    action = _str(msg.get("type"))
    wamid = _id(msg.get("id"), "messages[].id")
    customer = _id(msg.get("from") or default_customer, f"message {wamid[:80]}: from")
    if len(customer) > 512:
        raise WebhookShapeError(f"message {wamid[:80]}: the customer id is too long")
    body = _sub(msg.get(action))
    original = _id(body.get("original_message_id"), f"messages[].{action}.original_message_id")
    at = _timestamp(msg.get("timestamp"))
    text = ""
    if action == "edit":
        inner = _sub(body.get("message"))
        rendered = customer_message(change, {**inner, "id": wamid, "from": customer}, {}, media_url, "")
        text = rendered.customer_message.text or "[edited]"
    out = events_pb2.CustomerMessageChange(
        phone_number_id=change.phone_number_id,
        wa_id=customer,
        wamid=wamid,
        original_wamid=original,
        action=action,
        text=text,
    )
    out.at.seconds = at
    return _envelope(
        f"wa-{action}:{wamid}", change.phone_number_id, customer, at, customer_message_change=out
    )


def contact_name_sync(change: Change, item: dict[str, Any]) -> events_pb2.Envelope | None:
    """One ``state_sync[]`` item {type: contact, contact: {full_name, first_name, phone_number}, action};
    other types (none documented yet) are skipped."""
    if _str(item.get("type")) != "contact":
        return None
    contact = _sub(item.get("contact"))
    digits = "".join(ch for ch in _str(contact.get("phone_number")) if ch.isascii() and ch.isdigit())
    if not digits or len(digits) > 32:
        raise WebhookShapeError("state_sync[].contact.phone_number is missing or not a phone number")
    action = _str(item.get("action")).lower()
    if action not in ("add", "remove"):
        raise WebhookShapeError(f"state_sync[].action must be add or remove, not {action[:20]!r}")
    name = _str(contact.get("full_name")) or _str(contact.get("first_name"))
    at = _timestamp(_sub(item.get("metadata")).get("timestamp"))
    out = events_pb2.ContactNameSync(
        phone_number_id=change.phone_number_id, wa_id=digits, full_name=name[:256], action=action
    )
    out.at.seconds = at
    event_id = f"wa-contact:{change.phone_number_id}:{digits}:{at}:{action}"
    return _envelope(event_id, change.phone_number_id, digits, at, contact_name_sync=out)


_CONSENT_VALUES = ("stop", "resume")


def consent_change(change: Change, pref: dict[str, Any]) -> events_pb2.Envelope:
    """One ``user_preferences[]`` item: {wa_id, detail, category, value: stop|resume, timestamp}."""
    customer = _id(pref.get("wa_id"), "user_preferences[].wa_id")
    category = _id(pref.get("category"), "user_preferences[].category")[:64]
    value = _id(pref.get("value"), "user_preferences[].value").lower()
    if value not in _CONSENT_VALUES:
        raise WebhookShapeError(f"user_preferences[].value must be stop or resume, not {value[:20]!r}")
    at = _timestamp(pref.get("timestamp"))
    out = events_pb2.ConsentChange(
        phone_number_id=change.phone_number_id,
        wa_id=customer,
        category=category,
        value=value,
        detail=_str(pref.get("detail"))[:1000],
    )
    out.at.seconds = at
    event_id = f"wa-consent:{change.phone_number_id}:{customer}:{category}:{at}:{value}"
    return _envelope(event_id, change.phone_number_id, customer, at, consent_change=out)


HISTORY_STATUSES = ("DELIVERED", "ERROR", "PENDING", "PLAYED", "READ", "SENT")


def _chunk_number(value: Any, low: int, high: int, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise WebhookShapeError(f"{where} must be a whole number from {low} to {high}")
    return value


def history_messages(change: Change, chunk: dict[str, Any], media_url: MediaUrl) -> list[events_pb2.Envelope]:
    """One ``history[]`` chunk {metadata: {phase, chunk_order, progress}, threads: [{id, messages[]}]}
    → one HistoryMessage per message, oldest first within each thread (keyed by the thread's customer).
    A chunk carrying ``errors`` instead (the business declined sharing) has no threads: reported by the
    caller as a system error. Messages are rendered with the customer-message rules; media arrives as
    ``media_placeholder`` (its ids only in separate webhooks, for the last 14 days) and is named."""
    meta = _sub(chunk.get("metadata"))
    phase = _chunk_number(meta.get("phase"), 0, 2, "history[].metadata.phase")
    order = _chunk_number(meta.get("chunk_order"), 0, 2**31 - 1, "history[].metadata.chunk_order")
    progress = _chunk_number(meta.get("progress"), 0, 100, "history[].metadata.progress")
    out: list[events_pb2.Envelope] = []
    for i, thread in _items(chunk, "threads"):
        customer = _id(thread.get("id"), f"history[].threads[{i}].id")
        if len(customer) > 128:  # part of the Kafka key
            raise WebhookShapeError(f"history[].threads[{i}].id is too long")
        envs = []
        for _, msg in _items(thread, "messages"):
            sender = _str(msg.get("from"))
            rendered = customer_message(change, {**msg, "from": customer}, {}, media_url, "").customer_message
            text = rendered.text
            for m in rendered.media:
                label = f"📎 {m.kind}: {m.filename}"
                text = f"{label}\n{text}" if text else label
            if rendered.type == "media_placeholder":  # its file is not part of the import
                text = "📎 a media file (not imported)"
            status = _str(_sub(msg.get("history_context")).get("status")).upper()
            item = events_pb2.HistoryMessage(
                phone_number_id=change.phone_number_id,
                wa_id=customer,
                wamid=rendered.wamid,
                sent_at=rendered.sent_at,
                from_business=(bool(sender) and sender != customer) or "to" in msg,
                type=rendered.type,
                text=text or f"[{rendered.type}]",
                status=status if status in HISTORY_STATUSES else "",
                phase=phase,
                chunk_order=order,
                progress=progress,
            )
            envs.append(
                _envelope(
                    f"wa-history:{rendered.wamid}",
                    change.phone_number_id,
                    customer,
                    item.sent_at.seconds,
                    history_message=item,
                )
            )
        envs.sort(key=lambda e: e.occurred_at.seconds)  # stable: same-second messages keep Meta's order
        out.extend(envs)
    return out


def window_closed_event(st: events_pb2.WhatsAppStatus) -> events_pb2.Envelope | None:
    """A WindowClosed event when Meta reports 131047 (24-h window closed) for a send it had accepted."""
    if st.status != "failed" or not st.wa_id or not any(e.code == WINDOW_CLOSED for e in st.errors):
        return None
    window = events_pb2.WindowClosed(
        phone_number_id=st.phone_number_id, wa_id=st.wa_id, wamid=st.wamid, at=st.at
    )
    return _envelope(
        f"wa-window:{st.wamid}", st.phone_number_id, st.wa_id, st.at.seconds, window_closed=window
    )


IDENTITY_CHANGES = ("user_changed_number", "user_changed_user_id")


def identity_change_event(change: Change, msg: dict[str, Any]) -> events_pb2.Envelope | None:
    """A CustomerIdentityChange for a system message saying the customer's number or BSUID changed
    (Meta's system messages reference: no contacts array; system.{type, body, wa_id, user_id,
    parent_user_id, previous_user_id, previous_parent_user_id}); None for any other message."""
    system = _sub(msg.get("system"))
    change_type = _str(system.get("type"))
    if _str(msg.get("type")) != "system" or change_type not in IDENTITY_CHANGES:
        return None
    wamid = _id(msg.get("id"), "messages[].id")
    previous_phone = _str(msg.get("from"))
    new_phone = _str(system.get("wa_id")) or _str(system.get("new_wa_id"))
    # Anything not shaped as documented is dropped: a message naming no previous or no new identity is
    # shown to the operator as the system text it is (what Zaptrix did before identity changes).
    previous_phone = previous_phone if identity.is_phone(previous_phone) else ""
    new_phone = new_phone if identity.is_phone(new_phone) else ""
    out = events_pb2.CustomerIdentityChange(
        phone_number_id=change.phone_number_id,
        change_type=change_type,
        wamid=wamid,
        previous_wa_id=previous_phone,
        previous_user_id=_bsuid(system.get("previous_user_id")) or _bsuid(msg.get("from_user_id")),
        previous_parent_user_id=_bsuid(system.get("previous_parent_user_id")),
        wa_id=new_phone if change_type == "user_changed_number" else "",
        user_id=_bsuid(system.get("user_id")),
        parent_user_id=_bsuid(system.get("parent_user_id")),
        text=_str(system.get("body"))[:1024],
    )
    previous = out.previous_wa_id or out.previous_user_id
    if not previous or not (out.user_id or out.wa_id):
        return None
    at = _timestamp(msg.get("timestamp"))
    # Keyed by the previous identity: behind the person's earlier messages on the same partition.
    return _envelope(
        f"wa-identity:{wamid}", change.phone_number_id, previous, at, customer_identity_change=out
    )


def _confirmation(st: events_pb2.WhatsAppStatus, opaque: Any) -> tuple[str, str] | None:
    """(sent record id, wamid) for a sent/delivered/read status echoing a part id we could have set."""
    if st.status not in CONFIRMING_STATUSES or not isinstance(opaque, str) or opaque_of(opaque) is None:
        return None
    record_id = sent_record_id(st.phone_number_id, opaque)
    return (record_id, st.wamid) if record_id is not None else None


@dataclass(frozen=True, slots=True)
class ContactIdentity:
    """What contacts[] says about one customer (2026: wa_id may be omitted; user_id is the BSUID)."""

    name: str = ""
    phone: str = ""
    user_id: str = ""
    parent_user_id: str = ""
    username: str = ""


def _bsuid(value: Any) -> str:
    """A BSUID, or "" for anything that is not one (hostile input never reaches a key or the mapper)."""
    text = _str(value)
    return text if text and identity.is_bsuid(text) else ""


def _contact_names(value: dict[str, Any]) -> tuple[dict[str, ContactIdentity], str]:
    """Each contact under its phone and its BSUID (a message names its customer by either)."""
    found: dict[str, ContactIdentity] = {}
    first = ""
    for i, contact in enumerate(_list(value.get("contacts"), "value.contacts")):
        if not isinstance(contact, dict):
            _obj(contact, f"value.contacts[{i}]")
        profile = _sub(contact.get("profile"))
        username = _str(profile.get("username"))
        who = ContactIdentity(
            name=_str(profile.get("name")) or username,
            phone=_str(contact.get("wa_id")),
            user_id=_bsuid(contact.get("user_id")),
            parent_user_id=_bsuid(contact.get("parent_user_id")),
            username=username if identity.is_username(username) else "",
        )
        for key in {who.phone, who.user_id} - {""}:
            found[key] = who
        first = first or who.phone or who.user_id
    return found, first


def _items(value: dict[str, Any], key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    items = value.get(key)
    if items is None:
        return
    for i, item in enumerate(_list(items, f"value.{key}")):
        if not isinstance(item, dict):
            _obj(item, f"value.{key}[{i}]")  # raises; the path is formatted only here
        yield i, item


def normalize(hook: Webhook, media_url: MediaUrl) -> Normalized:
    try:
        return _normalize(hook, media_url)
    except UnicodeEncodeError as exc:  # JSON may escape a lone surrogate ("\ud800"); protobuf wants UTF-8
        raise WebhookShapeError("text that is not valid Unicode (a lone surrogate)") from exc


def _normalize(hook: Webhook, media_url: MediaUrl) -> Normalized:
    result = Normalized()
    for template in hook.templates:
        try:
            result.templates.append(template_event(template))
        except TemplateShapeError as exc:
            raise WebhookShapeError(str(exc)) from None
    for change in hook.changes:
        value = change.value
        if change.field == ECHOES:
            for _, echo in _items(value, "message_echoes"):
                result.envelopes.append(business_echo(change, echo, media_url))
                result.echoes += 1
            continue
        if change.field == STATE_SYNC:
            for _, item in _items(value, "state_sync"):
                env = contact_name_sync(change, item)
                if env is not None:
                    result.envelopes.append(env)
                    result.contact_syncs += 1
            continue
        if change.field == HISTORY:
            for _, chunk in _items(value, "history"):
                result.history.extend(history_messages(change, chunk, media_url))
                for err in _errors(chunk.get("errors")):  # e.g. the business declined sharing its history
                    result.system_errors.append(
                        (change.phone_number_id, err.code, err.title, err.details or err.message)
                    )
            continue
        if change.field == PREFERENCES:
            for _, pref in _items(value, "user_preferences"):
                result.envelopes.append(consent_change(change, pref))
                result.consents += 1
            continue
        names, first = _contact_names(value)
        # Only a single-contact change may fall back to contacts[0] for a message without "from".
        default_customer = first if len(names) == 1 else ""
        for _, msg in _items(value, "messages"):
            change_env = identity_change_event(change, msg)
            if change_env is not None:
                result.envelopes.append(change_env)
                result.messages += 1
                result.types.append("system")
                continue
            if _str(msg.get("type")) in CHANGE_TYPES:
                result.envelopes.append(customer_change(change, msg, media_url, default_customer))
                result.changes += 1
                continue
            env = customer_message(change, msg, names, media_url, default_customer)
            result.envelopes.append(env)
            result.messages += 1
            result.types.append(env.customer_message.type)
        for _, st in _items(value, "statuses"):
            env = status_event(change, st)
            result.envelopes.append(env)
            result.statuses += 1
            window = window_closed_event(env.whatsapp_status)
            if window is not None:
                result.window_closed.append(window)
            confirmation = _confirmation(env.whatsapp_status, st.get("biz_opaque_callback_data"))
            if confirmation is not None:
                result.confirmations.append(confirmation)
        for err in _errors(value.get("errors")):
            result.system_errors.append(
                (change.phone_number_id, err.code, err.title, err.details or err.message)
            )
    return result


# --- one event, one Kafka record -----------------------------------------------------------------------
TRUNCATED = "[truncated]"
# Routing and dedupe keys are bounded where they are read (_id, 512 chars) and never cut here.
_KEEP = frozenset(
    {"event_id", "conversation_key", "phone_number_id", "wa_id", "wamid", "media_id", "url", "status", "type"}
    | {
        "user_id",
        "parent_user_id",
        "username",
        "previous_wa_id",
        "previous_user_id",
        "previous_parent_user_id",
    }
)


def _cuttable(msg: Message) -> Iterator[tuple[Message, str, int]]:
    """(message, field name, UTF-8 size) of every set, singular string field that may be shortened."""
    for fd, val in msg.ListFields():
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for sub in val if fd.is_repeated else [val]:
                yield from _cuttable(sub)
        elif fd.type == FieldDescriptor.TYPE_STRING and not fd.is_repeated and fd.name not in _KEEP:
            yield msg, fd.name, len(val.encode())


def _cut(text: str, max_bytes: int) -> str:
    kept = text.encode()[: max(0, max_bytes)].decode("utf-8", "ignore").rstrip()
    return f"{kept}\n{TRUNCATED}" if kept else TRUNCATED


def _water_level(sizes: list[int], excess: int) -> int:
    """The largest cap C such that cutting every size above C to C removes at least ``excess`` bytes."""
    lo, hi = 0, max(sizes)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(s - mid for s in sizes if s > mid) >= excess:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit(env: events_pb2.Envelope, max_bytes: int) -> bool:
    """Shorten the event in place until it serializes to at most ``max_bytes``; True when it was cut.

    raw_json (an audit copy of Meta's message) goes first, replaced by a small note; then the largest text
    fields are cut to one common length, each ending with the "[truncated]" marker the operator sees."""
    excess = env.ByteSize() - max_bytes
    if excess <= 0:
        return False
    if env.HasField("customer_message") and env.customer_message.raw_json:
        cm = env.customer_message
        cm.raw_json = json.dumps({"truncated": True, "bytes": len(cm.raw_json.encode())})
        excess = env.ByteSize() - max_bytes
    for _ in range(4):  # a second round only absorbs markers and length prefixes
        if excess <= 0:
            break
        fields = list(_cuttable(env))
        if not fields:
            break
        cap = _water_level([size for _, _, size in fields], excess + len(TRUNCATED) * len(fields) + 64)
        for msg, name, size in fields:
            if size > cap:  # every long field keeps the same share: a long name does not erase the text
                setattr(msg, name, _cut(getattr(msg, name), cap))
        excess = env.ByteSize() - max_bytes
    return True
