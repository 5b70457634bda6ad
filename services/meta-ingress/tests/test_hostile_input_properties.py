"""Property-based tests (hypothesis): arbitrary and hostile input never raises anything but the documented
error types, and what comes out is bounded. No timing: ``deadline=None`` (the test machine is shared).

- bbcode.to_whatsapp / split_text / outbound.plan_message: never raise; bounded output.
- normalize (webhook → events): WebhookShapeError (or RecursionError for absurd nesting, which the web
  handler answers 400) and nothing else; one envelope per message/status item; every envelope encodes.
- the Graph error classifier (graph.error_from_response → errors.classify / describe / notice_for,
  notices.graph_error): never raises, whatever Meta (or a man in the middle) answers.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meta_ingress.dispatcher.bbcode import MAX_TEXT, split_text, to_whatsapp
from meta_ingress.dispatcher.notices import graph_error
from meta_ingress.dispatcher.send_plan import MAX_TEXT_PARTS, plan_message
from meta_ingress.graph.client import error_from_response, parse_retry_after
from meta_ingress.graph.errors import Action, GraphApiError, classify, describe, notice_for
from meta_ingress.web.normalize import WebhookShapeError, normalize, parse_envelope

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- hostile building blocks -----------------------------------------------------------------------

UNICODE_DIGITS = "²³¹⁴٣߂০१๓"  # str.isdigit() is True, int() refuses them
TAG_TOKENS = [
    "[b]",
    "[/b]",
    "[i]",
    "[/i]",
    "[s]",
    "[/s]",
    "[u]",
    "[/u]",
    "[url=",
    "[url]",
    "[/url]",
    "[code]",
    "[/code]",
    "[quote]",
    "[/quote]",
    "[list]",
    "[list=1]",
    "[list=a]",
    "[list=²]",
    "[list=\U00010400]",
    "[/list]",
    "[*]",
    "[table]",
    "[tr]",
    "[td]",
    "[/td]",
    "[/tr]",
    "[/table]",
    "[br]",
    "[hr]",
    "[a=",
    "[user=1]",
    "[/user]",
    "[call=",
    "[/call]",
    "[img]",
    "[/img]",
    "[icon=x]",
    "]",
    "[",
    "=",
    "*",
    "_",
    "~",
    "`",
    "```",
    " ",
    "\n",
    "\r\n",
    "\t",
    "&amp;",
    "&lt;",
    "&#39;",
    "-" * 20 + "\n",
    "a",
    "b c",
    "https://x.io",
    "javascript:x",
    "👍🏽",
    "\u200b",
    "²",
]
bbcode_text = st.lists(st.sampled_from(TAG_TOKENS) | st.text(max_size=6), max_size=80).map("".join)

json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from([*UNICODE_DIGITS, "1e400", "-1", "99999999999999999999999", "", " "])
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25,
)


def odd(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The value as expected, or any JSON value instead (wrong types where a field is expected)."""
    return value | json_value


# --- BB-code ---------------------------------------------------------------------------------------


@FAST
@given(bbcode_text)
def test_bbcode_never_raises_and_is_bounded(text: str) -> None:
    out = to_whatsapp(text)
    assert isinstance(out, str)
    out.encode("utf-8")  # nothing a protobuf string field would refuse
    # The largest expansions: [hr] (4 → 12 characters), numbered list items, escaped markers (1 → 3).
    assert len(out) <= 5 * len(text) + 16


@FAST
@given(
    st.lists(st.sampled_from(["[b]", "[/b]", "[quote]", "[list]", "[*]", "[url=", "]", "x"]), max_size=3000)
)
def test_bbcode_deep_nesting_never_raises(tokens: list[str]) -> None:
    text = "".join(tokens)
    assert len(to_whatsapp(text)) <= 5 * len(text) + 16


@FAST
@given(st.from_regex(r"[A-Za-z0-9]+( [A-Za-z0-9]+)*", fullmatch=True))
def test_plain_words_pass_unchanged(text: str) -> None:
    assert to_whatsapp(text) == text


@FAST
@given(st.text(max_size=300), st.integers(min_value=8, max_value=200))
def test_split_text_chunks_are_bounded_and_keep_the_words(text: str, limit: int) -> None:
    chunks = split_text(text, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    assert "".join("".join(chunks).split()) == "".join(text.split())


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["*a ", "[a=", "[b]", "x ", "[code]", "-" * 20 + "\n"]), st.integers(1, 40_000))
def test_plan_message_bounds_any_operator_text(unit: str, repeat: int) -> None:
    plan = plan_message(unit * repeat, [])
    texts = [p.text for p in plan.parts if p.kind == "text"]
    assert len(texts) <= MAX_TEXT_PARTS
    assert all(len(t) <= MAX_TEXT for t in texts)
    if plan.truncated_to is not None:
        assert plan.truncated_to == sum(len(t) for t in texts)


# --- normalize (webhook → events) ------------------------------------------------------------------

message = st.fixed_dictionaries(
    {
        "id": odd(st.text(min_size=1, max_size=20)),
        "from": odd(st.sampled_from(["4917", "16505551234", ""])),
        "timestamp": odd(st.sampled_from(["1749416383", "²", "1e400", "-5", "99999999999999999999"])),
        "type": odd(
            st.sampled_from(
                [
                    "text",
                    "image",
                    "audio",
                    "location",
                    "contacts",
                    "interactive",
                    "button",
                    "reaction",
                    "order",
                    "system",
                    "unsupported",
                    "request_welcome",
                    "new_kind",
                ]
            )
        ),
    },
    optional={
        "text": odd(st.fixed_dictionaries({"body": odd(st.text(max_size=30))})),
        "image": odd(st.fixed_dictionaries({"id": odd(st.text(max_size=8)), "file_size": json_scalar})),
        "audio": odd(st.fixed_dictionaries({"id": odd(st.text(max_size=8)), "voice": json_scalar})),
        "location": odd(st.fixed_dictionaries({"latitude": json_scalar, "longitude": json_scalar})),
        "contacts": json_value,
        "interactive": odd(st.fixed_dictionaries({"type": json_scalar, "nfm_reply": json_value})),
        "order": odd(st.fixed_dictionaries({"product_items": json_value, "catalog_id": json_scalar})),
        "errors": odd(
            st.lists(st.fixed_dictionaries({"code": json_scalar, "title": json_scalar}), max_size=3)
        ),
        "context": json_value,
        "referral": json_value,
    },
)
status = st.fixed_dictionaries(
    {
        "id": odd(st.text(min_size=1, max_size=20)),
        "status": odd(st.sampled_from(["sent", "delivered", "read", "failed"])),
        "recipient_id": json_scalar,
        "timestamp": json_scalar,
    },
    optional={
        "errors": odd(
            st.lists(st.fixed_dictionaries({"code": odd(st.sampled_from([131047, "131047", "²"]))}))
        )
    },
)
change_value = st.fixed_dictionaries(
    {"metadata": odd(st.fixed_dictionaries({"phone_number_id": odd(st.sampled_from(["pn1", "pn2"]))}))},
    optional={
        "contacts": odd(
            st.lists(st.fixed_dictionaries({"wa_id": json_scalar, "profile": json_value}), max_size=3)
        ),
        "messages": odd(st.lists(odd(message), max_size=4)),
        "statuses": odd(st.lists(odd(status), max_size=4)),
        "errors": json_value,
    },
)
webhook_body = odd(
    st.fixed_dictionaries(
        {
            "object": odd(st.just("whatsapp_business_account")),
            "entry": odd(
                st.lists(
                    odd(
                        st.fixed_dictionaries(
                            {
                                "changes": odd(
                                    st.lists(
                                        odd(
                                            st.fixed_dictionaries(
                                                {
                                                    "field": odd(st.just("messages")),
                                                    "value": odd(change_value),
                                                }
                                            )
                                        ),
                                        max_size=3,
                                    )
                                )
                            }
                        )
                    ),
                    max_size=3,
                )
            ),
        }
    )
)


def _items(payload: Any, key: str) -> int:
    """Upper bound of the list items called ``key`` in the payload's changes."""
    total = 0
    for entry in payload.get("entry") or [] if isinstance(payload, dict) else []:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else []:
            value = change.get("value") if isinstance(change, dict) else None
            items = value.get(key) if isinstance(value, dict) else None
            total += len(items) if isinstance(items, list) else 0
    return total


def _media_url(pnid: str, media_id: str, filename: str) -> str:
    return f"https://mi/{pnid}/{media_id}/{filename}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(webhook_body)
def test_normalize_raises_only_shape_errors_and_is_bounded(payload: Any) -> None:
    try:
        result = normalize(parse_envelope(payload), _media_url)
    except WebhookShapeError as exc:
        assert str(exc)
        return
    assert result.messages <= _items(payload, "messages")
    assert result.statuses <= _items(payload, "statuses")
    assert len(result.envelopes) == result.messages + result.statuses
    assert len(result.window_closed) <= result.statuses
    for env in [*result.envelopes, *result.window_closed]:
        assert env.event_id and env.SerializeToString()


@FAST
@given(json_value)
def test_normalize_of_any_json_value(payload: Any) -> None:
    try:
        normalize(parse_envelope(payload), _media_url)
    except WebhookShapeError:
        pass


def test_normalize_of_deep_and_odd_documents() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = {"a": [deep]}
    lone = json.loads(
        '{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages",'
        '"value":{"metadata":{"phone_number_id":"pn"},"messages":[{"id":"w","from":"1",'
        '"type":"text","text":{"body":"\\ud800"}}]}}]}]}'
    )
    for payload in (deep, {"object": "whatsapp_business_account", "entry": [deep]}, lone):
        try:
            normalize(parse_envelope(payload), _media_url)
        except (WebhookShapeError, RecursionError):
            pass


# --- the Graph error classifier --------------------------------------------------------------------

graph_error_body = st.one_of(
    st.binary(max_size=200),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "error": odd(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "code": odd(st.sampled_from([131047, 130429, 190, 0, 131056, "131047", "²", 2**40])),
                        "error_subcode": json_scalar,
                        "message": json_scalar,
                        "error_data": odd(st.fixed_dictionaries({"details": json_scalar})),
                        "error_user_title": json_scalar,
                        "fbtrace_id": json_scalar,
                    },
                )
            )
        }
    ).map(lambda v: json.dumps(v).encode()),
    st.just(b"[" * 100_000 + b"]" * 100_000),
)
retry_after = st.none() | st.sampled_from(
    ["5", "0.5", "²", "1e400", "9" * 400, "Wed, 21 Oct 2015 07:28:00 GMT", "x"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=400, max_value=599), graph_error_body, retry_after)
def test_graph_errors_are_always_classified(status: int, body: bytes, retry: str | None) -> None:
    headers = [(b"retry-after", retry.encode())] if retry is not None else []
    err = error_from_response(httpx.Response(status, headers=headers, content=body))
    assert isinstance(err, GraphApiError)
    assert classify(err) in set(Action)
    assert len(describe(err)) <= 300
    assert notice_for(err)
    proto = graph_error(err)
    assert len(proto.message) <= 500 and len(proto.details) <= 500
    assert proto.SerializeToString() is not None
    assert err.retry_after is None or 0 <= err.retry_after < float("inf")


@FAST
@given(st.text(max_size=30) | st.sampled_from(["²", "1e400", "9" * 400, "nan", "-1"]))
def test_parse_retry_after_never_raises(value: str) -> None:
    result = parse_retry_after(value)
    assert result is None or 0 <= result < float("inf")
