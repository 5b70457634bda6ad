"""The SETTING_CONNECTOR placement POST (bitrix24.md §1, DOCS api-reference/widgets/setting-connector.md):
which connector and line, whose auth, and the portal's language."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bitrix_ingress.formparse import get_str
from bitrix_ingress.settings import WebSettings


class PlacementRefused(Exception):
    """The placement request is malformed (answered with this status and reason: our own words)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass
class PlacementRequest:
    member_id: str
    auth_id: str
    refresh_id: str
    application_token: str
    connector: str
    line: int
    active_status: bool
    action: str
    raw_options: str
    lang: str  # LANG of the POST: the portal's (the user's) interface language


def parse_placement(form: dict[str, Any], query: dict[str, Any], settings: WebSettings) -> PlacementRequest:
    merged = {**query, **form}
    placement = get_str(merged, "PLACEMENT")
    if placement and placement != "SETTING_CONNECTOR":
        raise PlacementRefused(f"unexpected PLACEMENT {placement[:40]!r}", 400)
    raw = get_str(merged, "PLACEMENT_OPTIONS")
    try:
        options = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise PlacementRefused("PLACEMENT_OPTIONS is not JSON", 400) from exc
    if not isinstance(options, dict):
        raise PlacementRefused("PLACEMENT_OPTIONS is not an object", 400)
    connector = str(options.get("CONNECTOR") or "").lower()
    if connector and connector != settings.connector_id:
        raise PlacementRefused(
            f"this handler serves connector {settings.connector_id}, not {connector[:60]}", 400
        )
    try:
        line = int(str(options.get("LINE") or "0"))
    except ValueError as exc:
        raise PlacementRefused("PLACEMENT_OPTIONS.LINE is not an integer", 400) from exc
    if line <= 0 or line > 2**31:
        raise PlacementRefused("PLACEMENT_OPTIONS.LINE is missing", 400)
    member_id = get_str(merged, "member_id")
    auth_id = get_str(merged, "AUTH_ID")
    if not member_id or not auth_id:
        raise PlacementRefused("placement request without member_id/AUTH_ID", 401)
    active = str(options.get("ACTIVE_STATUS", "")).lower() in ("1", "y", "true")
    return PlacementRequest(
        member_id=member_id,
        auth_id=auth_id,
        refresh_id=get_str(merged, "REFRESH_ID"),
        application_token=get_str(merged, "APPLICATION_TOKEN"),
        connector=settings.connector_id,
        line=line,
        active_status=active,
        action=get_str(merged, "action").lower(),
        raw_options=raw,
        lang=get_str(merged, "LANG")[:8].lower(),
    )
