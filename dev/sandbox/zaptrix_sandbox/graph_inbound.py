"""Builds the documented inbound `messages` webhook items for simulated customer messages (whatsapp.md A2)."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import media_samples
from .graph_settings import Channel
from .graph_state import GraphState, Media, new_wamid

MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
Kind = Literal[
    "text",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "button",
    "reaction",
    "unsupported",
]


class MediaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    caption: str | None = None
    filename: str | None = None
    mime_type: str | None = None
    content_b64: str | None = None  # own bytes; otherwise a tiny generated sample
    voice: bool = True  # audio only
    animated: bool = False  # sticker only


class InboundSpec(BaseModel):
    """Body of POST /_sandbox/customers/{wa_id}/messages (and of each item of POST /_sandbox/webhooks)."""

    model_config = ConfigDict(extra="forbid")
    type: Kind | None = None
    wa_id: str | None = None  # batch items only
    name: str = "Sandbox Customer"
    phone_number_id: str | None = None
    user_id: str | None = None  # 2026 business-scoped user id (BSUID), added to contacts[] when given
    parent_user_id: str | None = None  # parent BSUID (US.ENT.…), added to contacts[] when given
    username: str | None = None  # contacts[].profile.username
    # A customer who shares no phone number (2026): no messages[].from and no contacts[].wa_id, only
    # from_user_id / contacts[].user_id (needs user_id; the path's wa_id is then the BSUID).
    phone_hidden: bool = False
    text: str | None = None
    media: MediaSpec | None = None
    location: dict[str, Any] | None = None
    contacts: list[dict[str, Any]] | None = None
    interactive: dict[str, Any] | None = None  # {type: button_reply|list_reply, id, title, description?}
    button: dict[str, Any] | None = None  # {payload, text}
    reaction: dict[str, Any] | None = None  # {message_id, emoji}
    context: dict[str, Any] | None = None  # {message_id, forwarded?, frequently_forwarded?}
    referral: dict[str, Any] | None = None
    unsupported: dict[str, Any] | None = None
    timestamp: int | None = None
    signature: Literal["valid", "invalid", "missing"] = "valid"

    def kind(self) -> str:
        if self.type:
            return str(self.type)
        for name in ("location", "contacts", "interactive", "button", "reaction", "unsupported"):
            if getattr(self, name) is not None:
                return name
        return "image" if self.media is not None else "text"


def _media(spec: InboundSpec, kind: str, channel: Channel, state: GraphState) -> dict[str, Any]:
    m = spec.media or MediaSpec()
    mime = m.mime_type or media_samples.DEFAULT_MIME[kind]
    if m.content_b64 is not None:
        data = base64.b64decode(m.content_b64)
        filename = m.filename
    else:
        sample = media_samples.for_mime(mime, m.filename)
        data, filename = sample.data, sample.filename
    media = Media(
        id=state.new_media_id(),
        phone_number_id=channel.phone_number_id,
        data=data,
        mime_type=mime,
        filename=filename,
    )
    state.media[media.id] = media
    # Webhooks carry sha256 base64-encoded; the media URL lookup returns it hex (UNCONFIRMED, see docs).
    obj: dict[str, Any] = {
        "mime_type": mime,
        "sha256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
        "id": media.id,
    }
    if kind in ("image", "video", "document") and (m.caption or spec.text):
        obj["caption"] = m.caption or spec.text
    if kind == "document":
        obj["filename"] = filename or "document.pdf"
    if kind == "audio":
        obj["voice"] = m.voice
    if kind == "sticker":
        obj["animated"] = m.animated
    return obj


def _body(spec: InboundSpec, kind: str, channel: Channel, state: GraphState) -> dict[str, Any]:
    if kind == "text":
        return {"text": {"body": spec.text or ""}}
    if kind in MEDIA_KINDS:
        return {kind: _media(spec, kind, channel, state)}
    if kind == "location":
        return {"location": spec.location or {"latitude": 52.52, "longitude": 13.405, "name": "Berlin"}}
    if kind == "contacts":
        return {
            "contacts": spec.contacts
            or [
                {
                    "name": {"formatted_name": "Max Mustermann", "first_name": "Max"},
                    "phones": [{"phone": "+49 170 0000000", "type": "CELL"}],
                }
            ]
        }
    if kind == "interactive":
        i = spec.interactive or {}
        itype = i.get("type", "button_reply")
        reply = {k: v for k, v in i.items() if k != "type"} or {"id": "yes", "title": "Yes"}
        return {"interactive": {"type": itype, itype: reply}}
    if kind == "button":
        return {"button": spec.button or {"payload": "Yes", "text": "Yes"}}
    if kind == "reaction":
        return {"reaction": spec.reaction or {}}
    return {
        "errors": [
            {
                "code": 131051,
                "title": "Message type unknown",
                "message": "Message type unknown",
                "error_data": {"details": "Message type is currently not supported."},
            }
        ],
        "unsupported": spec.unsupported or {"type": "unknown"},
    }


def build(
    spec: InboundSpec, wa_id: str, channel: Channel, state: GraphState
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (contact, message) for value.contacts[] / value.messages[] and records the customer's activity."""
    kind = spec.kind()
    wamid = new_wamid()
    hidden = spec.phone_hidden and bool(spec.user_id)
    message: dict[str, Any] = {"from_user_id": spec.user_id} if hidden else {"from": wa_id}
    message |= {
        "id": wamid,
        "timestamp": str(spec.timestamp or int(time.time())),
        "type": kind,
    }
    if spec.context is not None:
        ctx = dict(spec.context)
        message["context"] = {"from": channel.display_phone_number, "id": ctx.pop("message_id", None), **ctx}
    if spec.referral is not None:
        message["referral"] = {
            "source_type": "ad",
            "source_id": "120000000000000",
            "ctwa_clid": "sandbox-clid",
            **spec.referral,
        }
    message.update(_body(spec, kind, channel, state))
    profile: dict[str, Any] = {"name": spec.name}
    if spec.username:
        profile["username"] = spec.username
    contact: dict[str, Any] = {"profile": profile} if hidden else {"profile": profile, "wa_id": wa_id}
    if spec.user_id:
        contact["user_id"] = spec.user_id
        if not hidden:  # Meta's contact book: the BSUID is the same person as the number
            state.last_inbound[(channel.phone_number_id, spec.user_id)] = time.time()
    if spec.parent_user_id:
        contact["parent_user_id"] = spec.parent_user_id
    wa_id = spec.user_id if hidden and spec.user_id else wa_id
    key = (channel.phone_number_id, wa_id)
    state.last_inbound[key] = time.time()  # a customer message opens/refreshes the 24 h window
    if spec.referral is not None:  # a Click-to-WhatsApp ad: a free entry point (72 h)
        state.pricing.came_from_ad(channel.phone_number_id, wa_id)
    state.inbound[wamid] = {"phone_number_id": channel.phone_number_id, "wa_id": wa_id, "message": message}
    if state.options.count_inbound_in_throughput:
        state.throughput(channel.phone_number_id).take_if_any()
    return contact, message


class BatchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[InboundSpec] = Field(min_length=1)
    # messages: one change with all messages; changes: one change each; entries: one entry each
    layout: Literal["messages", "changes", "entries"] = "messages"
    signature: Literal["valid", "invalid", "missing"] = "valid"


class IdentityChangeSpec(BaseModel):
    """Body of POST /_sandbox/customers/{wa_id}/identity-change: Meta's system message (no contacts[]).

    user_changed_number: the customer changed number (``new_wa_id``) and got a new BSUID; user_changed_user_id:
    only the BSUID changed. Both carry previous_user_id / previous_parent_user_id (Meta changelog 2026-08-11).
    The path's wa_id is the customer's old number ("from"), or "-" for a customer without one.
    """

    model_config = ConfigDict(extra="forbid")
    type: Literal["user_changed_number", "user_changed_user_id"]
    user_id: str
    previous_user_id: str
    new_wa_id: str | None = None
    parent_user_id: str | None = None
    previous_parent_user_id: str | None = None
    name: str = "Sandbox Customer"
    phone_number_id: str | None = None
    signature: Literal["valid", "invalid", "missing"] = "valid"


def build_identity_change(spec: IdentityChangeSpec, wa_id: str, state: GraphState) -> dict[str, Any]:
    old = wa_id if wa_id.isdigit() else ""
    if spec.type == "user_changed_number":
        body = f"User {spec.name} changed from {old or spec.previous_user_id} to {spec.new_wa_id}"
    else:
        body = f"User {spec.name} changed their WhatsApp account"
    system: dict[str, Any] = {"body": body, "type": spec.type, "user_id": spec.user_id}
    system["previous_user_id"] = spec.previous_user_id
    if spec.type == "user_changed_number" and spec.new_wa_id:
        system["wa_id"] = spec.new_wa_id
    for key in ("parent_user_id", "previous_parent_user_id"):
        if getattr(spec, key):
            system[key] = getattr(spec, key)
    message: dict[str, Any] = {"from": old} if old else {"from_user_id": spec.previous_user_id}
    message |= {"id": new_wamid(), "timestamp": str(int(time.time())), "type": "system", "system": system}
    return message
