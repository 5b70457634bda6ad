"""The WABA-level template webhooks → TemplateStatusUpdate / TemplateQualityUpdate / TemplateCategoryUpdate
(research-2026-12.md 1.12). Pure functions, no I/O.

They carry no ``metadata.phone_number_id``: the entry id names the WhatsApp Business account. Meta's own
example of a quality update is filed under ``message_template_status_update``, so the kind is read from the
value's shape (``new_quality_score``, ``new_category`` / ``correct_category``, ``event``), not the field
name alone. A value that is none of them, or lacks the template id, is a WebhookShapeError (400)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from zaptrix.v1 import events_pb2

STATUS, QUALITY, CATEGORY = (
    "message_template_status_update",
    "message_template_quality_update",
    "template_category_update",
)
TEMPLATE_FIELDS = (STATUS, QUALITY, CATEGORY)
# Meta's words are upper-case identifiers; anything else is not a value we act on.
_WORD = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
STATUS_EVENTS = frozenset(
    {
        "APPROVED",
        "ARCHIVED",
        "DELETED",
        "DISABLED",
        "FLAGGED",
        "IN_APPEAL",
        "LIMIT_EXCEEDED",
        "LOCKED",
        "PAUSED",
        "PENDING",
        "PENDING_DELETION",
        "REINSTATED",
        "REJECTED",
    }
)
QUALITIES = frozenset({"GREEN", "YELLOW", "RED", "UNKNOWN"})


class TemplateShapeError(ValueError):
    """Not a template webhook we can read (the caller answers 400)."""


@dataclass
class TemplateChange:
    waba_id: str
    at: int  # entry.time, else now
    field: str
    value: dict[str, Any]


def _text(value: Any, limit: int = 512) -> str:
    if value is None or isinstance(value, dict | list | bool):
        return ""
    return str(value).strip()[:limit]


def _word(value: Any, what: str, allowed: frozenset[str] | None = None, required: bool = True) -> str:
    text = _text(value, 128).upper()
    if not text and not required:
        return ""
    if not _WORD.fullmatch(text) or (allowed is not None and text not in allowed):
        raise TemplateShapeError(f"{what} {text[:40]!r} is not a known value")
    return text


def _base(change: TemplateChange) -> tuple[str, str, str]:
    v = change.value
    template_id = _text(v.get("message_template_id"), 64)
    if not template_id.isascii() or not template_id.isdigit():
        raise TemplateShapeError(f"{change.field}: message_template_id is missing or not a number")
    return template_id, _text(v.get("message_template_name")), _text(v.get("message_template_language"), 32)


def _detail(v: dict[str, Any]) -> str:
    """What Meta says about a status change, readable (other_info, rejection_info, disable_info)."""
    parts: list[str] = []
    for key in ("other_info", "rejection_info"):
        info = v.get(key)
        if isinstance(info, dict):
            parts += [_text(x, 500) for x in info.values() if _text(x, 500)]
    disable = v.get("disable_info")
    if isinstance(disable, dict) and _text(disable.get("disable_date")):
        parts.append(f"disable date {_text(disable.get('disable_date'), 40)}")
    return "; ".join(parts)[:1000]


def _envelope(
    kind: str, change: TemplateChange, template_id: str, new: str, **event: Any
) -> events_pb2.Envelope:
    env = events_pb2.Envelope(
        event_id=f"wa-tpl-{kind}:{change.waba_id}:{template_id}:{change.at}:{new}",
        conversation_key=f"waba:{change.waba_id}",  # one template's updates stay in order
        source=events_pb2.PLATFORM_WHATSAPP,
        **event,
    )
    env.occurred_at.seconds = change.at
    return env


def template_event(change: TemplateChange) -> events_pb2.Envelope:
    v = change.value
    template_id, name, language = _base(change)
    if "new_quality_score" in v:
        new = _word(v.get("new_quality_score"), "new_quality_score", QUALITIES)
        q = events_pb2.TemplateQualityUpdate(
            waba_id=change.waba_id,
            template_id=template_id,
            name=name,
            language=language,
            previous_quality=_word(v.get("previous_quality_score"), "previous_quality_score", required=False),
            new_quality=new,
        )
        q.at.seconds = change.at
        return _envelope("quality", change, template_id, new, template_quality_update=q)
    if "new_category" in v or "correct_category" in v:
        new = _word(v.get("new_category"), "new_category", required=False)
        correct = _word(v.get("correct_category"), "correct_category", required=False)
        if not new and not correct:
            raise TemplateShapeError("template_category_update without new_category or correct_category")
        c = events_pb2.TemplateCategoryUpdate(
            waba_id=change.waba_id,
            template_id=template_id,
            name=name,
            language=language,
            previous_category=_word(v.get("previous_category"), "previous_category", required=False),
            new_category=new,
            correct_category=correct,
        )
        c.at.seconds = change.at
        return _envelope(
            "category", change, template_id, new or f"notice-{correct}", template_category_update=c
        )
    if "event" in v:
        event = _word(v.get("event"), "event", STATUS_EVENTS)
        s = events_pb2.TemplateStatusUpdate(
            waba_id=change.waba_id,
            template_id=template_id,
            name=name,
            language=language,
            event=event,
            reason=_text(v.get("reason"), 128),
            category=_word(v.get("message_template_category"), "category", required=False),
            detail=_detail(v),
        )
        s.at.seconds = change.at
        return _envelope("status", change, template_id, event, template_status_update=s)
    raise TemplateShapeError(f"{change.field}: neither a status, a quality nor a category update")
