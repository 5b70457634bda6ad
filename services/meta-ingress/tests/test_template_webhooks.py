"""The WABA-level template webhooks (message_template_status_update, message_template_quality_update,
template_category_update; research-2026-12.md 1.12) → template events, pure and through the real
meta-ingress-web process into Kafka's b24-to-wa topic; malformed ones are 400, never 500."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from meta_ingress.web.normalize import Normalized, WebhookShapeError, normalize, parse_envelope
from meta_ingress.web.webhooks import _UNAUTHENTICATED
from meta_support import WABA, Fakes, TopicReader, dump, msg, sign, value, webhook
from zaptrix.kafka import Flow, topics_for
from zaptrix_testing.processes import Proc


def hook(field: str, val: Any, time: int = 1764000000, waba: str = WABA) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba, "time": time, "changes": [{"field": field, "value": val}]}],
    }


def run(payload: Any) -> Normalized:
    return normalize(parse_envelope(payload), lambda *_: "")


STATUS = {
    "event": "PAUSED",
    "message_template_id": 1234567890,
    "message_template_name": "order_update",
    "message_template_language": "en_US",
    "reason": "NONE",
    "other_info": {"title": "FIRST_PAUSE", "description": "Paused for 3 hours: low quality"},
}


def test_a_status_update_becomes_one_event_keyed_by_the_waba() -> None:
    result = run(hook("message_template_status_update", STATUS))
    assert result.envelopes == [] and result.count == 1
    (env,) = result.templates
    assert env.event_id == f"wa-tpl-status:{WABA}:1234567890:1764000000:PAUSED"
    assert env.conversation_key == f"waba:{WABA}" and env.occurred_at.seconds == 1764000000
    s = env.template_status_update
    assert (s.template_id, s.name, s.language, s.event, s.reason) == (
        "1234567890",
        "order_update",
        "en_US",
        "PAUSED",
        "NONE",
    )
    assert "FIRST_PAUSE" in s.detail and "low quality" in s.detail


def test_quality_and_category_are_read_by_shape_whatever_the_field() -> None:
    quality = {"previous_quality_score": "GREEN", "new_quality_score": "RED", "message_template_id": 9}
    # Meta's own example files the quality update under message_template_status_update.
    for field in ("message_template_quality_update", "message_template_status_update"):
        (env,) = run(hook(field, quality)).templates
        assert env.template_quality_update.new_quality == "RED"
    done = {"message_template_id": 9, "previous_category": "UTILITY", "new_category": "MARKETING"}
    (env,) = run(hook("template_category_update", done)).templates
    assert (env.template_category_update.previous_category, env.template_category_update.new_category) == (
        "UTILITY",
        "MARKETING",
    )
    notice = {"message_template_id": 9, "correct_category": "MARKETING", "category_update_timestamp": 1}
    (env,) = run(hook("template_category_update", notice)).templates
    assert env.template_category_update.correct_category == "MARKETING"
    assert env.template_category_update.new_category == ""


@pytest.mark.parametrize(
    "val",
    [
        STATUS | {"event": "SHINY"},
        STATUS | {"event": {"nested": 1}},
        {k: v for k, v in STATUS.items() if k != "message_template_id"},
        STATUS | {"message_template_id": "12; DROP"},
        {"message_template_id": 1, "new_quality_score": "PURPLE"},
        {"message_template_id": 1},
        "not an object",
    ],
)
def test_malformed_template_webhooks_are_shape_errors(val: Any) -> None:
    with pytest.raises(WebhookShapeError):
        run(hook("message_template_status_update", val))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_KEYS = st.sampled_from(
    ["event", "message_template_id", "new_quality_score", "new_category", "correct_category", "other_info"]
)


@given(
    st.sampled_from(["message_template_status_update", "template_category_update"]),
    st.dictionaries(_KEYS, _JSON),
)
def test_hostile_template_values_are_events_or_shape_errors(field: str, val: dict[str, Any]) -> None:
    try:
        result = run(hook(field, val))
    except WebhookShapeError:
        return
    (env,) = result.templates
    assert env.WhichOneof("kind") in (
        "template_status_update",
        "template_quality_update",
        "template_category_update",
    )


async def post(web: Proc, body: bytes, signature: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature or sign(body)}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{web.url}/webhooks/meta", content=body, headers=headers)


async def test_signed_template_webhooks_reach_the_b24_to_wa_topic(
    web: Proc, fresh: Fakes, kafka_bootstrap: str, topic_prefix: str
) -> None:
    reader = await TopicReader(kafka_bootstrap, topics_for(Flow.B24_TO_WA, topic_prefix).main).start()
    await reader.take(10_000, within=0.5)
    try:
        # A message webhook first: its channel's cached app secret then verifies the WABA's webhooks.
        assert (await post(web, dump(webhook(value([msg("text", {"body": "warm"})]))))).status_code == 200
        body = dump(hook("message_template_status_update", STATUS, time=1764000123))
        assert (await post(web, body, sign(body, "wrong"))).status_code == 401
        resp = await post(web, body)
        assert resp.status_code == 200, resp.text
        records = [r for r in await reader.take(5, within=5) if r.envelope.HasField("template_status_update")]
        assert [r.envelope.event_id for r in records] == [
            f"wa-tpl-status:{WABA}:1234567890:1764000123:PAUSED"
        ]
        bad = dump(hook("message_template_status_update", STATUS | {"event": "SHINY"}))
        refused = await post(web, bad)
        assert refused.status_code == 400 and "SHINY" in refused.text
    finally:
        await reader.stop()


def new_waba(fakes: Fakes, app_secret: str | None) -> str:
    """A WABA this pod has never seen (unique ids), with one channel holding `app_secret` (None: no
    channel at all) and, first by phone_number_id, one that cannot sign."""
    waba = str(300_000_000_000_000 + uuid.uuid4().int % 10**14)
    if app_secret is not None:
        fakes.token_keeper.add_channel(waba[-9:] + "10", access_token="t", waba_id=waba)
        fakes.token_keeper.add_channel(waba[-9:] + "20", app_secret=app_secret, waba_id=waba)
    return waba


async def test_a_cold_pod_verifies_a_template_webhook_with_its_wabas_app_secret(
    web: Proc, fresh: Fakes, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """No message of this WABA ever reached the pod: one GetWabaAppSecret, no GetChannelCredentials."""
    waba = new_waba(fresh, "cold-waba-secret")
    reader = await TopicReader(kafka_bootstrap, topics_for(Flow.B24_TO_WA, topic_prefix).main).start()
    await reader.take(10_000, within=0.5)
    try:
        body = dump(hook("message_template_status_update", STATUS, time=1764000456, waba=waba))
        resp = await post(web, body, sign(body, "cold-waba-secret"))
        assert resp.status_code == 200, resp.text
        records = [r for r in await reader.take(5, within=5) if r.envelope.HasField("template_status_update")]
        assert [r.envelope.event_id for r in records] == [
            f"wa-tpl-status:{waba}:1234567890:1764000456:PAUSED"
        ]
    finally:
        await reader.stop()
    # (meta-dispatcher shares the fake token-keeper: only these two methods are the web pod's here)
    lookups = [c for c in fresh.token_keeper.calls if c.startswith(("GetWabaAppSecret", "GetChannelCred"))]
    assert lookups == [f"GetWabaAppSecret:{waba}"]
    # Another app's signature is still refused (the sandbox channel's secret is not this WABA's).
    forged = await post(web, body, sign(body))
    assert forged.status_code == 401 and forged.json() == {"error": _UNAUTHENTICATED}
    # Cached like a channel: past its TTL (0.5 s here) and with token-keeper down, the stale entry serves.
    fresh.token_keeper.down = True
    await asyncio.sleep(0.6)
    again = dump(hook("message_template_status_update", STATUS, time=1764000457, waba=waba))
    assert (await post(web, again, sign(again, "cold-waba-secret"))).status_code == 200


async def test_a_template_webhook_of_an_unknown_waba_is_401_like_a_bad_signature(
    web: Proc, fresh: Fakes
) -> None:
    unknown, unsigned = new_waba(fresh, None), new_waba(fresh, "")
    answers = []
    for waba in (unknown, unsigned, WABA):
        body = dump(hook("message_template_status_update", STATUS, waba=waba))
        answers.append(await post(web, body, sign(body, "whatever")))
    # The same answer whether the WABA is unknown, has no app secret or the signature is wrong: no oracle.
    assert [(r.status_code, r.json()) for r in answers] == [(401, {"error": _UNAUTHENTICATED})] * 3
    assert f"GetWabaAppSecret:{unknown}" in fresh.token_keeper.calls
    assert f"GetWabaAppSecret:{unsigned}" in fresh.token_keeper.calls


async def test_a_template_webhook_while_token_keeper_is_down_is_503(web: Proc, fresh: Fakes) -> None:
    waba = new_waba(fresh, "down-waba-secret")
    fresh.token_keeper.down = True
    body = dump(hook("message_template_status_update", STATUS, waba=waba))
    resp = await post(web, body, sign(body, "down-waba-secret"))
    assert resp.status_code == 503, resp.text
    fresh.token_keeper.down = False  # Meta retries: now it verifies
    assert (await post(web, body, sign(body, "down-waba-secret"))).status_code == 200
