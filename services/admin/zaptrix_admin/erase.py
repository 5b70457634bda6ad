"""`zaptrix-admin erase`: remove everything Zaptrix holds about one customer of one channel, and say what
lives elsewhere (Bitrix24, Meta, Kafka) with the ids needed to remove it there (docs/security.md)."""

from __future__ import annotations

import argparse
from typing import Any

from mapper.erase import erase_person, find_person

from zaptrix_admin.mapper_db import mapper_database
from zaptrix_admin.output import Output, UsageError, confirm

TABLES = ("conversation_mapping", "message_link", "conversation_alias", "customer_consent", "processed_event")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "erase", help="erase a customer (conversation, links, aliases, consent, dedupe records)"
    )
    p.add_argument("--channel", required=True, help="phone_number_id of the WhatsApp number")
    p.add_argument("--customer", required=True, help="the customer's WhatsApp id (phone) or BSUID")
    p.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=run)


def _elsewhere(out: Output, items: list[dict[str, Any]]) -> None:
    out.say("Not removed by Zaptrix (remove it there):")
    for item in items:
        ids = ", ".join(f"{k}={v}" for k, v in item.items() if k not in ("where", "how", "wamids") and v)
        wamids = item.get("wamids")
        extra = f", {len(wamids)} message ids (wamids; all of them with --json)" if wamids else ""
        out.say(f"- {item['where']}: {ids}{extra}\n  {item['how']}")


async def run(args: argparse.Namespace, out: Output) -> int:
    channel, customer = args.channel.strip(), args.customer.strip()
    if not channel or not customer:
        raise UsageError("--channel and --customer must not be empty")
    async with mapper_database() as db, db.connection() as conn:
        person = await find_person(conn, channel, customer)
        counts = [(t, person.counts[t]) for t in TABLES]
        elsewhere = person.elsewhere()
        if not any(n for _, n in counts):
            data = {"channel": channel, "customer": customer, "found": False, "elsewhere": elsewhere}
            out.table(
                f"nothing held about {customer} on channel {channel}", ("table", "rows"), counts, data=data
            )
            return 0
        if args.dry_run:
            data = {"channel": channel, "customer": customer, "dry_run": True, "would_remove": dict(counts)}
            out.table(
                f"erase {customer} on channel {channel} would remove",
                ("table", "rows"),
                counts,
                data={**data, "elsewhere": elsewhere},
            )
            if not out.as_json:
                _elsewhere(out, elsewhere)
            return 0
        total = sum(n for _, n in counts)
        if not confirm(
            out, f"erase {total} rows about {customer} on channel {channel}?", assume_yes=args.yes
        ):
            out.say("nothing erased")
            return 1
        with out.progress("erasing", len(TABLES)) as bar:
            removed = await erase_person(conn, person, lambda table, n: bar.advance(bar.task_ids[0]))
    rows = [(t, removed.get(t, 0)) for t in TABLES]
    data = {"channel": channel, "customer": customer, "removed": removed, "elsewhere": elsewhere}
    out.table(f"erased {customer} on channel {channel}", ("table", "rows removed"), rows, data=data)
    if not out.as_json:
        out.say("usage_monthly: monthly counts only, nothing of the person in it")
        _elsewhere(out, elsewhere)
    return 0
