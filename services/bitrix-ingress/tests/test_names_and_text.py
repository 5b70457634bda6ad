"""Names within Bitrix24's user-name rule, BB-code escaping, WhatsApp formatting, file names, notices."""

from __future__ import annotations

import random
import re

import pytest
from bitrix_ingress.dispatcher.packing import failure_text
from bitrix_ingress.text import (
    FALLBACK_NAME,
    display_name,
    escape_bbcode,
    file_name,
    is_notice,
    notice_text,
    split_name,
    whatsapp_to_bbcode,
)
from zaptrix.v1 import events_pb2

# The rule as the Bitrix24 stand-in enforces it: letters, spaces, hyphens, apostrophes; at most 25.
BITRIX_NAME = re.compile(r"^[^\W\d_]+(?:[ \-'][^\W\d_]+)*[ \-']?$")


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("Anna", ("Anna", "")),
        ("Anna Schmidt", ("Anna", "Schmidt")),
        ("🌸 Maria-José O\u2019Neil 2nd.", ("Maria-José", "O'Neil")),
        ("Jean.Pierre_de_la_Fontaine-Superlongname", ("Jean", "Pierre de la")),
        ("李小龙", ("李小龙", "")),
        ("Anna2 K", ("Anna", "K")),
        ("🙂🙂", FALLBACK_NAME),
        ("", FALLBACK_NAME),
        ("--- '' ---", FALLBACK_NAME),
        ("A" * 40, ("A" * 25, "")),
    ],
)
def test_split_name(profile: str, expected: tuple[str, str]) -> None:
    assert split_name(profile) == expected


def test_every_name_passes_the_bitrix_rule() -> None:
    rng = random.Random(11)
    pool = "abcXYZ äöüßéñ ЖжЯ 李龙 नमस्ते -'\u2019._,0123456789🙂👍🏽\u200d\u0301\t\n!@#$%^&*()"
    for _ in range(5000):
        raw = "".join(rng.choice(pool) for _ in range(rng.randint(0, 60)))
        name, last = split_name(raw)
        for part in (name, last):
            assert len(part) <= 25
            assert part == "" or BITRIX_NAME.match(part), (raw, part)
        assert name


def test_display_name_keeps_what_the_customer_wrote() -> None:
    assert display_name("🌸 Maria\u200b\n", "4917") == "🌸 Maria"
    assert display_name("", "4917") == "+4917"


def test_bbcode_is_escaped_and_whatsapp_formatting_converted() -> None:
    assert (
        escape_bbcode("[b]not bold[/b] [URL=x]y[/URL] [1] [x]")
        == "[\u200bb]not bold[\u200b/b] [\u200bURL=x]y[\u200b/URL] [1] [x]"
    )
    out = whatsapp_to_bbcode("*bold* _it_ ~gone~ ```mono``` snake_case_name 2*3*4 [b]x[/b]")
    assert (
        out
        == "[b]bold[/b] [i]it[/i] [s]gone[/s] [code]mono[/code] snake_case_name 2*3*4 [\u200bb]x[\u200b/b]"
    )
    assert whatsapp_to_bbcode("*a* b", convert_formatting=False) == "*a* b"


def test_file_names_carry_the_extension_bitrix_uses() -> None:
    assert file_name("", "image/jpeg", "image", "wamid.HBg123") == "image-wamidHBg123.jpg"
    assert file_name("report", "application/pdf", "document", "x") == "report.pdf"
    assert file_name("voice.ogg", "audio/ogg; codecs=opus", "voice", "x") == "voice.ogg"
    assert file_name("../../etc/passwd", "", "document", "x") == "etc_passwd"


def test_notices_are_recognised() -> None:
    text = notice_text("Not delivered")
    assert is_notice(text) and is_notice(f"[b]Bot:[/b][br] {text}") and not is_notice("Zaptrix is great")


def test_failure_texts() -> None:
    window = events_pb2.GraphError(code=131047, title="Re-engagement message")
    assert "24 hours" in failure_text(window) and "template" in failure_text(window)
    assert "/template NAME" in failure_text(window) and "templates button" in failure_text(window)
    assert "was sent instead" in failure_text(window, template_sent=True)
    other = events_pb2.GraphError(code=131026, title="Message undeliverable", details="not on WhatsApp")
    assert (
        failure_text(other)
        == "Not delivered to WhatsApp: Message undeliverable: not on WhatsApp (error 131026)."
    )
