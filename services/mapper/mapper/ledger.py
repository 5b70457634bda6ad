"""The cost ledger: Meta's pricing of each delivered message, counted per portal, channel and month.

Exactly once per wamid: the count and the mark on the message's link (``usage_counted``) are written in
one statement, inside the transaction of UpdateMessageStatuses that also records the status (the link's
row is locked by then), so a webhook Meta sends again, an event Kafka delivers again or a read weeks later
finds the mark and adds nothing. The mark lives as long as the link; without a link nothing is counted.

What is counted: the first delivered or read status of a message that carries a pricing object (Meta
bills a message when it is delivered; a read whose delivered never came implies it). ``sent`` statuses
carry pricing too but a message that is never delivered is not billed, so they are not counted. Only
messages with a link (sent through Zaptrix) are counted: the link names the portal and channel.

The table holds aggregates only (no wamid, no customer id), so it needs no erasing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from mapper.metrics import USAGE_MESSAGES

COUNTED_STATUSES = ("delivered", "read")


@dataclass(frozen=True, slots=True)
class Priced:
    """A status's pricing object, for the message `wamid`, reported at `at`."""

    wamid: str
    at: datetime
    billable: bool
    pricing_model: str
    category: str
    pricing_type: str


@dataclass(frozen=True, slots=True)
class UsageRow:
    member_id: str
    phone_number_id: str
    month: date
    category: str
    pricing_type: str
    pricing_model: str
    billable: bool
    messages: int


# Months are UTC calendar months of the status's timestamp (Meta's invoices are per UTC month).
# Grouped and ordered, so the upsert touches each ledger row once, in key order (no deadlock between
# two batches). The counts returned are this statement's increments (for the metrics).
_RECORD_USAGE = """
WITH fresh AS (
    UPDATE mapper.message_link AS m SET usage_counted = true
    FROM unnest($1::text[]) AS u(wamid)
    WHERE m.wamid = u.wamid AND NOT m.usage_counted
    RETURNING m.wamid, m.member_id, m.conversation_id),
counted AS (
    SELECT m.member_id, c.phone_number_id,
        date_trunc('month', u.at AT TIME ZONE 'UTC')::date AS month,
        u.category, u.pricing_type, u.pricing_model, u.billable, count(*) AS messages
    FROM unnest($1::text[], $2::timestamptz[], $3::bool[], $4::text[], $5::text[], $6::text[])
        AS u(wamid, at, billable, pricing_model, category, pricing_type)
    JOIN fresh m USING (wamid)
    JOIN mapper.conversation_mapping c ON c.id = m.conversation_id
    GROUP BY 1, 2, 3, 4, 5, 6, 7),
upsert AS (
    INSERT INTO mapper.usage_monthly AS l (member_id, phone_number_id, month, category, pricing_type,
        pricing_model, billable, messages)
    SELECT * FROM counted ORDER BY 1, 3, 2, 4, 5, 6, 7
    ON CONFLICT (member_id, month, phone_number_id, category, pricing_type, pricing_model, billable)
    DO UPDATE SET messages = l.messages + EXCLUDED.messages, updated_at = now()
    RETURNING 1)
SELECT counted.*, (SELECT count(*) FROM upsert) AS upserted FROM counted"""


def first_per_message(priced: list[Priced]) -> list[Priced]:
    """One pricing per wamid (the earliest reported), sorted by wamid."""
    first: dict[str, Priced] = {}
    for p in priced:
        if p.wamid not in first or p.at < first[p.wamid].at:
            first[p.wamid] = p
    return [first[w] for w in sorted(first)]


async def record_usage(conn: Any, priced: list[Priced]) -> list[UsageRow]:
    """Count each wamid's pricing once, on `conn` (the caller's transaction); returns what was added."""
    items = first_per_message(priced)
    if not items:
        return []
    rows = await conn.fetch(
        _RECORD_USAGE,
        [p.wamid for p in items],
        [p.at for p in items],
        [p.billable for p in items],
        [p.pricing_model for p in items],
        [p.category for p in items],
        [p.pricing_type for p in items],
    )
    return [UsageRow(**{k: r[k] for k in UsageRow.__slots__}) for r in rows]


def observe(added: list[UsageRow]) -> None:
    """The metrics of counted messages (after the transaction committed)."""
    for row in added:
        USAGE_MESSAGES.labels(
            row.phone_number_id, row.category or "unknown", "true" if row.billable else "false"
        ).inc(row.messages)


_REPORT = """
SELECT member_id, phone_number_id, month, category, pricing_type, pricing_model, billable, messages
FROM mapper.usage_monthly
WHERE member_id = $1 AND month = $2 AND ($3::text IS NULL OR phone_number_id = $3)
ORDER BY phone_number_id, category, pricing_type, pricing_model, billable"""


async def usage_report(conn: Any, member_id: str, month: date, phone_number_id: str | None) -> list[UsageRow]:
    """The ledger rows of one portal and month (one channel when given)."""
    rows = await conn.fetch(_REPORT, member_id, month, phone_number_id)
    return [UsageRow(**dict(r)) for r in rows]
