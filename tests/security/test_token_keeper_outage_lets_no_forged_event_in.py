"""A forged Bitrix24 event during a token-keeper outage (issue 13 / review M9): bitrix-ingress-web takes events
on token-keeper's last verdict while it is down, and that must not let a token in that token-keeper never
accepted. Someone who knows a portal's member_id (it is in every install and event) waits for an outage and
posts events with guessed tokens: refused, nothing reaches Kafka.

The real `bitrix-ingress-web` process against real Kafka, with the kit's in-test token-keeper and mapper.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlencode

import httpx
from aiokafka import AIOKafkaConsumer
from zaptrix.kafka import Flow, topics_for
from zaptrix.kafka.admin import ensure_topics
from zaptrix.settings import KafkaSettings
from zaptrix_testing.fakes import Portal, start_fakes
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import console_script, start_process, wait_http


def event(token: str, message_id: str) -> bytes:
    p = "data[MESSAGES][0]"
    return urlencode(
        [
            ("event", "ONIMCONNECTORMESSAGEADD"),
            ("data[CONNECTOR]", "zaptrix_whatsapp"),
            ("data[LINE]", "7"),
            (f"{p}[im][chat_id]", "1807"),
            (f"{p}[im][message_id]", message_id),
            (f"{p}[message][user_id]", "27"),
            (f"{p}[message][text]", "pay to this account"),
            (f"{p}[chat][id]", "wa_100_4917"),
            ("auth[member_id]", "m1"),
            ("auth[application_token]", token),
        ]
    ).encode()


async def test_guessed_tokens_during_a_token_keeper_outage_are_refused(
    tmp_path: Path, kafka_bootstrap: str, processes: None
) -> None:
    fakes = await start_fakes()
    fakes.token_keeper.add(Portal("m1", "apptok"))
    fakes.mapper.bind("100", "m1", 7)
    fakes.mapper.add_conversation("100", "4917", "Anna").external_chat_id = "wa_100_4917"
    prefix = f"zt{uuid.uuid4().hex[:10]}"
    topic = topics_for(Flow.B24_TO_WA, prefix).main
    await ensure_topics(KafkaSettings(bootstrap_servers=kafka_bootstrap), [topic], 1)
    port = free_port()
    env = {
        "ZAPTRIX_WEB_PORT": str(port),
        "ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ZAPTRIX_KAFKA_TOPIC_PREFIX": prefix,
        "ZAPTRIX_ENVIRONMENT": "test",
        "ZAPTRIX_VERIFY_CACHE_TTL_S": "0",  # every event below is past the verify cache
        **fakes.env(),
    }
    proc = start_process([console_script("bitrix-ingress-web")], env, tmp_path / "web.log")
    url = f"http://127.0.0.1:{port}/webhooks/bitrix24/outbound"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    try:
        await wait_http(f"http://127.0.0.1:{port}/ready", proc, ok=lambda s: s == 200)
        async with httpx.AsyncClient(timeout=30) as http:
            # The portal's own events were verified, and one guess refused, before the outage.
            assert (await http.post(url, content=event("apptok", "1"), headers=form)).status_code == 200
            assert (await http.post(url, content=event("guess-0", "2"), headers=form)).status_code == 401
            fakes.token_keeper.down = True
            answers = [
                (await http.post(url, content=event(token, f"9{i}"), headers=form)).status_code
                for i, token in enumerate(["guess-0", "guess-1", "", "apptok2", "APPTOK"])
            ]
    finally:
        await proc.astop()
        await fakes.server.stop(None)
    assert answers == [401, 503, 401, 503, 503]  # refused as before; never-verified tokens not guessed at
    reader = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        got = [r for recs in (await reader.getmany(timeout_ms=3000)).values() for r in recs]
    finally:
        await reader.stop()
    ids = {dict(r.headers)["zaptrix-event-id"].decode() for r in got}
    assert {i for i in ids if i.startswith("b24:")} == {"b24:m1:1"}  # the portal's own message only
