"""What to log about a Bitrix24 event instead of the event: ids, counts, size and hash (never the text,
file links or credentials; review finding L3)."""

from __future__ import annotations

import json
from typing import Any

from zaptrix.logging import fingerprint

from bitrix_ingress.formparse import as_list, get_ci, get_str

_MAX_IDS = 20


def summary(form: dict[str, Any]) -> dict[str, Any]:
    """The event's name, portal, message and chat ids (at most 20 each), item count and a fingerprint."""
    auth = form.get("auth")
    data = form.get("data")
    items: list[Any] = []
    if isinstance(data, dict):
        raw = get_ci(data, "MESSAGES")
        items = as_list(raw if raw is not None else get_ci(data, "DATA")) or []
    message_ids: list[str] = []
    chat_ids: list[str] = []
    for item in items[:_MAX_IDS]:
        if not isinstance(item, dict):
            continue
        im, chat = get_ci(item, "im"), get_ci(item, "chat")
        if isinstance(im, dict):
            message_ids.append(get_str(im, "message_id")[:64])
        if isinstance(chat, dict):
            chat_ids.append(get_str(chat, "id")[:128])
    try:
        canonical = json.dumps(form, sort_keys=True, default=str)
    except (TypeError, ValueError):  # pragma: no cover - a parsed form is always JSON-friendly
        canonical = repr(form)
    return {
        "event": get_str(form, "event")[:64],
        "member_id": get_str(auth, "member_id")[:64] if isinstance(auth, dict) else "",
        "items": len(items),
        "message_ids": message_ids,
        "chat_ids": chat_ids,
        "fingerprint": fingerprint(canonical),
    }
