"""The bench's mapper_lookup and backlog_drain helpers (not the scenarios themselves: those run only
through dev/bench.sh): the SQL seeding produces exactly the keys the load generator asks for, the
mapper-side times are read right from /metrics, and the backlog's envelopes are what meta-ingress
publishes for the same text webhook."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import pytest
from mapper import migrate

from bench.common import parse_metrics
from bench.scenarios import backlog_drain as drain
from bench.scenarios import mapper_lookup as lookup


async def test_seeded_rows_carry_the_keys_the_client_derives(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """A key the client derives but the SQL did not seed would make GetOrCreateConversation create a new
    conversation (a write, not a lookup) and CheckProcessed answer "new": the figures would lie."""
    dsn = await fresh_database()
    await migrate.upgrade(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(lookup.SEED_CHANNELS)
    finally:
        await conn.close()
    took = await lookup.seed(dsn, 0, 1_500)
    assert took["total_s"] >= 0
    conn = await asyncpg.connect(dsn)
    try:
        for i in (0, 1, 999, 1_000, 1_499):
            row = await conn.fetchrow(
                "SELECT member_id, external_chat_id FROM mapper.conversation_mapping"
                " WHERE phone_number_id = $1 AND meta_whatsapp_id = $2",
                lookup.pnid(i % lookup.CHANNELS),
                lookup.wa_id(i),
            )
            assert row is not None, i
            assert row["external_chat_id"] == lookup.external_chat_id(i)
            assert row["member_id"] == lookup.member(i % lookup.CHANNELS)
            bound = await conn.fetchval(
                "SELECT member_id FROM mapper.channel_binding WHERE phone_number_id = $1",
                lookup.pnid(i % lookup.CHANNELS),
            )
            assert bound == row["member_id"]
        for j in (0, 7, 1_500 * lookup.PROCESSED_PER_CONVERSATION - 1):
            assert await conn.fetchval(
                "SELECT result FROM mapper.processed_event WHERE event_id = $1", lookup.event_id(j)
            )
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM mapper.conversation_mapping) AS c,"
            " (SELECT count(*) FROM mapper.processed_event) AS p,"
            " (SELECT count(DISTINCT member_id) FROM mapper.conversation_mapping) AS portals"
        )
        assert (counts["c"], counts["p"]) == (1_500, 1_500 * lookup.PROCESSED_PER_CONVERSATION)
        assert counts["portals"] == lookup.PORTALS
        # Within the dedupe retention (192 h): the expiry sweep must not delete them during a run.
        oldest = await conn.fetchval("SELECT now() - min(processed_at) FROM mapper.processed_event")
        assert oldest.total_seconds() < 8 * 24 * 3600
    finally:
        await conn.close()


def test_server_times_are_the_difference_between_two_scrapes() -> None:
    def scrape_text(count: int, total: float, below_1ms: int, below_2_5ms: int) -> str:
        name, labels = "zaptrix_mapper_rpc_seconds", 'method="CheckProcessed"'
        return "\n".join(
            [
                f'{name}_bucket{{{labels},le="0.001"}} {below_1ms}',
                f'{name}_bucket{{{labels},le="0.0025"}} {below_2_5ms}',
                f'{name}_bucket{{{labels},le="+Inf"}} {count}',
                f"{name}_count{{{labels}}} {count}",
                f"{name}_sum{{{labels}}} {total}",
            ]
        )

    before = parse_metrics(scrape_text(100, 0.1, 100, 100))
    # 200 more calls taking 0.3 s in all; 190 under 1 ms, all 200 under 2.5 ms.
    after = parse_metrics(scrape_text(300, 0.4, 290, 300))
    times = lookup.server_times(before, after)
    assert times == {"CheckProcessed": {"count": 200.0, "mean_ms": 1.5, "p99_le_ms": 2.5}}


def test_backlog_envelopes_are_what_meta_ingress_publishes() -> None:
    """Same event id, key, kind and message fields as meta-ingress's normalize for the text webhook."""
    from meta_ingress.web.normalize import normalize, parse_envelope

    p, c = 7, 3
    wa, pnid = drain.customer_of(p, c), drain.number(p)
    at = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
    ours = drain.envelope("abc123", 42, p, c, at)
    wamid = ours.customer_message.wamid
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "200000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": f"1555{p:07d}", "phone_number_id": pnid},
                            "contacts": [{"profile": {"name": f"Drain Customer {p}-{c}"}, "wa_id": wa}],
                            "messages": [
                                {
                                    "from": wa,
                                    "id": wamid,
                                    "timestamp": str(int(at.timestamp())),
                                    "type": "text",
                                    "text": {"body": ours.customer_message.text},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    hook = parse_envelope(json.loads(json.dumps(body)))
    normalized = normalize(hook, lambda pnid, media_id, name: "")
    theirs = [e for e in normalized.envelopes if e.WhichOneof("kind") == "customer_message"]
    assert len(theirs) == 1
    want = theirs[0]
    assert (ours.event_id, ours.conversation_key, ours.source) == (
        want.event_id,
        want.conversation_key,
        want.source,
    )
    for name in ("phone_number_id", "display_phone_number", "wa_id", "profile_name", "wamid", "type", "text"):
        assert getattr(ours.customer_message, name) == getattr(want.customer_message, name), name
    assert ours.customer_message.sent_at == want.customer_message.sent_at
    assert ours.occurred_at.seconds == want.occurred_at.seconds


@pytest.mark.parametrize("p", [0, 99])
def test_backlog_numbers_and_customers_are_distinct_per_portal(p: int) -> None:
    assert drain.number(p) != drain.number(p + 1)
    assert drain.customer_of(p, 0) != drain.customer_of(p + 1, 0)
    assert drain.customer_of(p, 0).startswith(f"4915{p:03d}")
