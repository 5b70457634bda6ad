"""Bitrix24 BB-code → WhatsApp formatting, table-driven."""

from __future__ import annotations

import pytest
from meta_ingress.dispatcher.bbcode import ZWSP, escape_markers, split_text, to_whatsapp

Z = ZWSP

CASES = [
    # signature prefix of Open Lines (NEED_SIGNATURE)
    ("[b]Operator:[/b][br] Hello", "*Operator:*\nHello"),
    ("[B]John Smith:[/B][BR] Hi", "*John Smith:*\nHi"),
    ("[b]Klaus Weber:[/b] [br]Guten Tag!", "*Klaus Weber:*\nGuten Tag!"),  # bitrix24.md sample event
    # inline styles
    ("[b]bold[/b]", "*bold*"),
    ("[i]italic[/i]", "_italic_"),
    ("[s]gone[/s] [del]gone too[/del]", "~gone~ ~gone too~"),
    ("[u]underlined[/u]", "underlined"),
    ("[b][i]both[/i][/b]", "*_both_*"),
    ("[b][b]twice[/b][/b]", "*twice*"),
    ("[b] padded [/b]!", "*padded* !"),
    ("[b][/b]empty", "empty"),
    ("[i]one[br]two[/i]", "_one_\n_two_"),
    ("[b]line1\n\nline3[/b]", "*line1*\n\n*line3*"),
    # links
    ("[url=https://x.io]site[/url]", "site (https://x.io)"),
    ("[url]https://x.io/a_b_c[/url]", "https://x.io/a_b_c"),
    ("[url=https://x.io]https://x.io[/url]", "https://x.io"),
    ("[url='https://x.io']quoted[/url]", "quoted (https://x.io)"),
    ("[url=javascript:alert(1)]click[/url]", "click"),
    ("[url=mailto:a@b.c]a@b.c[/url]", "a@b.c"),
    ("[url=tel:+4930123]call us[/url]", "call us (tel:+4930123)"),
    ("[img]https://x.io/p.png[/img]", "https://x.io/p.png"),
    # mentions and Bitrix-specific tags
    ("[user=12]John Smith[/user], see this", "John Smith, see this"),
    ("[USER=12][/USER]hi", "hi"),
    ("[chat=5]Sales[/chat]", "Sales"),
    ("[dialog=chat5]open[/dialog]", "open"),
    ("[send=/help]Help[/send] [put=/x]Put[/put]", "Help Put"),
    ("[call=+4930123]Call me[/call]", "Call me (+4930123)"),
    ("[call=+4930123]+4930123[/call]", "+4930123"),
    ("[icon=https://x/y.png title=smile size=20] ok", "ok"),
    ("[disk=42] file", "file"),
    ("[color=#ff0000]red[/color] [size=20]big[/size] [font=Arial]f[/font]", "red big f"),
    ("[center]c[/center][left]l[/left][right]r[/right][justify]j[/justify]", "clrj"),
    ("[spoiler]secret[/spoiler]", "secret"),
    ("a[hr]b", "a\n──────────\nb"),
    # code: verbatim, no conversion inside
    ("[code]x = [b]1[/b]\n  y *= 2[/code]", "```x = [b]1[/b]\n  y *= 2```"),
    ("[code][/code]", ""),
    # quotes
    ("[quote]first[br]second[/quote]my answer", "> first\n> second\nmy answer"),
    ("[quote][b]who[/b]: text[/quote]", "> *who*: text"),
    (
        "------------------------------------------------------\nJohn [12.03.2024 10:00]\nhello\n"
        "------------------------------------------------------\nreply",
        "> John [12.03.2024 10:00]\n> hello\n\nreply",
    ),
    # lists and tables
    ("[list][*]one[*]two[/list]after", "• one\n• two\nafter"),
    ("[list=1][*]a[*]b[*]c[/list]", "1. a\n2. b\n3. c"),
    ("[list=a][*]x[*]y[/list]", "a. x\nb. y"),
    ("[table][tr][td]a[/td][td]b[/td][/tr][tr][td]c[/td][td]d[/td][/tr][/table]", "a | b\nc | d"),
    # unknown and unbalanced tags stay literal
    ("[b]unclosed", "[b]unclosed"),
    ("stray[/b]", "stray[/b]"),
    ("[note]keep[/note]", "[note]keep[/note]"),
    ("[b]outer [i]inner[/b]", "*outer [i]inner*"),
    ("array[0] and [1]", "array[0] and [1]"),
    # entities, whitespace
    ("a &amp; b &lt;c&gt; &quot;q&quot; &#39;s", 'a & b <c> "q" \'s'),
    ("  spaced  \r\n\r\n\r\n\r\nend  ", "spaced\n\nend"),
    ("", ""),
    # literal markers are neutralised only where WhatsApp would format them
    ("plain *bold* text", f"plain {Z}*{Z}bold{Z}*{Z} text"),
    ("snake_case_name 2*3*4 a~b~c", "snake_case_name 2*3*4 a~b~c"),
    ("_x_", f"{Z}_{Z}x{Z}_{Z}"),
    ("~no~ strike", f"{Z}~{Z}no{Z}~{Z} strike"),
    ("run `ls`", f"run {Z}`{Z}ls{Z}`{Z}"),
    ("```fence```", f"`{Z}`{Z}`fence`{Z}`{Z}`"),
    ("5 * 3 = 15", "5 * 3 = 15"),
    ("[b]*stars*[/b]", f"*{Z}*{Z}stars{Z}*{Z}*"),
    ("emoji 👍🏽 ok", "emoji 👍🏽 ok"),
]


@pytest.mark.parametrize(("bbcode", "expected"), CASES)
def test_to_whatsapp(bbcode: str, expected: str) -> None:
    assert to_whatsapp(bbcode) == expected


def test_escape_is_idempotent_on_plain_text() -> None:
    assert escape_markers("nothing to see") == "nothing to see"


def test_split_text_prefers_paragraphs_lines_and_words() -> None:
    paragraphs = ("a" * 3000 + "\n\n") * 3
    chunks = split_text(paragraphs.strip(), 4096)
    assert [len(c) for c in chunks] == [3000, 3000, 3000]
    words = " ".join(["word"] * 3000)
    chunks = split_text(words, 4096)
    assert all(len(c) <= 4096 for c in chunks)
    assert " ".join(chunks) == words
    hard = "x" * 10000
    assert [len(c) for c in split_text(hard, 4096)] == [4096, 4096, 1808]
    assert split_text("", 4096) == [] and split_text("short", 4096) == ["short"]
    emoji = "😀" * 5000  # one code point each: never split inside a character
    assert "".join(split_text(emoji, 4096)) == emoji
