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

MAX_DEPTH = 16  # open tags nested deeper stay literal text (real messages nest a handful)
_NAME = re.compile(r"(/?)(\*|[A-Za-z]+)")  # a tag's name after its "["; _Tags finds the rest
_CODE_END = re.compile(r"\[/code\]", re.IGNORECASE)
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


class _Tags:
    """The tags of one text, left to right, in time linear in the text overall.

    Equivalent to ``\\[(/?)(\\*|[A-Za-z]+)(?:=([^\\]\\n]*))?\\]`` searched from each position, which the
    regex engine does in O(n²) on ``[a=[a=[a=…`` (every ``[`` rescans the rest of the line). Here the next
    ``]`` and the next newline are found once and reused while the scan is before them.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._close = -1  # cached position of the next "]" (len(text): none left)
        self._newline = -1
        self._code_end: re.Match[str] | None = None
        self._code_done = False  # no [/code] after the last search: none later either

    def _next(self, ch: str, cached: int, pos: int) -> int:
        if cached >= pos:
            return cached
        found = self.text.find(ch, pos)
        return len(self.text) if found < 0 else found

    def find(self, pos: int) -> tuple[int, int, str, str, str | None] | None:
        """(start, end, slash, name, arg) of the first tag at or after ``pos``, else None."""
        text = self.text
        while True:
            start = text.find("[", pos)
            if start < 0:
                return None
            pos = start + 1
            name = _NAME.match(text, pos)
            if name is None:
                continue
            after = name.end()
            if after < len(text) and text[after] == "]":
                return start, after + 1, name.group(1), name.group(2), None
            if after < len(text) and text[after] == "=":
                self._close = self._next("]", self._close, after + 1)
                self._newline = self._next("\n", self._newline, after + 1)
                if self._close < min(self._newline, len(text)):
                    return start, self._close + 1, name.group(1), name.group(2), text[after + 1 : self._close]

    def code_end(self, pos: int) -> re.Match[str] | None:
        """The next ``[/code]`` at or after ``pos`` (searched again only once the scan has passed it)."""
        if self._code_done or (self._code_end is not None and self._code_end.start() >= pos):
            return self._code_end
        self._code_end = _CODE_END.search(self.text, pos)
        self._code_done = self._code_end is None
        return self._code_end


def _parse(text: str) -> _Element:
    """The element tree, with an explicit stack: nesting deeper than MAX_DEPTH stays literal text, so the
    (recursive) rendering never goes deeper than that whatever the input."""
    root = _Element("", None, "", closed=True)
    stack = [root]
    open_at: dict[str, list[int]] = {}  # tag name -> stack indices of the open elements of that name
    tags = _Tags(text)
    pos = 0
    while True:
        found = tags.find(pos)
        if found is None:
            break
        start, end, slash, raw_name, arg = found
        raw = text[start:end]
        if start > pos:
            stack[-1].children.append(text[pos:start])
        closing, name = slash == "/", raw_name.lower()
        pos = end
        if name not in KNOWN or (closing and name in VOID and name != "*"):
            stack[-1].children.append(raw)
            continue
        if not closing:
            if name in VOID:
                stack[-1].children.append(_Element(name, arg, raw, closed=True))
                continue
            if len(stack) > MAX_DEPTH:
                stack[-1].children.append(raw)  # too deep: literal, like an unknown tag
                continue
            element = _Element(name, arg, raw)
            stack[-1].children.append(element)
            if name == "code":  # verbatim up to [/code]
                code_end = tags.code_end(pos)
                if code_end is not None:
                    element.children.append(text[pos : code_end.start()])
                    element.closed = True
                    pos = code_end.end()
                continue
            open_at.setdefault(name, []).append(len(stack))
            stack.append(element)
            continue
        indices = open_at.get(name)
        if not indices:
            stack[-1].children.append(raw)
            continue
        depth = indices[-1]
        while len(stack) > depth + 1:  # tags opened inside and never closed stay literal (closed=False)
            open_at[stack.pop().name].pop()
        indices.pop()
        stack.pop().closed = True
    if pos < len(text):
        stack[-1].children.append(text[pos:])
    return root


def _boundary(ch: str) -> bool:
    return not ch.isalnum()


def _positions(line: str, marker: str) -> list[int]:
    out = []
    i = line.find(marker)
    while i >= 0:
        out.append(i)
        i = line.find(marker, i + 1)
    return out


def escape_markers(line: str) -> str:
    """Neutralise literal marker pairs that WhatsApp would turn into formatting.

    An opener pairs with the first valid closer at least two characters after it; whether a marker can
    close depends only on its own neighbours, so the closers are listed once and walked with one pointer
    (linear; a scan to the end of the line per opener made ``*a *a *a …`` quadratic).
    """
    if not any(m in line for m in WA_MARKERS):
        return line
    line = line.replace("```", f"`{ZWSP}`{ZWSP}`")  # a literal code fence never opens a block
    escape: list[int] = []
    n = len(line)
    for marker in WA_MARKERS:
        positions = _positions(line, marker)
        if len(positions) < 2:
            continue
        closers = [
            j
            for j in positions
            if j > 0 and not line[j - 1].isspace() and (j == n - 1 or _boundary(line[j + 1]))
        ]
        k = 0
        resume = 0  # markers before this were consumed by the last pair
        for i in positions:
            if i < resume or ZWSP in (line[i - 1 : i], line[i + 1 : i + 2]):
                continue
            opener = (i == 0 or _boundary(line[i - 1])) and i + 1 < n and not line[i + 1].isspace()
            if not opener or (line[i + 1] == marker and marker != "`"):
                continue
            while k < len(closers) and closers[k] < i + 2:
                k += 1
            if k == len(closers):
                break  # no closer after this opener, so none after any later one either
            close = closers[k]
            escape.extend((i, close))
            resume = close + 1
    if not escape:
        return line
    out: list[str] = []
    last = 0
    for i in sorted(escape):
        out.append(line[last:i])
        out.append(f"{ZWSP}{line[i]}{ZWSP}")
        last = i + 1
    out.append(line[last:])
    return "".join(out)


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
            letter = chr(ord(ordered) + counter - 1) if len(ordered) == 1 else ""
            if ordered.isascii() and ordered.isdigit() and len(ordered) < 10:
                prefix = f"{int(ordered) + counter - 1}. "
            elif ordered.isascii() and ordered.isalpha() and letter.isascii() and letter.isalpha():
                prefix = f"{letter}. "
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
    out = "\n".join(line.rstrip(" \t") for line in out.split("\n"))  # not [ \t]+\n: O(n²) on blanks
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
