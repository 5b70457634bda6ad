"""`zaptrix-admin usage`: the cost ledger of one portal and month (messages by channel, category, pricing
type and billable), as a table, CSV (--csv FILE, "-" for stdout) or JSON (--json)."""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import date
from typing import Any

from mapper.ledger import UsageRow, usage_report

from zaptrix_admin.mapper_db import mapper_database
from zaptrix_admin.output import Output, UsageError

HEADER = ("channel", "category", "pricing_type", "pricing_model", "billable", "messages")


def month(value: str) -> date:
    """YYYY-MM -> the month's first day."""
    try:
        year, mon = value.split("-")
        return date(int(year), int(mon), 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"month must be YYYY-MM, not {value!r}") from None


def register(sub: Any) -> None:
    p = sub.add_parser("usage", help="messages and billable messages of a portal in a month (cost ledger)")
    p.add_argument("--portal", required=True, help="the portal's member_id")
    p.add_argument("--month", required=True, type=month, help="YYYY-MM (UTC calendar month)")
    p.add_argument("--channel", help="only this phone_number_id")
    p.add_argument("--csv", metavar="FILE", help="also write the rows as CSV to FILE ('-': stdout, no table)")
    p.set_defaults(handler=run)


def _row(r: UsageRow) -> tuple[Any, ...]:
    return (r.phone_number_id, r.category, r.pricing_type, r.pricing_model, r.billable, r.messages)


def totals(rows: list[UsageRow]) -> dict[str, Any]:
    by_category: dict[str, dict[str, int]] = {}
    for r in rows:
        c = by_category.setdefault(r.category, {"messages": 0, "billable": 0})
        c["messages"] += r.messages
        c["billable"] += r.messages if r.billable else 0
    return {
        "messages": sum(r.messages for r in rows),
        "billable": sum(r.messages for r in rows if r.billable),
        "by_category": by_category,
    }


def write_csv(path: str, rows: list[tuple[Any, ...]]) -> None:
    """The rows with a header, to `path` ("-": stdout). A small local file: written synchronously."""
    stream = sys.stdout if path == "-" else open(path, "w", newline="", encoding="utf-8")
    try:
        writer = csv.writer(stream)
        writer.writerow(("portal", "month", *HEADER))
        writer.writerows(rows)
    finally:
        if stream is not sys.stdout:
            stream.close()


async def run(args: argparse.Namespace, out: Output) -> int:
    if args.portal.strip() == "":
        raise UsageError("--portal must not be empty")
    async with mapper_database() as db, db.connection() as conn:
        rows = await usage_report(conn, args.portal, args.month, args.channel)
    table = [_row(r) for r in rows]
    if args.csv:
        write_csv(args.csv, [(args.portal, f"{args.month:%Y-%m}", *t) for t in table])
        if args.csv == "-":
            return 0
    summary = totals(rows)
    title = f"usage of portal {args.portal} in {args.month:%Y-%m}" + (
        f", channel {args.channel}" if args.channel else ""
    )
    data = {
        "portal": args.portal,
        "month": f"{args.month:%Y-%m}",
        "channel": args.channel,
        "rows": [dict(zip(HEADER, t, strict=True)) for t in table],
        **summary,
    }
    out.table(title, HEADER, table, data=data)
    if not out.as_json:
        out.say(f"total {summary['messages']} messages, {summary['billable']} billable")
        if not rows:
            out.say("no messages counted (the ledger counts delivered messages sent through Zaptrix)")
    return 0
