"""Normalization of Bitrix24 connector events into envelopes (both shapes, ids, tokens, malformed items)."""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlencode

import pytest
from bitrix_ingress.formparse import FormError, parse_form
from bitrix_ingress.text import notice_text
from bitrix_ingress.web import events as ev

CONNECTOR = "zaptrix_whatsapp"


def form(pairs: list[tuple[str, str]], *, tokens: bool = True) -> dict[str, Any]:
    auth = [
        ("auth[member_id]", "m1"),
        ("auth[application_token]", "apptok"),
        ("auth[domain]", "p.bitrix24.com"),
    ]
    if tokens:
        auth += [("auth[access_token]", "secret-access"), ("auth[expires_in]", "3600")]
    return parse_form(urlencode([*pairs, ("ts", "1773759161"), *auth]))


def message_add(key: str = "MESSAGES", n: int = 1, **extra: str) -> list[tuple[str, str]]:
    pairs = [("event", "ONIMCONNECTORMESSAGEADD"), ("data[CONNECTOR]", CONNECTOR), ("data[LINE]", "7")]
    for i in range(n):
        p = f"data[{key}][{i}]"
        pairs += [
            (f"{p}[im][chat_id]", "1807"),
            (f"{p}[im][message_id]", str(86497 + i)),
            (f"{p}[message][user_id]", "27"),
            (f"{p}[message][text]", f"[b]Klaus:[/b][br] Hallo {i}"),
            (f"{p}[chat][id]", "wa_100_4917"),
        ]
    pairs += list(extra.items())
    return pairs


def normalize(f: dict[str, Any], read_on_reply: bool = True) -> ev.Normalized:
    return ev.normalize(f, ev.Auth.from_form(f), connector_id=CONNECTOR, read_on_reply=read_on_reply)


@pytest.mark.parametrize("key", ["MESSAGES", "DATA", "messages"])
def test_message_add_both_shapes(key: str) -> None:
    out = normalize(form(message_add(key, n=2)))
    kinds = [p.envelope.WhichOneof("kind") for p in out.pending]
    assert kinds == ["operator_message", "operator_message", "operator_read"]
    first = out.pending[0].envelope
    assert first.event_id == "b24:m1:86497"
    assert out.pending[1].envelope.event_id == "b24:m1:86498"
    om = first.operator_message
    assert (om.member_id, om.domain, om.connector_id, om.line_id) == ("m1", "p.bitrix24.com", CONNECTOR, 7)
    assert (om.bitrix_chat_id, om.bitrix_message_id, om.external_chat_id) == ("1807", "86497", "wa_100_4917")
    assert om.operator_user_id == "27" and om.text_bbcode == "[b]Klaus:[/b][br] Hallo 0"
    assert first.occurred_at.seconds == 1773759161
    read = out.pending[2]
    assert read.envelope.event_id == "b24-read:m1:wa_100_4917:1773759161"
    assert read.external_chat_id == "wa_100_4917" and not read.envelope.operator_read.wamids
    assert read.envelope.operator_read.replying  # a reply follows: the typing indicator may show


def test_events_without_tokens_are_normal_events() -> None:
    f = form(message_add(), tokens=False)
    auth = ev.Auth.from_form(f)
    assert auth.access_token == "" and auth.application_token == "apptok"
    assert [p.envelope.event_id for p in normalize(f, read_on_reply=False).pending] == ["b24:m1:86497"]


def test_files_and_reply() -> None:
    pairs = message_add()
    p = "data[MESSAGES][0][message]"
    pairs += [
        (f"{p}[files][0][name]", "offer.pdf"),
        (f"{p}[files][0][type]", "file"),
        (f"{p}[files][0][link]", "https://p.bitrix24.com/disk/1"),
        (f"{p}[files][0][size]", "1234"),
        (f"{p}[files][1][name]", "no-link.png"),
        (f"{p}[params][REPLY_ID]", "555"),
    ]
    out = normalize(form(pairs))
    files = out.pending[0].envelope.operator_message.files
    assert len(files) == 1
    assert (files[0].name, files[0].link, files[0].size, files[0].mime_type) == (
        "offer.pdf",
        "https://p.bitrix24.com/disk/1",
        1234,
        "application/pdf",
    )
    assert out.reply_lookups == {0: "555"}


@pytest.mark.parametrize("single", [True, False])
def test_update_with_array_or_single_id(single: bool) -> None:
    ids = (
        [("data[MESSAGES][0][message][id]", "wamid.A")]
        if single
        else [
            ("data[MESSAGES][0][message][id][0]", "wamid.A"),
            ("data[MESSAGES][0][message][id][1]", "wamid.B"),
        ]
    )
    pairs = [
        ("event", "ONIMCONNECTORMESSAGEUPDATE"),
        ("data[CONNECTOR]", CONNECTOR),
        ("data[LINE]", "7"),
        ("data[MESSAGES][0][im][chat_id]", "1807"),
        ("data[MESSAGES][0][im][message_id]", "86497"),
        ("data[MESSAGES][0][message][text]", "fixed typo"),
        ("data[MESSAGES][0][chat][id]", "wa_100_4917"),
        *ids,
    ]
    out = normalize(form(pairs))
    (pending,) = out.pending
    edit = pending.envelope.operator_message_edit
    assert list(edit.external_message_ids) == (["wamid.A"] if single else ["wamid.A", "wamid.B"])
    assert edit.text_bbcode == "fixed typo"
    assert pending.envelope.event_id.startswith("b24-edit:m1:86497:") and len(pending.envelope.event_id) == 34
    again = normalize(form(pairs)).pending[0].envelope.event_id
    assert again == pending.envelope.event_id  # the same edit delivered twice has one id
    other = [(k, "other text" if k.endswith("[text]") else v) for k, v in pairs]
    assert normalize(form(other)).pending[0].envelope.event_id != pending.envelope.event_id


@pytest.mark.parametrize("single", [True, False])
def test_delete(single: bool) -> None:
    ids = (
        [("data[DATA][0][message][id]", "wamid.A")]
        if single
        else [("data[DATA][0][message][id][0]", "wamid.A")]
    )
    pairs = [
        ("event", "ONIMCONNECTORMESSAGEDELETE"),
        ("data[CONNECTOR]", CONNECTOR),
        ("data[LINE]", "7"),
        ("data[DATA][0][im][chat_id]", "1807"),
        ("data[DATA][0][im][message_id]", "86497"),
        ("data[DATA][0][chat][id]", "wa_100_4917"),
        *ids,
    ]
    (pending,) = normalize(form(pairs)).pending
    assert pending.envelope.event_id == "b24-del:m1:86497"
    assert list(pending.envelope.operator_message_delete.external_message_ids) == ["wamid.A"]


def test_line_and_connector_removal_and_uninstall() -> None:
    (line,) = normalize(form([("event", "ONIMCONNECTORLINEDELETE"), ("data", "7")])).pending
    assert line.envelope.line_removed.line_id == 7 and line.key == "line:m1:7"
    assert line.envelope.event_id == "b24-line-del:m1:7:1773759161"
    (status,) = normalize(
        form(
            [
                ("event", "ONIMCONNECTORSTATUSDELETE"),
                ("data[connector]", "ZAPTRIX_WHATSAPP"),
                ("data[line]", "7"),
            ]
        )
    ).pending
    assert (
        status.envelope.line_removed.connector_id == CONNECTOR and status.envelope.line_removed.line_id == 7
    )
    (gone,) = normalize(form([("event", "ONAPPUNINSTALL"), ("data[CLEAN]", "0")], tokens=False)).pending
    assert gone.envelope.line_removed.line_id == 0 and gone.key == "portal:m1"


def test_dialog_finish_marks_the_chat_read() -> None:
    pairs = [
        ("event", "ONIMCONNECTORDIALOGFINISH"),
        ("data[CONNECTOR]", CONNECTOR),
        ("data[LINE]", "7"),
        ("data[DATA][0][connector][chat_id]", "wa_100_4917"),
        ("data[DATA][0][session][closed]", "Y"),
        ("data[DATA][0][chat][id]", "1807"),
    ]
    (read,) = normalize(form(pairs)).pending
    assert read.envelope.operator_read.external_chat_id == "wa_100_4917"
    assert not read.envelope.operator_read.replying  # a finished dialog: marked read, no typing


def test_our_own_notice_is_not_relayed_back() -> None:
    pairs = message_add()
    pairs = [
        (k, f"[b]System:[/b] {notice_text('Not delivered to WhatsApp')}" if k.endswith("[text]") else v)
        for k, v in pairs
    ]
    out = normalize(form(pairs))
    assert out.pending == [] and "notice" in out.skipped[0]


def test_one_bad_message_does_not_sink_the_others() -> None:
    pairs = [p for p in message_add(n=2) if p[0] != "data[MESSAGES][1][chat][id]"]
    out = normalize(form(pairs), read_on_reply=False)
    assert [p.envelope.event_id for p in out.pending] == ["b24:m1:86497"]
    assert out.skipped == ["message 1: chat.id (our external chat id) is missing"]


@pytest.mark.parametrize(
    "pairs",
    [
        [("event", "ONIMCONNECTORMESSAGEADD")],
        [("event", "ONIMCONNECTORMESSAGEADD"), ("data[LINE]", "x"), ("data[MESSAGES][0][chat][id]", "c")],
        [("event", "ONIMCONNECTORMESSAGEADD"), ("data[MESSAGES][0][chat][id]", "c")],
        [("event", "ONIMCONNECTORMESSAGEADD"), ("data", "flat")],
        [("event", "ONIMCONNECTORLINEDELETE")],
        [("event", "ONIMCONNECTORLINEDELETE"), ("data", "-3")],
        [("event", "ONIMCONNECTORMESSAGEUPDATE"), ("data[MESSAGES][0][chat][id]", "c")],
    ],
)
def test_malformed_events(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(ev.EventError):
        normalize(form(pairs))


def test_unhandled_events_produce_nothing() -> None:
    assert normalize(form([("event", "ONCRMCONTACTADD"), ("data[FIELDS][ID]", "1")])).pending == []


def test_redaction_removes_secrets() -> None:
    f = form(message_add())
    f["AUTH_ID"] = "x"
    red = ev.redacted(f)
    assert red["auth"]["access_token"] == "[redacted]" and red["auth"]["application_token"] == "[redacted]"
    assert red["auth"]["member_id"] == "m1" and red["AUTH_ID"] == "[redacted]"
    assert "secret-access" not in repr(red)


def test_fuzzed_events_only_ever_raise_event_error() -> None:
    rng = random.Random(7)
    base = message_add(n=2)
    keys = [k for k, _ in base] + ["data", "data[MESSAGES]", "data[MESSAGES][0]", "data[LINE]", "ts"]
    values = ["", "x", "0", "-1", "99999999999999999999999", "[b]", "wa_1", "⚠️ Zaptrix: x", "1.5"]
    events = [*sorted(ev.HANDLED), "", "ONAPPINSTALL", "X"]
    for _ in range(2000):
        pairs = [(k, v) for k, v in base if rng.random() < 0.8]
        for _ in range(rng.randint(0, 4)):
            pairs.append((rng.choice(keys) + rng.choice(["", "[0]", "[id]", "[]"]), rng.choice(values)))
        pairs.append(("event", rng.choice(events)))
        try:
            f = form(pairs)
        except FormError:
            continue
        try:
            out = normalize(f)
        except ev.EventError:
            continue
        for p in out.pending:
            assert p.envelope.event_id and p.envelope.WhichOneof("kind")
