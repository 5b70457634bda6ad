"""PHP-style form parsing: Bitrix24's event bodies and our batch sub-commands."""

from __future__ import annotations

import random
import string
from urllib.parse import quote, urlencode

import pytest
from bitrix_ingress.formparse import (
    MAX_DEPTH,
    MAX_FIELDS,
    FormError,
    as_list,
    build_query,
    get_ci,
    get_str,
    parse_form,
    split_key,
)


def test_nested_keys_as_bitrix24_sends_them() -> None:
    body = urlencode(
        [
            ("event", "ONIMCONNECTORMESSAGEADD"),
            ("data[MESSAGES][0][im][chat_id]", "1807"),
            ("data[MESSAGES][0][message][text]", "[b]Klaus Weber:[/b] [br]Guten Tag! äöü 👋"),
            ("data[MESSAGES][1][im][chat_id]", "1808"),
            ("auth[member_id]", "m1"),
        ]
    )
    form = parse_form(body.encode())
    assert form["data"]["MESSAGES"]["0"]["im"]["chat_id"] == "1807"
    assert form["data"]["MESSAGES"]["0"]["message"]["text"] == "[b]Klaus Weber:[/b] [br]Guten Tag! äöü 👋"
    assert [m["im"]["chat_id"] for m in as_list(form["data"]["MESSAGES"])] == ["1807", "1808"]
    assert get_str(form, "auth", "member_id") == "m1"


def test_split_key_follows_php() -> None:
    assert split_key("a[b][0]") == ["a", "b", "0"]
    assert split_key("a[]") == ["a", ""]
    assert split_key("a[b]tail") == ["a", "b"]
    assert split_key("a[b") == ["a[b"]
    assert split_key("[x]") == ["[x]"]
    assert split_key("plain") == ["plain"]


def test_auto_index_and_overwrites() -> None:
    form = parse_form(b"v[]=a&v[]=b&x=1&x[y]=2&z[k]=1&z=plain")
    assert as_list(form["v"]) == ["a", "b"]
    assert form["x"] == {"y": "2"}  # a scalar is replaced by an array, as in PHP
    assert form["z"] == "plain"  # and a later scalar wins


def test_as_list_reads_every_shape() -> None:
    assert as_list({"1": "b", "0": "a", "10": "c"}) == ["a", "b", "c"]
    assert as_list("single") == ["single"]
    assert as_list(["x"]) == ["x"]
    assert as_list({"id": "7"}) == [{"id": "7"}]
    assert as_list(None) == [] and as_list("") == [] and as_list({}) == []


def test_case_insensitive_lookup() -> None:
    assert get_ci({"messages": 1}, "MESSAGES") == 1
    assert get_ci({"MESSAGES": 2, "messages": 1}, "MESSAGES") == 2
    assert get_ci("not a map", "x") is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"a=%ff%fe", "UTF-8"),
        (b"\xff\xfe=1", "UTF-8"),
        ("&".join(f"k{i}=1" for i in range(MAX_FIELDS + 1)).encode(), "fields"),
        (("a" + "[x]" * (MAX_DEPTH + 1) + "=1").encode(), "deeper"),
        (("k" * 600 + "=1").encode(), "too long"),
        (("&".join(f"v[]={i}" for i in range(10_002))).encode(), "fields|array"),
    ],
)
def test_refuses_what_it_cannot_read(body: bytes, reason: str) -> None:
    with pytest.raises(FormError, match=reason):
        parse_form(body)


def test_build_query_round_trips_nested_payloads() -> None:
    params = {
        "CONNECTOR": "zaptrix_whatsapp",
        "LINE": 3,
        "MESSAGES": [
            {"user": {"id": "4917", "name": "Anna"}, "message": {"id": "wamid.A&B=C", "text": "a+b %20 ü"}},
            {
                "user": {"id": "4918"},
                "message": {"id": "w2", "files": [{"url": "https://x/y?a=1&b=2", "name": "f.jpg"}]},
            },
        ],
        "FLAG": True,
        "SKIP": None,
    }
    back = parse_form(build_query(params))
    assert back["LINE"] == "3" and back["FLAG"] == "Y" and "SKIP" not in back
    items = as_list(back["MESSAGES"])
    assert items[0]["message"] == {"id": "wamid.A&B=C", "text": "a+b %20 ü"}
    assert as_list(items[1]["message"]["files"])[0]["url"] == "https://x/y?a=1&b=2"


def test_fuzz_never_raises_anything_but_form_error() -> None:
    rng = random.Random(20240601)
    alphabet = string.printable + "[]][[]]%&=é👋\x00"
    for _ in range(3000):
        pieces = []
        for _ in range(rng.randint(0, 12)):
            key = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
            val = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
            pieces.append(f"{quote(key, safe='[]') if rng.random() < 0.7 else key}={val}")
        body = "&".join(pieces)
        raw = body.encode() if rng.random() < 0.9 else bytes(rng.randint(0, 255) for _ in range(30))
        try:
            form = parse_form(raw)
        except FormError:
            continue
        assert isinstance(form, dict)
