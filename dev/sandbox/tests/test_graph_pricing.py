"""The stand-in's per-message pricing rules (graph_pricing.py; research-2026-12.md 1.9)."""

from __future__ import annotations

from datetime import UTC, datetime

from zaptrix_sandbox.graph_pricing import FREE_SERVICE_PER_MONTH, PricingBook

SEPT_2026 = datetime(2026, 9, 15, tzinfo=UTC).timestamp()
NOV_2026 = datetime(2026, 11, 10, tzinfo=UTC).timestamp()
DEC_2026 = datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def price(
    book: PricingBook, now: float, kind: str = "text", category: str | None = None, window: bool = True
) -> tuple[bool, str, str]:
    p = book.price("100", "4917", kind=kind, template_category=category, window_open=window, now=now)
    assert p["pricing_model"] == "PMP"
    return p["billable"], p["category"], p["type"]


def test_templates_are_billed_by_category_and_window() -> None:
    book = PricingBook()
    assert price(book, NOV_2026, "template", "MARKETING") == (True, "marketing", "regular")
    assert price(book, NOV_2026, "template", "authentication") == (True, "authentication", "regular")
    assert price(book, NOV_2026, "template", "utility", window=False) == (True, "utility", "regular")
    # Utility inside the window: free until 30 Sep 2026, billed from 1 Oct 2026.
    assert price(book, SEPT_2026, "template", "utility") == (False, "utility", "free_customer_service")
    assert price(book, NOV_2026, "template", "utility") == (True, "utility", "regular")


def test_service_replies_are_free_up_to_1000_a_month_per_number_from_october_2026() -> None:
    book = PricingBook()
    assert price(book, SEPT_2026) == (False, "service", "free_customer_service")
    assert book.service_used == {}  # before October 2026 nothing counts toward the tier
    answers = [price(book, NOV_2026) for _ in range(FREE_SERVICE_PER_MONTH + 1)]
    assert (
        answers[:FREE_SERVICE_PER_MONTH]
        == [(False, "service", "free_customer_service")] * FREE_SERVICE_PER_MONTH
    )
    assert answers[-1] == (True, "service", "regular")
    assert price(book, NOV_2026, kind="reaction") == (
        False,
        "service",
        "free_customer_service",
    )  # never counted
    assert book.service_used[("100", "2026-11")] == FREE_SERVICE_PER_MONTH + 1
    assert price(book, DEC_2026) == (False, "service", "free_customer_service")  # a new month, a new tier
    other = book.price("200", "4917", kind="text", template_category=None, window_open=True, now=NOV_2026)
    assert other["billable"] is False  # the tier is per phone number


def test_a_click_to_whatsapp_entry_point_is_free_for_72_hours() -> None:
    book = PricingBook()
    book.came_from_ad("100", "4917", at=NOV_2026)
    assert price(book, NOV_2026 + 3600, "template", "marketing") == (False, "marketing", "free_entry_point")
    assert price(book, NOV_2026 + 73 * 3600, "template", "marketing") == (True, "marketing", "regular")
