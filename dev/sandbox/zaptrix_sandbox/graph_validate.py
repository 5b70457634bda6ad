"""Strict validation of POST /{version}/{phone_number_id}/messages bodies (whatsapp.md A3).

Errors use Graph's wording style: "(#100) The parameter X is required." / "(#100) Param X must be ...".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .graph_errors import param_error

MESSAGE_TYPES = (
    "text",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "template",
    "reaction",
)
MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
TOP_LEVEL = {
    "messaging_product",
    "recipient_type",
    "to",
    "recipient",
    "type",
    "context",
    "biz_opaque_callback_data",
}
MEDIA_KEYS = {
    "image": {"id", "link", "caption"},
    "video": {"id", "link", "caption"},
    "audio": {"id", "link"},  # caption not allowed on audio or sticker
    "document": {"id", "link", "caption", "filename"},
    "sticker": {"id", "link"},
}
INTERACTIVE_TYPES = (
    "button",
    "list",
    "cta_url",
    "product",
    "product_list",
    "flow",
    "location_request_message",
)
_PHONE = re.compile(r"^\+?[0-9][0-9 ()\-]{5,20}$")
# A business-scoped user id (BSUID) or parent BSUID: country code, a dot, up to 128 alphanumerics.
_BSUID = re.compile(r"^[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}$")


@dataclass
class SendRequest:
    to: str
    wa_id: str  # the phone's digits, or the BSUID of a "recipient" send
    type: str
    obj: Any
    context_id: str | None


@dataclass
class ReadRequest:
    message_id: str
    typing_indicator: bool


def _require(obj: dict[str, Any], key: str, path: str) -> Any:
    if key not in obj or obj[key] is None or obj[key] == "":
        raise param_error(
            f"The parameter {path}['{key}'] is required." if path else f"The parameter {key} is required."
        )
    return obj[key]


def _string(value: Any, path: str, max_len: int | None = None, min_len: int = 1) -> str:
    if not isinstance(value, str):
        raise param_error(f"Param {path} must be a string.")
    if len(value) < min_len:
        raise param_error(f"Param {path} must be at least {min_len} character long.")
    if max_len is not None and len(value) > max_len:
        raise param_error(f"Param {path} must be at most {max_len} characters long.")
    return value


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise param_error(f"Param {path} must be a JSON object.")
    return value


def _only(obj: dict[str, Any], allowed: set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise param_error(
                f"Param {path}['{key}'] is not allowed.",
                details=f"{path} accepts only: {', '.join(sorted(allowed))}",
            )


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool):
        raise param_error(f"Param {path} must be a number.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise param_error(f"Param {path} must be a number.") from None


def _media(kind: str, obj: dict[str, Any]) -> None:
    _only(obj, MEDIA_KEYS[kind], kind)
    has_id, has_link = bool(obj.get("id")), bool(obj.get("link"))
    if has_id == has_link:
        raise param_error(f"Param {kind} must contain exactly one of id or link.")
    if has_link and not re.match(r"^https?://", str(obj["link"])):
        raise param_error(f"Param {kind}['link'] must be a valid URL.")
    if "caption" in obj:
        _string(obj["caption"], f"{kind}['caption']", 1024, min_len=0)
    if "filename" in obj:
        _string(obj["filename"], f"{kind}['filename']", 240)


def _interactive(obj: dict[str, Any]) -> None:
    kind = _require(obj, "type", "interactive")
    if kind not in INTERACTIVE_TYPES:
        raise param_error(
            f"Param interactive['type'] must be one of {{{', '.join(INTERACTIVE_TYPES)}}} - got \"{kind}\"."
        )
    if kind in ("button", "list", "cta_url"):
        body = _object(_require(obj, "body", "interactive"), "interactive['body']")
        _string(_require(body, "text", "interactive['body']"), "interactive['body']['text']", 1024)
    if "footer" in obj:
        footer = _object(obj["footer"], "interactive['footer']")
        _string(_require(footer, "text", "interactive['footer']"), "interactive['footer']['text']", 60)
    if "header" in obj:
        header = _object(obj["header"], "interactive['header']")
        htype = _require(header, "type", "interactive['header']")
        if htype in MEDIA_TYPES:
            media = _object(
                _require(header, htype, "interactive['header']"), f"interactive['header']['{htype}']"
            )
            if "link" not in media:  # whatsapp.md A3: interactive headers need a link, not a media id
                raise param_error(f"Param interactive['header']['{htype}'] must use link.")
    action = _object(_require(obj, "action", "interactive"), "interactive['action']")
    if kind == "button":
        buttons = action.get("buttons")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
            raise param_error("Param interactive['action']['buttons'] must contain 1 to 3 buttons.")
        for i, button in enumerate(buttons):
            path = f"interactive['action']['buttons'][{i}]"
            reply = _object(_require(_object(button, path), "reply", path), f"{path}['reply']")
            _string(_require(reply, "id", f"{path}['reply']"), f"{path}['reply']['id']", 256)
            _string(_require(reply, "title", f"{path}['reply']"), f"{path}['reply']['title']", 20)
    elif kind == "list":
        _string(_require(action, "button", "interactive['action']"), "interactive['action']['button']", 20)
        sections = action.get("sections")
        if not isinstance(sections, list) or not 1 <= len(sections) <= 10:
            raise param_error("Param interactive['action']['sections'] must contain 1 to 10 sections.")
        rows = [row for section in sections for row in _object(section, "section").get("rows", [])]
        if not 1 <= len(rows) <= 10:
            raise param_error("Param interactive['action']['sections'] must contain 1 to 10 rows in total.")
        for row in rows:
            _string(_require(row, "id", "row"), "row['id']", 200)
            _string(_require(row, "title", "row"), "row['title']", 24)
            if "description" in row:
                _string(row["description"], "row['description']", 72)


def _template(obj: dict[str, Any]) -> None:
    _string(_require(obj, "name", "template"), "template['name']", 512)
    language = _object(_require(obj, "language", "template"), "template['language']")
    _string(_require(language, "code", "template['language']"), "template['language']['code']")
    components = obj.get("components", [])
    if not isinstance(components, list):
        raise param_error("Param template['components'] must be an array.")
    for i, component in enumerate(components):
        ctype = _require(
            _object(component, f"template['components'][{i}]"), "type", f"template['components'][{i}]"
        )
        if ctype not in ("header", "body", "footer", "button"):
            raise param_error(f"Param template['components'][{i}]['type'] is invalid.")


def _contacts(value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise param_error("Param contacts must be a non-empty array.")
    for i, contact in enumerate(value):
        name = _object(
            _require(_object(contact, f"contacts[{i}]"), "name", f"contacts[{i}]"), f"contacts[{i}]['name']"
        )
        _string(
            _require(name, "formatted_name", f"contacts[{i}]['name']"),
            f"contacts[{i}]['name']['formatted_name']",
        )


def body_of(kind: str, obj: Any) -> None:
    """Validate the object of one message type."""
    if kind == "contacts":
        _contacts(obj)
        return
    obj = _object(obj, kind)
    if kind == "text":
        _only(obj, {"body", "preview_url"}, "text")
        _string(_require(obj, "body", "text"), "text['body']", 4096)
        if "preview_url" in obj and not isinstance(obj["preview_url"], bool):
            raise param_error("Param text['preview_url'] must be a boolean.")
    elif kind in MEDIA_TYPES:
        _media(kind, obj)
    elif kind == "location":
        _only(obj, {"latitude", "longitude", "name", "address"}, "location")
        lat = _number(_require(obj, "latitude", "location"), "location['latitude']")
        lon = _number(_require(obj, "longitude", "location"), "location['longitude']")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise param_error("Param location must have a valid latitude and longitude.")
    elif kind == "interactive":
        _interactive(obj)
    elif kind == "template":
        _template(obj)
    elif kind == "reaction":
        _only(obj, {"message_id", "emoji"}, "reaction")
        _string(_require(obj, "message_id", "reaction"), "reaction['message_id']")
        if not isinstance(obj.get("emoji"), str):  # "" removes a reaction
            raise param_error("The parameter reaction['emoji'] is required.")


def validate(body: Any) -> SendRequest | ReadRequest:
    if not isinstance(body, dict):
        raise param_error("Invalid parameter", details="The request body must be a JSON object.")
    product = _require(body, "messaging_product", "")
    if product != "whatsapp":
        raise param_error(f'Param messaging_product must be one of {{WHATSAPP}} - got "{product}".')
    if "status" in body:  # mark as read (+ optional typing indicator)
        _only(body, {"messaging_product", "status", "message_id", "typing_indicator"}, "root")
        if body["status"] != "read":
            raise param_error(f'Param status must be one of {{READ}} - got "{body["status"]}".')
        message_id = _string(_require(body, "message_id", ""), "message_id")
        typing = body.get("typing_indicator")
        if typing is not None and typing != {"type": "text"}:
            raise param_error("Param typing_indicator['type'] must be one of {TEXT}.")
        return ReadRequest(message_id=message_id, typing_indicator=typing is not None)
    if body.get("recipient_type", "individual") != "individual":
        raise param_error(
            f'Param recipient_type must be one of {{INDIVIDUAL}} - got "{body["recipient_type"]}".'
        )
    if "recipient" in body:
        # 2026: a customer known only by a BSUID is addressed with "recipient" and no "to" (Meta's
        # business-scoped user ids page; pywa resolve_recipient). Both at once is ambiguous: refused.
        if "to" in body:
            raise param_error("Invalid parameter", details="Use either to or recipient, not both.")
        recipient = _string(body["recipient"], "recipient", 160)
        if not _BSUID.match(recipient):
            raise param_error(
                "Invalid parameter", details=f"Invalid value for recipient: {recipient!r} is not a user id."
            )
        return _send(body, recipient, recipient)
    to = _string(_require(body, "to", ""), "to")
    if not _PHONE.match(to):
        raise param_error("Invalid parameter", details=f"Invalid value for to: {to!r} is not a phone number.")
    wa_id = re.sub(r"\D", "", to)
    if not 7 <= len(wa_id) <= 15:
        raise param_error("Invalid parameter", details=f"Invalid value for to: {to!r} is not a phone number.")
    return _send(body, to, wa_id)


def _send(body: dict[str, Any], to: str, wa_id: str) -> SendRequest:
    kind = body.get("type", "text")  # Graph defaults type to text
    if kind not in MESSAGE_TYPES:
        raise param_error(
            f'Param type must be one of {{{", ".join(t.upper() for t in MESSAGE_TYPES)}}} - got "{kind}".'
        )
    for key in body:
        if key not in TOP_LEVEL and key != kind:
            raise param_error(f'Unexpected key "{key}" on param root.')
    body_of(kind, _require(body, kind, ""))
    if "biz_opaque_callback_data" in body:  # echoed in the sent/delivered/read status webhooks
        _string(body["biz_opaque_callback_data"], "biz_opaque_callback_data", 512, min_len=0)
    context_id: str | None = None
    if "context" in body:
        context = _object(body["context"], "context")
        context_id = _string(_require(context, "message_id", "context"), "context['message_id']")
    return SendRequest(to=to, wa_id=wa_id, type=kind, obj=body[kind], context_id=context_id)
