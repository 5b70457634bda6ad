"""The pricing object of a status webhook, as Meta's per-message pricing decides it (research-2026-12.md 1.9).

Decided once per message, when it is sent (the window and the month's free tier as they are then), and
carried by its `sent` and `delivered` statuses (`failed` has none):
- per-message pricing (`pricing_model` "PMP") since 1 July 2025;
- marketing and authentication templates: billable, type "regular";
- utility templates: free inside an open customer service window until 30 Sep 2026 (type
  "free_customer_service"), billable from 1 Oct 2026; billable outside the window;
- free-form (service) messages inside the window: free until 30 Sep 2026; from 1 Oct 2026 the first
  1,000 per business phone number and calendar month are free, the rest billable ("regular");
- reactions: free and not counted toward the 1,000;
- a window opened by a Click-to-WhatsApp ad (the customer's message carried a `referral`) makes every
  message free for 72 hours (type "free_entry_point").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SERVICE_CHARGED_FROM = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
FREE_SERVICE_PER_MONTH = 1000
FREE_ENTRY_POINT_S = 72 * 3600


@dataclass
class PricingBook:
    """What the month's free tier has used, per phone number, and when a customer came through an ad."""

    service_used: dict[tuple[str, str], int] = field(default_factory=dict)  # (pnid, "YYYY-MM") -> count
    entry_points: dict[tuple[str, str], float] = field(default_factory=dict)  # (pnid, wa_id) -> ad time

    def came_from_ad(self, phone_number_id: str, wa_id: str, at: float | None = None) -> None:
        self.entry_points[(phone_number_id, wa_id)] = time.time() if at is None else at

    def price(
        self,
        phone_number_id: str,
        wa_id: str,
        *,
        kind: str,
        template_category: str | None,
        window_open: bool,
        now: float | None = None,
    ) -> dict[str, Any]:
        """The pricing object of one message (`kind`: the message type; `template_category` for a template)."""
        now = time.time() if now is None else now
        category = (template_category or "service").lower()
        ad = self.entry_points.get((phone_number_id, wa_id))
        if window_open and ad is not None and now - ad < FREE_ENTRY_POINT_S:
            return _pricing(False, category, "free_entry_point")
        if category in ("marketing", "authentication"):
            return _pricing(True, category, "regular")
        if category == "utility":
            free = window_open and now < SERVICE_CHARGED_FROM
            return _pricing(not free, category, "free_customer_service" if free else "regular")
        if kind == "reaction":
            return _pricing(False, "service", "free_customer_service")
        if now < SERVICE_CHARGED_FROM:
            return _pricing(False, "service", "free_customer_service")
        month = (phone_number_id, datetime.fromtimestamp(now, UTC).strftime("%Y-%m"))
        used = self.service_used.get(month, 0)
        self.service_used[month] = used + 1
        if used < FREE_SERVICE_PER_MONTH:
            return _pricing(False, "service", "free_customer_service")
        return _pricing(True, "service", "regular")


def _pricing(billable: bool, category: str, type_: str) -> dict[str, Any]:
    return {"billable": billable, "pricing_model": "PMP", "category": category, "type": type_}
