"""Bitrix24 BB-code → WhatsApp formatting, and splitting of long texts. Pure functions.

WhatsApp knows ``*bold*``, ``_italic_``, ``~strikethrough~``, ```` ```monospace``` ````, `` `inline code` ``
and ``> `` quotes. Markers only work around non-blank text on one line, so every marked span is applied
line by line with its blanks moved outside. Tags WhatsApp cannot show keep their text (``[u]``,
``[color]``, ``[size]``, mentions, ...); links become ``label (url)``; Bitrix24's own quote blocks
(lines of dashes) and ``[quote]`` become ``> `` lines. Unknown or unbalanced tags stay as literal text,
as Bitrix24 itself shows them.

Markers typed literally by the operator (``*not bold*``) are neutralised with zero-width spaces on both
sides of each marker, so WhatsApp cannot read them as an opening or closing marker whichever way its
client classifies U+200B; identifiers such as ``snake_case_name`` or ``2*3*4`` cannot format and are
left untouched. (WhatsApp has no escape character; this is best effort, see docs/meta-ingress.md.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ZWSP = "\u200b"
WA_MARKERS = "*_~`"
MAX_TEXT = 4096  # whatsapp.md A3: text.body is at most 4096 characters

_TAG = re.compile(r"\[(/?)(\*|[A-Za-z]+)(?:=([^\]\n]*))?\]")
_DASH_QUOTE = re.compile(r"(?m)^-{20,}[ \t]*\n(.*?)\n-{20,}[ \t]*$", re.DOTALL)
_ENTITIES = {
    "&amp;": "&",
    "&lt;": "<",
    "&gt;": ">",
    "&quot;": '"',
    "&#39;": "'",
    "&#039;": "'",
    "&nbsp;": " ",
}
_ENTITY = re.compile("|".join(re.escape(e) for e in _ENTITIES))
_SAFE_HREF = re.compile(r"^(https?://|mailto:|tel:)", re.IGNORECASE)

INLINE_MARKS = {"b": "*", "i": "_", "s": "~", "del": "~"}
TRANSPARENT = frozenset(
    {
        "u",
        "color",
        "size",
        "font",
        "left",
        "center",
        "right",
        "justify",
        "p",
        "chat",
        "dialog",
        "context",
        "send",
        "put",
        "spoiler",
        "user",
        "tr",
        "td",
        "th",
    }
)
BLOCK = frozenset({"code", "quote", "list", "table", "url", "img", "call"})
VOID = frozenset({"br", "hr", "*", "icon", "disk", "attach", "like"})
KNOWN = frozenset(INLINE_MARKS) | TRANSPARENT | BLOCK | VOID


@dataclass
class _Element:
    name: str
    arg: str | None
    raw: str  # the opening tag as written, for unbalanced tags
    children: list[_Element | str] = field(default_factory=list)
    closed: bool = False


def _unescape(text: str) -> str:
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(0)], text)


def _parse(text: str) -> _Element:
    root = _Element("", None, "", closed=True)
    stack = [root]
    pos = 0
    while True:
        match = _TAG.search(text, pos)
        if match is None:
            break
        if match.start() > pos:
            stack[-1].children.append(text[pos : match.start()])
        closing, name, arg = match.group(1) == "/", match.group(2).lower(), match.group(3)
        pos = match.end()
        if name not in KNOWN or (closing and name in VOID and name != "*"):
            stack[-1].children.append(match.group(0))
            continue
        if not closing:
            if name in VOID:
                stack[-1].children.append(_Element(name, arg, match.group(0), closed=True))
                continue
            element = _Element(name, arg, match.group(0))
            stack[-1].children.append(element)
            if name == "code":  # verbatim up to [/code]
                end = re.compile(r"\[/code\]", re.IGNORECASE).search(text, pos)
                if end is not None:
                    element.children.append(text[pos : end.start()])
                    element.closed = True
                    pos = end.end()
                continue
            stack.append(element)
            continue
        depth = next((i for i in range(len(stack) - 1, 0, -1) if stack[i].name == name), None)
        if depth is None:
            stack[-1].children.append(match.group(0))
            continue
        del stack[depth + 1 :]  # tags opened inside and never closed stay literal (closed=False)
        stack.pop().closed = True
    if pos < len(text):
        stack[-1].children.append(text[pos:])
    return root


def _boundary(ch: str) -> bool:
    return not ch.isalnum()


def escape_markers(line: str) -> str:
    """Neutralise literal marker pairs that WhatsApp would turn into formatting."""
    if not any(m in line for m in WA_MARKERS):
        return line
    line = line.replace("```", f"`{ZWSP}`{ZWSP}`")  # a literal code fence never opens a block
    escape: set[int] = set()
    n = len(line)
    for marker in WA_MARKERS:
        i = 0
        while i < n:
            if line[i] != marker or ZWSP in (line[i - 1 : i], line[i + 1 : i + 2]):
                i += 1
                continue
            opener = (i == 0 or _boundary(line[i - 1])) and i + 1 < n and not line[i + 1].isspace()
            if not opener or (line[i + 1] == marker and marker != "`"):
                i += 1
                continue
            close = None
            for j in range(i + 2, n):
                if line[j] == marker and not line[j - 1].isspace() and (j == n - 1 or _boundary(line[j + 1])):
                    close = j
                    break
            if close is None:
                i += 1
                continue
            escape.update((i, close))
            i = close + 1
    if not escape:
        return line
    return "".join(f"{ZWSP}{ch}{ZWSP}" if i in escape else ch for i, ch in enumerate(line))


def _text(node: str) -> str:
    return "\n".join(escape_markers(line) for line in _unescape(node).split("\n"))


def _wrap(inner: str, marker: str) -> str:
    out = []
    for line in inner.split("\n"):
        core = line.strip()
        if not core:
            out.append(line)
            continue
        if len(core) > 1 and core.startswith(marker) and core.endswith(marker):
            out.append(line)  # already marked (nested duplicate tags)
            continue
        lead = line[: len(line) - len(line.lstrip())]
        trail = line[len(line.rstrip()) :]
        out.append(f"{lead}{marker}{core}{marker}{trail}")
    return "\n".join(out)


def _plain(children: list[_Element | str]) -> str:
    """Children as unformatted text (link labels, hrefs)."""
    out = []
    for child in children:
        out.append(_unescape(child) if isinstance(child, str) else _plain(child.children))
    return "".join(out)


def _arg(element: _Element) -> str:
    return (element.arg or "").strip().strip("\"'").strip()


def _render_list(element: _Element) -> str:
    ordered = _arg(element)
    counter = 0
    out: list[str] = []
    for child in element.children:
        if isinstance(child, _Element) and child.name == "*":
            counter += 1
            if ordered.isdigit():
                prefix = f"{int(ordered) + counter - 1}. "
            elif len(ordered) == 1 and ordered.isalpha():
                prefix = f"{chr(ord(ordered) + counter - 1)}. "
            else:
                prefix = "• "
            out.append("\n" + prefix)
        else:
            rendered = _render_children([child])
            out.append(rendered.strip("\n") if counter else rendered)
    return "\n" + "".join(out).strip("\n") + "\n"


def _render_table(element: _Element) -> str:
    rows = []
    for row in element.children:
        if isinstance(row, _Element) and row.name == "tr":
            cells = [
                _render_children(c.children).strip()
                for c in row.children
                if isinstance(c, _Element) and c.name in ("td", "th")
            ]
            rows.append(" | ".join(cells))
        elif isinstance(row, str) and row.strip():
            rows.append(_text(row).strip())
    return "\n" + "\n".join(rows) + "\n"


def _render(element: _Element) -> str:
    name = element.name
    if not element.closed:
        return _text(element.raw) + _render_children(element.children)
    if name in INLINE_MARKS:
        return _wrap(_render_children(element.children), INLINE_MARKS[name])
    if name in TRANSPARENT:
        return _render_children(element.children)
    if name == "br":
        return "\n"
    if name == "hr":
        return "\n──────────\n"
    if name in VOID:  # icons, disk files, attachments: the files travel separately
        return ""
    if name == "url":
        label = _plain(element.children).strip()
        href = _arg(element) or label
        if not _SAFE_HREF.match(href):
            return _render_children(element.children) if element.arg else label
        scheme, _, rest = href.partition(":")
        if not label or label == href or (scheme.lower() in ("mailto", "tel") and label == rest):
            return label or href
        return f"{label} ({href})"
    if name == "img":
        return _plain(element.children).strip()
    if name == "call":
        label, number = _plain(element.children).strip(), _arg(element)
        return f"{label} ({number})" if number and label and label != number else (label or number)
    if name == "code":
        body = _unescape("".join(c for c in element.children if isinstance(c, str))).strip("\n")
        return f"```{body}```" if body else ""
    if name == "quote":
        inner = _render_children(element.children).strip("\n")
        return "\n" + "\n".join(f"> {line}".rstrip() for line in inner.split("\n")) + "\n"
    if name == "list":
        return _render_list(element)
    if name == "table":
        return _render_table(element)
    return _render_children(element.children)  # pragma: no cover - every known tag is handled above


def _render_children(children: list[_Element | str]) -> str:
    out: list[str] = []
    for child in children:
        piece = _text(child) if isinstance(child, str) else _render(child)
        if out and out[-1].endswith("\n") and isinstance(child, str):
            piece = piece.lstrip(" \t")  # "[br] text": Bitrix24 shows no blank at the start of a line
        out.append(piece)
    return "".join(out)


def to_whatsapp(bbcode: str) -> str:
    """Bitrix24 message text (BB-code) as WhatsApp text."""
    if not bbcode:
        return ""
    text = bbcode.replace("\r\n", "\n").replace("\r", "\n")
    text = _DASH_QUOTE.sub(lambda m: f"[quote]{m.group(1)}[/quote]", text)
    out = _render_children(_parse(text).children)
    out = re.sub(r"[ \t]+\n", "\n", out)
    out = re.sub(r"\n{3,}", "\n\n", out)
    return out.strip()


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Split at paragraph, then line, then word boundaries into chunks of at most ``limit`` characters."""
    if len(text) <= limit:
        return [text] if text else []
    chunks: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = -1
        for sep in ("\n\n", "\n", " "):
            cut = window.rfind(sep, limit // 2)
            if cut > 0:
                break
        if cut <= 0:
            cut = limit
            if "\ud800" <= rest[cut - 1] <= "\udbff":  # never split a surrogate pair
                cut -= 1
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        chunks.append(rest)
    return [c for c in chunks if c]
