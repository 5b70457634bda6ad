"""The /template command and its check against a template (pure): syntax, positional and named values,
Meta's limits, media headers; hostile text only ever raises CommandError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zaptrix.template_command import (
    CommandError,
    build,
    check_header_file,
    choose,
    command_text,
    is_command,
    parse,
    shape,
)
from zaptrix.v1 import mapper_pb2


def tpl(components: list[dict[str, Any]], fmt: str = "POSITIONAL", **kw: Any) -> mapper_pb2.MessageTemplate:
    return mapper_pb2.MessageTemplate(
        name=kw.get("name", "order_update"),
        language=kw.get("language", "en_US"),
        status=kw.get("status", "APPROVED"),
        category=kw.get("category", "UTILITY"),
        components_json=json.dumps(components),
        parameter_format=fmt,
    )


ORDER = tpl([{"type": "BODY", "text": "Order {{1}} ships {{2}}, {{ 1 }} again"}])
BUTTON = tpl(
    [
        {"type": "BODY", "text": "Track {{1}}"},
        {
            "type": "BUTTONS",
            "buttons": [{"type": "QUICK_REPLY", "text": "ok"}, {"type": "URL", "url": "https://x/{{1}}"}],
        },
    ]
)


def test_the_syntax() -> None:
    assert is_command("/template x") and is_command("  /TEMPLATE x") and not is_command("/templates x")
    assert not is_command("please /template x")
    # Bitrix24's operator signature (NEED_SIGNATURE) before the command
    signed = "[b]Sandbox Operator:[/b][br] /template order_update@pt_BR 1 | 2"
    assert is_command(signed) and parse(signed).values == ["1", "2"]
    assert not is_command("[b]Ops:[/b][br] see /template x")
    cmd = parse("/template order_update@pt_BR 12345 | Friday ")
    assert (cmd.name, cmd.language, cmd.values) == ("order_update", "pt_BR", ["12345", "Friday"])
    assert parse("/template hello").values == []
    for bad, said in (
        ("/template", "Write the template"),
        ("/template Bad", "not a template name"),
        ("/template a@x-y", "language"),
    ):
        with pytest.raises(CommandError, match=said):
            parse(bad)
    assert command_text("a", "en_US", ["1", "k=v"]) == "/template a@en_US 1 | k=v"
    with pytest.raises(CommandError, match="cannot contain"):
        command_text("a", "", ["x|y"])


def test_positional_values_fill_the_body_in_order() -> None:
    assert shape(ORDER).body_vars == ["1", "2"]
    out = build(ORDER, parse("/template order_update 7 | Friday"))
    assert out == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "7"}, {"type": "text", "text": "Friday"}],
            }
        ],
    }
    with pytest.raises(CommandError, match="expects 2 value"):
        build(ORDER, parse("/template order_update 7"))
    with pytest.raises(CommandError, match="has no variable header"):
        build(ORDER, parse("/template order_update 7 | 8 | header=x"))
    # a value that merely looks like key=value stays a value in a positional template
    assert (
        build(ORDER, parse("/template order_update a=b | c"))["components"][0]["parameters"][0]["text"]
        == "a=b"
    )


def test_named_values_and_url_buttons() -> None:
    named = tpl([{"type": "BODY", "text": "Hi {{first_name}}, {{code}}"}], "NAMED")
    out = build(named, parse("/template order_update code=X1 | first_name=Ana"))
    assert out["components"][0]["parameters"] == [
        {"type": "text", "text": "Ana", "parameter_name": "first_name"},
        {"type": "text", "text": "X1", "parameter_name": "code"},
    ]
    with pytest.raises(CommandError, match="Missing values for code"):
        build(named, parse("/template order_update first_name=Ana"))
    with pytest.raises(CommandError, match="name=value"):
        build(named, parse("/template order_update Ana | X1"))
    out = build(BUTTON, parse("/template order_update 9 | button1=abc"))
    assert out["components"][1] == {
        "type": "button",
        "sub_type": "url",
        "index": "1",
        "parameters": [{"type": "text", "text": "abc"}],
    }
    with pytest.raises(CommandError, match="button 1"):
        build(BUTTON, parse("/template order_update 9"))


def test_meta_limits_and_headers() -> None:
    header = tpl(
        [{"type": "HEADER", "format": "TEXT", "text": "Hi {{1}}"}, {"type": "BODY", "text": "{{1}}"}]
    )
    with pytest.raises(CommandError, match="at most 60"):
        build(header, parse("/template order_update 1 | header=" + "x" * 61))
    for bad in ("a\tb", "a     b"):
        with pytest.raises(CommandError, match="new line"):
            build(ORDER, parse(f"/template order_update 1 | {bad}"))
    with pytest.raises(CommandError, match="at most 1024"):
        build(ORDER, parse("/template order_update 1 | " + "y" * 1025))
    image = tpl([{"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "x"}])
    with pytest.raises(CommandError, match="attach the image"):
        build(image, parse("/template order_update"))
    out = build(image, parse("/template order_update"), {"id": "55"})
    assert out["components"][0] == {
        "type": "header",
        "parameters": [{"type": "image", "image": {"id": "55"}}],
    }
    check_header_file("image", "image/png", "a.png")
    with pytest.raises(CommandError, match="accepts application/pdf"):
        check_header_file("document", "image/png", "a.png")
    with pytest.raises(CommandError, match="Authentication"):
        build(
            tpl([{"type": "BODY", "text": "{{1}}"}], category="AUTHENTICATION"),
            parse("/template order_update 1"),
        )


def test_choose_a_language_and_refuse_what_is_not_approved() -> None:
    en, pt = tpl([], language="en_US"), tpl([], language="pt_BR")
    assert choose([en, pt], parse("/template order_update"), "pt_BR").language == "pt_BR"
    assert choose([pt, en], parse("/template order_update"), "").language == "en_US"
    with pytest.raises(CommandError, match="several languages"):
        choose([pt, tpl([], language="de")], parse("/template order_update"), "")
    with pytest.raises(CommandError, match="is paused"):
        choose([tpl([], status="PAUSED")], parse("/template order_update"), "")
    with pytest.raises(CommandError, match="no template"):
        choose([], parse("/template order_update"), "")


@given(st.text(max_size=300), st.text(max_size=300))
def test_hostile_text_only_raises_command_errors(text: str, components: str) -> None:
    template = mapper_pb2.MessageTemplate(
        name="n", language="en_US", status="APPROVED", components_json=components
    )
    try:
        build(template, parse("/template " + text))
    except CommandError:
        pass


def test_odd_components_are_read_leniently() -> None:
    odd = tpl([{"type": "BUTTONS", "buttons": 7}, {"type": "BODY", "text": ["x"]}, "nope"])  # type: ignore[list-item]
    assert shape(odd).body_vars == [] and shape(odd).url_buttons == {}
