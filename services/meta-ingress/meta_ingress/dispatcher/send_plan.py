"""An operator's message as Graph API sends: text chunks, media with the right type, reply context.

Pure planning (no I/O): which WhatsApp messages one Bitrix24 message becomes, and their payloads.

- The text (BB-code converted) becomes the caption of the first image/video/document when it fits
  (1,024 characters): one message instead of two, which also spares the customer's 6-second pair slot.
  Otherwise it is sent first, split into chunks of at most 4,096 characters, at most MAX_TEXT_PARTS of
  them. Longer texts are cut (``Plan.truncated_to``; the operator is told): at most MAX_BBCODE characters
  of BB-code are converted at all, so a huge text costs bounded work on the dispatcher's event loop.
- Each file becomes the media type WhatsApp accepts for its MIME type and size (whatsapp.md A4); what
  no specific type accepts (GIF, HEIC, WebM audio, large images, ...) is sent as a document, which
  WhatsApp accepts up to 100 MB. Larger files cannot be sent at all.
- A quoted customer message becomes ``context.message_id`` of the first message.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from typing import Any

from zaptrix import identity
from zaptrix.v1 import events_pb2

from meta_ingress.dispatcher.bbcode import MAX_TEXT, split_text, to_whatsapp

MAX_CAPTION = 1024
MAX_TEXT_PARTS = 4  # text messages per operator message: 4 x 4,096 characters, the rest is cut
MAX_BBCODE = 20_000  # BB-code characters converted; bitrix-ingress already cuts at 32,768
MB = 1024 * 1024
# kind -> (accepted MIME types, max bytes); whatsapp.md A4.
MEDIA_RULES: dict[str, tuple[frozenset[str], int]] = {
    "image": (frozenset({"image/jpeg", "image/png"}), 5 * MB),
    "video": (frozenset({"video/mp4", "video/3gpp"}), 16 * MB),
    "audio": (frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}), 16 * MB),
    "sticker": (frozenset({"image/webp"}), 100 * 1024),
}
DOCUMENT_MAX = 100 * MB
CAPTIONED = frozenset({"image", "video", "document"})
_MIME_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "audio/mp3": "audio/mpeg",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
    "audio/x-aac": "audio/aac",
    "video/3gp": "video/3gpp",
}
_EXT_MIME = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".mp4": "video/mp4",
    ".3gp": "video/3gpp",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".amr": "audio/amr",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".pdf": "application/pdf",
    ".txt": "text/plain",
}
_URL = re.compile(r"https?://", re.IGNORECASE)


class FileRejected(ValueError):
    """This file cannot be sent over WhatsApp at all (the reason is shown to the operator)."""


def normalize_mime(mime: str, name: str = "") -> str:
    base = mime.split(";", 1)[0].strip().lower()
    base = _MIME_ALIASES.get(base, base)
    if base and base != "application/octet-stream":
        return base
    ext = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
    return _EXT_MIME.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def choose_kind(mime: str, size: int) -> str:
    """The WhatsApp message type for a file (size 0 = unknown). Raises FileRejected above 100 MB."""
    if size > DOCUMENT_MAX:
        raise FileRejected(f"the file is {size / MB:.0f} MB; WhatsApp accepts at most 100 MB")
    for kind, (accepted, limit) in MEDIA_RULES.items():
        if mime in accepted and (size == 0 or size <= limit):
            return kind
    return "document"


@dataclass
class Part:
    """One WhatsApp message of an operator's message."""

    index: int
    kind: str  # text | image | video | audio | document | sticker
    text: str = ""  # body (text) or caption (media)
    file: events_pb2.BitrixFile | None = None
    mime: str = ""
    filename: str = ""
    context_id: str = ""


@dataclass
class Plan:
    parts: list[Part]
    rejected: list[tuple[events_pb2.BitrixFile, str]]  # files that cannot be sent, with the reason
    truncated_to: int | None = None  # the text was too long: this many characters of it are sent


def plan_message(
    text_bbcode: str, files: list[events_pb2.BitrixFile], reply_to: str = "", text_prefix: str = ""
) -> Plan:
    cut = len(text_bbcode) > MAX_BBCODE
    text = to_whatsapp(text_bbcode[:MAX_BBCODE] if cut else text_bbcode)
    if text and text_prefix:
        text = text_prefix + text
    media: list[Part] = []
    rejected: list[tuple[events_pb2.BitrixFile, str]] = []
    for file in files:
        name = file.name or "file"
        mime = normalize_mime(file.mime_type, name)
        try:
            kind = choose_kind(mime, file.size)
        except FileRejected as exc:
            rejected.append((file, str(exc)))
            continue
        media.append(Part(0, kind, file=file, mime=mime, filename=name))
    parts: list[Part] = []
    captioned = next((p for p in media if p.kind in CAPTIONED), None) if len(text) <= MAX_CAPTION else None
    truncated_to: int | None = None
    if text and captioned is not None:
        captioned.text = text
        truncated_to = len(text) if cut else None
    else:
        chunks = split_text(text, MAX_TEXT)
        if cut or len(chunks) > MAX_TEXT_PARTS:
            chunks = chunks[:MAX_TEXT_PARTS]
            truncated_to = sum(len(c) for c in chunks)
        parts.extend(Part(0, "text", text=chunk) for chunk in chunks)
    parts.extend(media)
    for i, part in enumerate(parts):
        part.index = i
    if parts and reply_to:
        parts[0].context_id = reply_to
    return Plan(parts, rejected, truncated_to)


def too_long_notice(sent: int) -> str:
    """The operator's notice for a text cut to ``sent`` characters."""
    return (
        f"The message was too long for WhatsApp: only its first {sent:,} characters were sent "
        f"(at most {MAX_TEXT_PARTS} messages of {MAX_TEXT:,} characters each)."
    )


def base_payload(to: str, kind: str, context_id: str = "") -> dict[str, Any]:
    """``to``: a phone number, or a BSUID for a customer without one, which goes in "recipient" with no
    "to" (Meta's business-scoped user ids page; a BSUID in "to" is silently dropped)."""
    payload: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    payload["recipient" if identity.is_bsuid(to) else "to"] = to
    payload["type"] = kind
    if context_id:
        payload["context"] = {"message_id": context_id}
    return payload


def text_payload(to: str, body: str, context_id: str = "") -> dict[str, Any]:
    payload = base_payload(to, "text", context_id)
    payload["text"] = {"body": body, "preview_url": bool(_URL.search(body))}
    return payload


def media_payload(to: str, part: Part, ref: dict[str, str]) -> dict[str, Any]:
    """``ref`` is {"id": <uploaded media id>} or {"link": <https URL>}."""
    payload = base_payload(to, part.kind, part.context_id)
    obj: dict[str, Any] = dict(ref)
    if part.text and part.kind in CAPTIONED:
        obj["caption"] = part.text
    if part.kind == "document" and part.filename:
        obj["filename"] = part.filename[:240]
    payload[part.kind] = obj
    return payload


def template_payload(to: str, name: str, language: str) -> dict[str, Any]:
    payload = base_payload(to, "template")
    payload["template"] = {"name": name, "language": {"code": language or "en_US"}}
    return payload
