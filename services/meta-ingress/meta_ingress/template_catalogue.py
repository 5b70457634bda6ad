"""Reading a channel's template catalogue from the Graph API into the mapper (issue 16): all pages of
GET /<waba_id>/message_templates, then one ReplaceTemplates. Used by the meta dispatcher (install, bind,
a template webhook naming a template we do not know) and by ``zaptrix-admin templates sync``."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from zaptrix.v1 import mapper_pb2

from meta_ingress.graph.client import GraphClient

MAX_PAGES = 100  # 100 x 100 templates: above Meta's 6,000 per verified WABA (whatsapp.md A6)
Progress = Callable[[int], None]  # templates read so far


class CatalogueTooLarge(ValueError):
    """More pages than any WABA may have: a cursor loop, never an endless sync."""


def _text(value: Any, limit: int = 512) -> str:
    return str(value)[:limit] if isinstance(value, str | int) and not isinstance(value, bool) else ""


def template_row(item: Any) -> mapper_pb2.MessageTemplate | None:
    """One listed template as the mapper stores it; None for an item without id, name or language."""
    if not isinstance(item, dict):
        return None
    tid, name, language = _text(item.get("id"), 64), _text(item.get("name")), _text(item.get("language"), 32)
    if not (tid and name and language):
        return None
    quality = item.get("quality_score")
    components = item.get("components")
    return mapper_pb2.MessageTemplate(
        template_id=tid,
        name=name,
        language=language,
        status=_text(item.get("status"), 64).upper(),
        category=_text(item.get("category"), 64).upper(),
        quality=_text(quality.get("score"), 64).upper() if isinstance(quality, dict) else "",
        parameter_format=(_text(item.get("parameter_format"), 16) or "POSITIONAL").upper(),
        components_json=json.dumps(
            [c for c in components if isinstance(c, dict)] if isinstance(components, list) else [],
            ensure_ascii=False,
        ),
    )


async def fetch_templates(
    graph: GraphClient, waba_id: str, token: str, progress: Progress | None = None
) -> list[mapper_pb2.MessageTemplate]:
    """Every page of the WABA's templates (cursor pagination); the same id listed twice counts once."""
    rows: dict[str, mapper_pb2.MessageTemplate] = {}
    after = ""
    for _ in range(MAX_PAGES):
        items, after = await graph.message_templates(waba_id, token, after)
        for item in items:
            row = template_row(item)
            if row is not None:
                rows[row.template_id] = row
        if progress is not None:
            progress(len(rows))
        if not after:
            return list(rows.values())
    raise CatalogueTooLarge(f"more than {MAX_PAGES} pages of templates")


async def sync_channel(
    mapper: Any,
    graph: GraphClient,
    phone_number_id: str,
    waba_id: str,
    token: str,
    rpc_timeout_s: float,
    progress: Progress | None = None,
) -> mapper_pb2.ReplaceTemplatesResponse:
    """Read the WABA's templates and store them as the channel's catalogue (``mapper``: a Mapper stub)."""
    # Whole seconds, as webhooks carry them: a webhook sent in the second the listing was read still applies.
    started = datetime.now(UTC).replace(microsecond=0)
    rows = await fetch_templates(graph, waba_id, token, progress)
    request = mapper_pb2.ReplaceTemplatesRequest(
        phone_number_id=phone_number_id, waba_id=waba_id, templates=rows
    )
    request.synced_at.FromDatetime(started)  # a webhook sent while we read stays newer than the listing
    response: mapper_pb2.ReplaceTemplatesResponse = await mapper.ReplaceTemplates(
        request, timeout=rpc_timeout_s
    )
    return response
