"""Property-based tests (hypothesis): arbitrary and hostile input never raises anything but the documented
error types, and what comes out is bounded. No timing: ``deadline=None`` (the test machine is shared).

- formparse.parse_form: FormError and nothing else; bounded output; build_query round-trips.
- events.normalize (Bitrix24 event → envelopes): EventError and nothing else; at most MAX_MESSAGES
  messages and MAX_CHATS chats per event, operator text at most MAX_TEXT; every envelope encodes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from bitrix_ingress.formparse import (
    MAX_DEPTH,
    MAX_FIELDS,
    FormError,
    as_list,
    build_query,
    get_str,
    parse_form,
)
from bitrix_ingress.web import events as ev
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNICODE_DIGITS = "²³¹٣߂০१๓"

# --- formparse -------------------------------------------------------------------------------------

KEY_TOKENS = [
    "a",
    "b",
    "[",
    "]",
    "[]",
    "[0]",
    "[1]",
    "[²]",
    "[x]",
    "[a][b]",
    "%5B",
    "%5D",
    "%ff",
    "%C2%B2",
    "",
]
key = st.lists(st.sampled_from(KEY_TOKENS) | st.text(max_size=3), max_size=8).map("".join)
form_body = st.lists(
    st.tuples(key, st.text(max_size=5)).map(lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=10), max_size=40
).map("&".join)


def depth(value: Any) -> int:
    return 1 + max((depth(v) for v in value.values()), default=0) if isinstance(value, dict) else 0


def leaves(value: Any) -> int:
    return sum(leaves(v) for v in value.values()) if isinstance(value, dict) else 1


@FAST
@given(form_body | st.binary(max_size=200))
def test_parse_form_raises_only_form_errors_and_is_bounded(body: str | bytes) -> None:
    try:
        form = parse_form(body)
    except FormError as exc:
        assert str(exc)
        return
    fields = (body.count(b"&") if isinstance(body, bytes) else body.count("&")) + 1
    assert leaves(form) <= fields
    assert depth(form) <= MAX_DEPTH


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from(
        ["a[]=1", "a[²]=1", "a[0][]=x", "a[][]=x", "a[9999999999]=1", "[]=1", "a[" + "[b]" * 20 + "=1"]
    ),
    st.integers(min_value=1, max_value=6000),
)
def test_repeated_hostile_fields(field: str, count: int) -> None:
    try:
        form = parse_form("&".join([field] * count))
    except FormError:
        assert count > 10_000 or count > MAX_FIELDS or "[b]" in field or field.count("[]") > 1
        return
    for value in form.values():
        as_list(value)  # never raises, whatever the keys


simple_key = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=6)
nested = st.recursive(
    st.text(max_size=8),
    lambda inner: st.dictionaries(simple_key, inner, min_size=1, max_size=4),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(simple_key, nested, max_size=5))
def test_build_query_round_trips(data: dict[str, Any]) -> None:
    assert parse_form(build_query(data)) == data


@FAST
@given(
    st.dictionaries(st.text(max_size=4) | st.sampled_from(list(UNICODE_DIGITS)), st.text(max_size=3))
    | st.text()
)
def test_as_list_never_raises(value: Any) -> None:
    assert isinstance(as_list(value), list)


# --- events.normalize ------------------------------------------------------------------------------

scalar = st.text(max_size=12) | st.sampled_from([*UNICODE_DIGITS, "1e400", "nan", "-1", "9" * 30, "", " "])
anything = st.recursive(scalar, lambda inner: st.dictionaries(scalar, inner, max_size=3), max_leaves=10)


def odd(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return value | anything


file_item = st.fixed_dictionaries(
    {"link": odd(st.just("https://p.bitrix24.com/f")), "name": scalar, "size": scalar, "mime_type": scalar}
)
message_item = st.fixed_dictionaries(
    {
        "im": odd(
            st.fixed_dictionaries({"chat_id": scalar, "message_id": odd(st.sampled_from(["1", "2", "²"]))})
        ),
        "chat": odd(st.fixed_dictionaries({"id": odd(st.sampled_from(["wa_1", "wa_2", "wa_3", ""]))})),
        "message": odd(
            st.fixed_dictionaries(
                {
                    "text": odd(st.text(max_size=20)),
                    "id": odd(st.dictionaries(st.sampled_from(["0", "1", "²"]), scalar, max_size=2)),
                    "files": odd(
                        st.dictionaries(st.sampled_from(["0", "1", "²"]), odd(file_item), max_size=2)
                    ),
                    "params": anything,
                }
            )
        ),
        "connector": anything,
    }
)
messages = st.lists(odd(message_item), max_size=5).map(lambda items: {str(i): m for i, m in enumerate(items)})
event_form = st.fixed_dictionaries(
    {
        "event": odd(st.sampled_from([*ev.HANDLED, ev.APP_INSTALL, "OTHER", ""])),
        "ts": scalar,
        "data": odd(
            st.fixed_dictionaries(
                {"CONNECTOR": scalar, "LINE": odd(st.sampled_from(["7", "²", "-1", "9" * 30]))},
                optional={"MESSAGES": odd(messages), "DATA": odd(messages), "LINE_ID": scalar},
            )
        ),
    }
)


def check(normalized: ev.Normalized) -> None:
    kinds = [p.envelope.WhichOneof("kind") for p in normalized.pending]
    assert kinds.count("operator_message") <= ev.MAX_MESSAGES
    chats = {p.external_chat_id for p in normalized.pending if p.external_chat_id}
    assert len(chats) <= ev.MAX_CHATS
    assert len(normalized.pending) <= ev.MAX_MESSAGES + ev.MAX_CHATS
    for p in normalized.pending:
        assert p.envelope.event_id and p.envelope.SerializeToString()
        if p.envelope.WhichOneof("kind") == "operator_message":
            assert len(p.envelope.operator_message.text_bbcode) <= ev.MAX_TEXT


AUTH = ev.Auth("m1", "tok", "p.bitrix24.com", "")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_form, st.booleans())
def test_normalize_raises_only_event_errors_and_is_bounded(form: dict[str, Any], read_on_reply: bool) -> None:
    try:
        normalized = ev.normalize(form, AUTH, connector_id="c", read_on_reply=read_on_reply)
    except ev.EventError as exc:
        assert str(exc)
        return
    check(normalized)


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from([ev.MESSAGE_ADD, ev.MESSAGE_UPDATE, ev.DIALOG_FINISH]),
    st.integers(min_value=1, max_value=400),
    st.integers(min_value=1, max_value=400),
    st.integers(min_value=0, max_value=100_000),
)
def test_normalize_of_huge_events_is_bounded(event: str, count: int, chats: int, text_len: int) -> None:
    pairs = [("event", event), ("data[CONNECTOR]", "c"), ("data[LINE]", "7")]
    for i in range(count):
        p = f"data[MESSAGES][{i}]"
        pairs += [
            (f"{p}[im][message_id]", str(i)),
            (f"{p}[message][text]", "x" * (text_len if i == 0 else 3)),
            (f"{p}[chat][id]", f"wa_{i % chats}"),
            (f"{p}[connector][chat_id]", f"wa_{i % chats}"),
        ]
    form = parse_form(urlencode(pairs))
    try:
        normalized = ev.normalize(form, AUTH, connector_id="c", read_on_reply=True)
    except ev.EventError:
        return
    check(normalized)
    assert get_str(form, "event") == event
