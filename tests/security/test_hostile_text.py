"""Hostile operator text and hostile forms (review findings H3, H5, M3): no recursion the input controls,
work linear in the input, bounded input before conversion, clean 4xx answers.

No timing assertions: work is counted as executed Python lines (sys.settrace) of the module under test,
which grows x2 per doubling when the code is linear and x4 when it is quadratic.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from types import FrameType, SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest
from bitrix_ingress import formparse
from bitrix_ingress.web import events as ev
from bitrix_ingress.web.operator_events import OperatorEvents
from meta_ingress.dispatcher import bbcode
from meta_ingress.dispatcher import send_plan as meta_outbound
from meta_ingress.dispatcher.notices import Notice
from meta_ingress.dispatcher.operator_messages import OperatorMessages
from meta_ingress.web import media_url
from opentelemetry import trace
from zaptrix.kafka import Received
from zaptrix.v1 import events_pb2, mapper_pb2

WHATSAPP_PARTS = 4 * 4096  # the dispatcher sends at most 4 messages of 4,096 characters per operator message


def traced_lines(fn: Callable[[], Any], module_file: str) -> int:
    """Python lines executed in ``module_file`` while ``fn`` runs (deterministic, unlike a clock)."""
    count = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def global_(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == module_file else None

    sys.settrace(global_)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def growth(make: Callable[[int], Any], run: Callable[[Any], Any], module_file: str, n: int) -> float:
    small = traced_lines(lambda: run(make(n)), module_file)
    large = traced_lines(lambda: run(make(2 * n)), module_file)
    return large / max(small, 1)


# --- H3: BB-code conversion ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[b]" * 5000 + "x" + "[/b]" * 5000,  # balanced, 5,000 deep
        "[b]" * 5000 + "x",  # never closed
        "[quote][list][*]" * 2000 + "x",  # mixed block tags, never closed
        "[url=" * 3000 + "x]" * 3000,
    ],
    ids=["nested", "unclosed", "mixed", "url"],
)
def test_deeply_nested_bbcode_converts_without_recursion_error(text: str) -> None:
    out = bbcode.to_whatsapp(text)
    assert "x" in out
    assert len(out) <= 4 * len(text)


@pytest.mark.parametrize(
    ("family", "make"),
    [
        ("stars", lambda n: "*a " * (n // 3)),  # an opener per 3 characters, never closed
        ("underscores", lambda n: "_a " * (n // 3)),
        ("attribute", lambda n: "[a=" * (n // 3)),
        ("closers", lambda n: "[b]" * 50 + "[/i]" * (n // 4)),
        ("code", lambda n: "[code]" * (n // 6)),
    ],
)
def test_bbcode_work_doubles_when_the_input_doubles(family: str, make: Callable[[int], str]) -> None:
    ratio = growth(make, bbcode.to_whatsapp, bbcode.__file__, 1200)
    assert ratio < 2.6, f"{family}: x{ratio:.2f} work for x2 input (quadratic is x4)"


def test_operator_text_is_bounded_before_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = meta_outbound.to_whatsapp

    def spy(text: str) -> str:
        seen.append(len(text))
        return real(text)

    monkeypatch.setattr(meta_outbound, "to_whatsapp", spy)
    plan = meta_outbound.plan_message("[a=" * 40_000, [])  # 120,000 characters
    assert seen and max(seen) <= 32_768
    assert sum(len(p.text) for p in plan.parts) <= WHATSAPP_PARTS


class _Records:
    def __init__(self) -> None:
        self.marks: dict[str, str] = {}

    async def mark(self, event_id: str, result: str) -> None:
        self.marks[event_id] = result

    async def link(self, conversation_id: str, notice: Notice, wamids: list[str]) -> None:
        pass


async def test_long_operator_text_is_sent_truncated_with_a_notice() -> None:
    sent: list[str] = []
    notices: list[str] = []

    async def send(
        rec: Received, pnid: str, to: str, part_id: str, token: str, payload: dict[str, Any]
    ) -> str:
        sent.append(payload["text"]["body"])
        return f"wamid.{len(sent)}"

    async def prior(rec: Received, part_id: str, pnid: str, *, recorded: bool) -> str | None:
        return None

    async def notify(notice: Notice, error: Any, text: str) -> None:
        notices.append(text)

    sender = SimpleNamespace(check_pair=lambda key, part_id: None)
    ctx = SimpleNamespace(
        records=_Records(),
        sender=sender,
        once=SimpleNamespace(prior=prior, send=send),
        credentials=None,
        notifier=SimpleNamespace(send=notify),
    )
    window = SimpleNamespace(closed_by_record=lambda conversation: False)
    handler = OperatorMessages(ctx, window, files=None)  # type: ignore[arg-type]
    target = SimpleNamespace(
        conversation=mapper_pb2.Conversation(id="c1", phone_number_id="pn1", wa_id="4917"),
        channel=SimpleNamespace(active=True),
        creds=SimpleNamespace(access_token="tok"),
        phone_number_id="pn1",
        wa_id="4917",
        address="4917",  # Target.address: the phone, else the BSUID the reply goes to
    )
    notice = Notice("wa-fail:m1:1", "m1", 7, "zaptrix_whatsapp", "1807", "1", "wa_100_4917", "pn1:4917")
    text = ("word " * 20_000).strip()  # 100,000 characters
    plan = meta_outbound.plan_message(text, [])
    rec = Received(
        events_pb2.Envelope(event_id="b24:m1:1"), "b24-to-wa", 0, 0, None, b"", [], 1, trace.INVALID_SPAN
    )
    await handler.deliver(rec, target, plan, notice, link=True, reengage=True)  # type: ignore[arg-type]
    assert sent, "nothing was sent"
    assert len(sent) <= 4 and sum(len(s) for s in sent) <= WHATSAPP_PARTS
    assert text.startswith(" ".join(sent)[:1000])
    assert len(notices) == 1 and "too long" in notices[0]
    assert str(sum(len(s) for s in sent)) in notices[0].replace(",", "")


# --- H5: form parsing before authentication --------------------------------------------------------


def test_auto_index_form_parsing_is_linear() -> None:
    ratio = growth(lambda n: "&".join(["a[]=1"] * n), formparse.parse_form, formparse.__file__, 1000)
    assert ratio < 2.6, f"x{ratio:.2f} work for x2 fields (quadratic is x4)"


def _request(body: bytes, ctype: str = "application/x-www-form-urlencoded") -> Any:
    return SimpleNamespace(content_type=ctype, body=body, query_string="")


# What is refused here is refused before any resource is used.
outbound = OperatorEvents(None, None).receive  # type: ignore[arg-type]


async def test_unicode_digit_keys_give_a_clean_400() -> None:
    assert formparse.parse_form("a[²]=1&a[]=2") == {"a": {"²": "1", "0": "2"}}
    assert formparse.as_list({"²": "x"}) == [{"²": "x"}]
    resp = await outbound(_request(b"a[%C2%B2]=1&a[]=2"))
    assert resp.status == 400
    assert json.loads(resp.body)["error"] == "no event name"


# --- M3: JSON bodies, messages per event -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"event": "ONIMCONNECTORMESSAGEADD", "auth": {"member_id": "m1"}}).encode(),
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,  # deeper than the JSON decoder's recursion
    ],
    ids=["object", "deep"],
)
async def test_json_body_on_the_event_route_is_refused_with_a_4xx(body: bytes) -> None:
    resp = await outbound(_request(body, "application/json"))
    assert resp.status in (400, 415)
    assert "form-encoded" in json.loads(resp.body)["error"]


def test_messages_per_event_are_capped() -> None:
    pairs = [("event", "ONIMCONNECTORMESSAGEADD"), ("data[CONNECTOR]", "c"), ("data[LINE]", "7")]
    for i in range(1000):
        p = f"data[MESSAGES][{i}]"
        pairs += [
            (f"{p}[im][message_id]", str(i)),
            (f"{p}[message][text]", "hi"),
            (f"{p}[chat][id]", f"chat{i}"),
        ]
    form = formparse.parse_form(urlencode(pairs))
    auth = ev.Auth("m1", "tok", "p.bitrix24.com", "")
    normalized = ev.normalize(form, auth, connector_id="c", read_on_reply=True)
    messages = [p for p in normalized.pending if p.envelope.WhichOneof("kind") == "operator_message"]
    assert 0 < len(messages) <= 100
    assert len({p.external_chat_id for p in normalized.pending}) <= 100
    assert any("more than" in reason for reason in normalized.skipped)
    assert len(normalized.skipped) <= 10  # one reason for the whole excess, not one line per message


def test_unicode_digit_media_url_expiry_is_a_clean_refusal() -> None:
    # GET /media/...?exp=²: "²".isdigit() is True but int() refuses it (a 500 before the signature check).
    with pytest.raises(media_url.MediaUrlError):
        media_url.check(b"secret", "123", "456", "²", "f.jpg", "0" * 64)
