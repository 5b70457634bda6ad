"""zaptrix-admin against the running system: a portal added by hand is registered on Bitrix24 (so operator
replies arrive), a number is bound and paused without any gRPC script, and dead letters are listed by
portal, replayed with confirmation and audited."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from typing import Any

from zaptrix.kafka import EventProducer, Flow, new_envelope, topics_for
from zaptrix.kafka.envelope import H_DLQ_AT, H_DLQ_REASON, H_DLQ_SOURCE, encode
from zaptrix.v1 import events_pb2
from zaptrix_testing.processes import console_script
from zaptrix_testing.seeding import SANDBOX_MEMBER_ID, SANDBOX_PHONE_NUMBER_ID

from tests.system import System


async def admin(system: System, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [console_script("zaptrix-admin"), *args],
        env=system.local.admin_env() | env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


async def test_a_portal_added_from_the_cli_is_registered_on_bitrix24(system: System) -> None:
    member = f"byhand-{uuid.uuid4().hex[:8]}"
    spec = {"member_id": member, "domain": f"{member}.bitrix24.com", "line_id": 4, "preregistered": False}
    assert (await system.bitrix.post("/_sandbox/portals", json=spec)).status_code == 201
    tokens = (await system.bitrix.post(f"/_sandbox/portals/{member}/tokens", json={})).json()
    portal = (await system.bitrix.get(f"/_sandbox/portals/{member}")).json()
    assert portal["connectors"] == {} and portal["bindings"] == []

    added = await admin(
        system,
        "portals",
        "add",
        "--member-id",
        member,
        "--domain",
        spec["domain"],
        "--client-endpoint",
        tokens["client_endpoint"],
        "--client-id",
        portal["client_id"],
        "--client-secret-env",
        "SECRET",
        "--refresh-token-env",
        "REFRESH",
        "--register",
        SECRET="sandbox-client-secret",
        REFRESH=tokens["refresh_token"],
    )
    assert added.returncode == 0, added.stderr + added.stdout
    assert "registered on Bitrix24" in added.stdout
    portal = (await system.bitrix.get(f"/_sandbox/portals/{member}")).json()
    assert "zaptrix_whatsapp" in portal["connectors"]
    bound = {b["event"].upper(): b["handler"] for b in portal["bindings"] if b.get("handler")}
    outbound = f"http://127.0.0.1:{system.ports.bitrix_web}/webhooks/bitrix24/outbound"
    assert bound["ONIMCONNECTORMESSAGEADD"] == outbound, "operator replies now reach the gateway"

    listed = as_json(await admin(system, "--json", "portals", "list"))
    assert {p["member_id"]: p["state"] for p in listed}[member] == "active"
    again = as_json(await admin(system, "--json", "portals", "register", member))
    assert again["member_id"] == member and not any(c.startswith("bound") for c in again["changes"][1:])


async def test_bind_pause_and_show_a_number_from_the_cli(system: System) -> None:
    pnid = str(100000000000000 + uuid.uuid4().int % 10**9)
    number = {"phone_number_id": pnid, "display_phone_number": "15550001234", "access_token": f"tok-{pnid}"}
    number["waba_id"] = "200000000000001"
    assert (await system.graph.post("/_sandbox/numbers", json=number)).status_code == 201
    bad = await admin(
        system,
        "channels",
        "bind",
        "--portal",
        SANDBOX_MEMBER_ID,
        "--line",
        "1",
        "--phone-number-id",
        pnid,
        "--waba-id",
        number["waba_id"],
        "--access-token-env",
        "TOKEN",
        "--app-secret-env",
        "SECRET",
        "--verify-token-env",
        "VERIFY",
        TOKEN="not-the-token",
        SECRET="s3cret",
        VERIFY="verify-me",
    )
    assert bad.returncode == 1 and "NOT bound" in bad.stdout and "token_reads_number" in bad.stdout
    assert "not-the-token" not in bad.stdout + bad.stderr

    good = await admin(
        system,
        "--json",
        "channels",
        "bind",
        "--portal",
        SANDBOX_MEMBER_ID,
        "--line",
        "1",
        "--phone-number-id",
        pnid,
        "--waba-id",
        number["waba_id"],
        "--access-token-env",
        "TOKEN",
        "--app-secret-env",
        "SECRET",
        "--verify-token-env",
        "VERIFY",
        TOKEN=number["access_token"],
        SECRET="s3cret",
        VERIFY="verify-me",
    )
    result = json.loads(good.stdout)
    assert result["bound"], good.stderr + good.stdout
    assert number["access_token"] not in good.stdout + good.stderr
    mine = as_json(await admin(system, "--json", "channels", "list", "--portal", SANDBOX_MEMBER_ID))
    assert {c["phone_number_id"]: c["active"] for c in mine}[pnid] is True

    paused = as_json(await admin(system, "--json", "channels", "pause", pnid, "--yes"))
    assert paused["active"] is False
    refused = await admin(system, "channels", "resume", pnid)  # no terminal to confirm on, no --yes
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    shown = await admin(system, "--json", "channels", "show", pnid)
    assert json.loads(shown.stdout)["active"] is False


async def test_dead_letters_listed_by_portal_replayed_with_confirmation_and_audited(system: System) -> None:
    topics = topics_for(Flow.WA_TO_B24, system.kafka.topic_prefix)
    wamid = f"wamid.admin{uuid.uuid4().hex[:10]}"
    env = new_envelope(
        f"wa:{wamid}",
        f"{SANDBOX_PHONE_NUMBER_ID}:491700000099",
        events_pb2.PLATFORM_WHATSAPP,
        customer_message=events_pb2.CustomerMessage(
            phone_number_id=SANDBOX_PHONE_NUMBER_ID, wa_id="491700000099", wamid=wamid, type="text", text="hi"
        ),
    )
    key, value, headers = encode(env)
    producer = EventProducer(system.kafka, client_id="test")
    await producer.start()
    try:
        await producer.publish_raw(
            topics.dlq,
            key,
            value,
            [
                *headers,
                (H_DLQ_REASON, b"NOT_ACTIVE_LINE: the line was switched off"),
                (H_DLQ_SOURCE, topics.main.encode()),
                (H_DLQ_AT, b"2026-12-04T12:00:00+00:00"),
            ],
        )
    finally:
        await producer.stop()

    find = ("--portal", SANDBOX_MEMBER_ID, "--event-id", f"wa:{wamid}")
    [letter] = as_json(await admin(system, "--json", "dead-letters", "list", *find))
    assert letter["member_id"] == SANDBOX_MEMBER_ID and letter["event_type"] == "customer_message"
    other = as_json(await admin(system, "--json", "dead-letters", "list", "--portal", "someone-else"))
    assert all(x["event_id"] != f"wa:{wamid}" for x in other)
    by_reason = as_json(await admin(system, "--json", "dead-letters", "list", "--reason", "not_active_line"))
    assert letter["id"] in {x["id"] for x in by_reason}

    dry = as_json(await admin(system, "--json", "dead-letters", "replay", "--dry-run", *find))
    assert [r["outcome"] for r in dry] == ["would_replay"]
    refused = await admin(system, "dead-letters", "replay", letter["id"])
    assert refused.returncode == 1 and "pass --yes" in refused.stderr
    done = await admin(
        system, "dead-letters", "replay", letter["id"], "--yes", "--why", "line on", "--actor", "ops:t"
    )
    assert done.returncode == 0 and "1 dead letter(s) replayed" in done.stdout, done.stderr + done.stdout
    twice = await admin(system, "dead-letters", "replay", letter["id"], "--yes")
    assert twice.returncode == 1 and "already replayed" in twice.stderr

    audit = as_json(await admin(system, "--json", "dead-letters", "audit", "--portal", SANDBOX_MEMBER_ID))
    entry = next(a for a in audit if a["dead_letter_id"] == letter["id"])
    assert (entry["actor"], entry["why"], entry["outcome"]) == ("ops:t", "line on", "replayed")
    shown = as_json(await admin(system, "--json", "dead-letters", "show", letter["id"]))
    assert shown["replayed"] and shown["event"]["customer_message"]["wamid"] == wamid


async def test_tokens_and_the_old_entry_points_say_they_are_deprecated(system: System) -> None:
    status = as_json(await admin(system, "--json", "tokens", "status"))
    sandbox = {p["member_id"]: p for p in status["portals"]}[SANDBOX_MEMBER_ID]
    live = (await system.bitrix.get(f"/_sandbox/portals/{SANDBOX_MEMBER_ID}")).json()
    assert sandbox["state"] == "active" and sandbox["refresh_token_age_days"] >= 0
    assert live["refresh_token"] not in json.dumps(status), "no secret in the status"
    assert as_json(await admin(system, "--json", "tokens", "reauth")) == []
    assert len(as_json(await admin(system, "--json", "tokens", "generate-key"))["key"]) == 44

    for argv in (["token-keeper-admin", "status"], ["zaptrix-replay", "--flow", "wa-history", "--dry-run"]):
        old = await asyncio.to_thread(
            subprocess.run,
            [console_script(argv[0]), *argv[1:]],
            env=system.local.admin_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert old.returncode == 0, old.stderr + old.stdout
        first = old.stderr.splitlines()[0]
        assert "is deprecated" in first and "zaptrix-admin" in first, "one line on stderr, then as before"
