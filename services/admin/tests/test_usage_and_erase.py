"""zaptrix-admin usage and erase against a real mapper database (seeded through the real RPCs)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from admin_support import Seeded
from zaptrix.v1 import events_pb2
from zaptrix.v1 import mapper_pb2 as pb
from zaptrix_admin.cli import build_parser
from zaptrix_admin.output import Output, UsageError

NOV = datetime(2026, 11, 5, 9, tzinfo=UTC)
TABLES = ["conversation_mapping", "message_link", "conversation_alias", "customer_consent", "processed_event"]


async def admin(*argv: str) -> tuple[int, str, str]:
    """Run a command in-process; returns the exit code, stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    args = build_parser().parse_args(list(argv))
    code = await args.handler(args, Output(as_json=args.json, stdout=stdout, stderr=stderr))
    return code, stdout.getvalue(), stderr.getvalue()


async def customer(
    m: Seeded, pnid: str, member: str, wa_id: str, *, user_id: str = "", wamids: int = 2
) -> pb.Conversation:
    """A customer with a conversation, outbound messages (delivered, priced) and a consent record."""
    await m.stub.BindChannel(
        pb.BindChannelRequest(
            channel=pb.Channel(
                phone_number_id=pnid,
                member_id=member,
                line_id=7,
                connector_id="zaptrix_whatsapp",
                active=True,
            )
        )
    )
    got = await m.stub.GetOrCreateConversation(
        pb.GetOrCreateConversationRequest(phone_number_id=pnid, wa_id=wa_id, user_id=user_id)
    )
    conv = got.conversation
    await m.stub.UpdateConversation(
        pb.UpdateConversationRequest(
            id=conv.id, bitrix_chat_id=f"chat-{wa_id}", bitrix_contact_id=f"c-{wa_id}"
        )
    )
    updates = []
    for n in range(wamids):
        wamid = f"wamid.{pnid}.{wa_id}.{n}"
        await m.stub.LinkMessage(
            pb.LinkMessageRequest(
                link=pb.MessageLink(
                    wamid=wamid,
                    conversation_id=conv.id,
                    direction=pb.DIRECTION_OUTBOUND,
                    bitrix_message_id=f"{n + 1}{wa_id[-2:]}",
                )
            )
        )
        u = pb.UpdateMessageStatusRequest(
            wamid=wamid,
            whatsapp_status="delivered",
            bitrix_status="delivered",
            processed=pb.MarkProcessedRequest(event_id=f"wa-status:{wamid}:delivered", result="x"),
            pricing=events_pb2.Pricing(
                billable=n == 0, pricing_model="PMP", category="service", type="regular"
            ),
        )
        u.at.FromDatetime(NOV)
        updates.append(u)
    await m.stub.UpdateMessageStatuses(pb.UpdateMessageStatusesRequest(updates=updates))
    for n in range(wamids):
        await m.stub.MarkProcessed(
            pb.MarkProcessedRequest(event_id=f"wa:wamid.{pnid}.{wa_id}.in{n}", result="")
        )
    consent = pb.CustomerConsent(
        phone_number_id=pnid, wa_id=wa_id, category="marketing_messages", value="stop"
    )
    consent.changed_at.FromDatetime(NOV)
    await m.stub.RecordCustomerConsent(consent)
    return conv


async def snapshot(m: Seeded) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for table in [*TABLES, "usage_monthly", "channel_binding"]:
        rows = await m.sql(f"SELECT * FROM mapper.{table}")
        out[table] = sorted(tuple(str(v) for v in r.values()) for r in rows)
    return out


async def test_usage_report_as_table_csv_and_json(mapper_db: Seeded, tmp_path: Path) -> None:
    await customer(mapper_db, "1001", "portal-a", "4917000001", wamids=3)
    await customer(mapper_db, "1002", "portal-a", "4917000002", wamids=1)
    await customer(mapper_db, "2002", "portal-b", "4917000003", wamids=5)
    code, out, _ = await admin("--json", "usage", "--portal", "portal-a", "--month", "2026-11")
    doc = json.loads(out)
    assert code == 0 and (doc["messages"], doc["billable"]) == (4, 2)  # portal b's 5 are not in it
    assert doc["by_category"] == {"service": {"messages": 4, "billable": 2}}
    assert {(r["channel"], r["billable"], r["messages"]) for r in doc["rows"]} == {
        ("1001", True, 1),
        ("1001", False, 2),
        ("1002", True, 1),
    }
    path = tmp_path / "usage.csv"
    code, out, _ = await admin(
        "usage", "--portal", "portal-a", "--month", "2026-11", "--channel", "1001", "--csv", str(path)
    )
    assert code == 0 and "total 3 messages, 1 billable" in out
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [(r["portal"], r["month"], r["channel"], r["billable"], r["messages"]) for r in rows] == [
        ("portal-a", "2026-11", "1001", "False", "2"),
        ("portal-a", "2026-11", "1001", "True", "1"),
    ]
    code, out, _ = await admin("usage", "--portal", "portal-a", "--month", "2026-10")
    assert code == 0 and "no messages counted" in out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["usage", "--portal", "p", "--month", "November"])


async def test_erase_dry_run_counts_and_changes_nothing(mapper_db: Seeded) -> None:
    await customer(mapper_db, "1001", "portal-a", "4917000001")
    before = await snapshot(mapper_db)
    code, out, _ = await admin(
        "--json", "erase", "--channel", "1001", "--customer", "4917000001", "--dry-run"
    )
    doc = json.loads(out)
    assert code == 0 and doc["dry_run"] is True
    # 1 conversation, 2 links, 1 alias (phone), 1 consent, 2 dedupe records: the two statuses; the two
    # "wa:wamid....in<n>" records name wamids the mapper never linked to the person, so they stay.
    assert doc["would_remove"] == {
        "conversation_mapping": 1,
        "message_link": 2,
        "conversation_alias": 1,
        "customer_consent": 1,
        "processed_event": 2,
    }
    assert await snapshot(mapper_db) == before


async def test_erase_removes_the_person_and_nobody_else(mapper_db: Seeded) -> None:
    conv = await customer(mapper_db, "1001", "portal-a", "4917000001", user_id="DE.bsuid1")
    await customer(mapper_db, "1001", "portal-a", "4917000002")  # another customer of the same number
    await customer(mapper_db, "2002", "portal-b", "4917000001")  # the same phone on another portal's number
    # Dedupe ids naming the person by phone or by their Bitrix24 message ids, and the same ids of portal b.
    for event_id in (
        "wa-consent:1001:4917000001:marketing_messages:1764000000:stop",
        "b24:portal-a:101",
        "b24-edit:portal-a:201:0a1b2c",
        "wa-consent:2002:4917000001:marketing_messages:1764000000:stop",
        "b24:portal-b:101",
        "b24:portal-a:102",  # another customer's message
    ):
        await mapper_db.sql("INSERT INTO mapper.processed_event (event_id) VALUES ($1)", event_id)
    before = await snapshot(mapper_db)
    usage_before = before["usage_monthly"]
    with pytest.raises(UsageError, match="--yes"):  # no terminal to confirm on
        await admin("erase", "--channel", "1001", "--customer", "DE.bsuid1")
    code, out, _ = await admin("--json", "erase", "--channel", "1001", "--customer", "DE.bsuid1", "--yes")
    doc = json.loads(out)
    assert code == 0
    assert doc["removed"] == {
        "processed_event": 5,  # 2 statuses, the consent record, 2 of the portal's messages
        "customer_consent": 1,
        "message_link": 2,
        "conversation_alias": 2,  # phone and BSUID
        "conversation_mapping": 1,
    }
    bitrix = next(e for e in doc["elsewhere"] if e["where"] == "Bitrix24")
    assert (bitrix["portal"], bitrix["open_lines_chat_id"], bitrix["crm_contact_id"]) == (
        "portal-a",
        "chat-4917000001",
        "c-4917000001",
    )
    assert bitrix["external_chat_id"] == conv.external_chat_id
    meta = next(e for e in doc["elsewhere"] if e["where"].startswith("Meta"))
    assert meta["wamids"] == ["wamid.1001.4917000001.0", "wamid.1001.4917000001.1"]
    after = await snapshot(mapper_db)
    assert after["usage_monthly"] == usage_before  # aggregates only: nothing of the person in them
    assert after["channel_binding"] == before["channel_binding"]
    text = json.dumps(after)
    assert "4917000001.0" not in text.replace("2002.4917000001", "") and "DE.bsuid1" not in text
    # The other customer of the number and the same phone on portal b keep every row.
    for table in TABLES:
        gone = set(before[table]) - set(after[table])
        theirs = (conv.id, "1001.4917000001", "1001:4917000001", "portal-a:101", "portal-a:201")
        assert all("4917000001" in row or any(mark in "|".join(row) for mark in theirs) for row in gone), (
            table,
            gone,
        )
    others = await mapper_db.sql(
        "SELECT phone_number_id, meta_whatsapp_id FROM mapper.conversation_mapping ORDER BY 1, 2"
    )
    assert [tuple(r) for r in others] == [("1001", "4917000002"), ("2002", "4917000001")]
    assert len(await mapper_db.sql("SELECT 1 FROM mapper.message_link")) == 4
    assert len(await mapper_db.sql("SELECT 1 FROM mapper.customer_consent")) == 2
    kept = {r["event_id"] for r in await mapper_db.sql("SELECT event_id FROM mapper.processed_event")}
    assert {"wa-consent:2002:4917000001:marketing_messages:1764000000:stop", "b24:portal-b:101"} <= kept
    assert "b24:portal-a:102" in kept and not {e for e in kept if "portal-a:101" in e or "portal-a:201" in e}
    # Erased: the next dry run finds nothing, and says so.
    code, out, _ = await admin(
        "--json", "erase", "--channel", "1001", "--customer", "4917000001", "--dry-run"
    )
    assert json.loads(out)["found"] is False


async def test_erase_prints_what_lives_elsewhere(mapper_db: Seeded) -> None:
    await customer(mapper_db, "1001", "portal-a", "4917000001")
    code, out, _ = await admin("erase", "--channel", "1001", "--customer", "4917000001", "--dry-run")
    assert code == 0
    assert (
        "would remove" in out and "Bitrix24: portal=portal-a" in out and "crm_contact_id=c-4917000001" in out
    )
    assert "2 message ids" in out and "Kafka" in out
