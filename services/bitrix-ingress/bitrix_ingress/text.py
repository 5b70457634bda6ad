"""Text rules of the Bitrix24 connector API: user names, BB-code, quotes, file names, notices.

- ``user.name`` / ``user.last_name``: "only letters, spaces, hyphens and apostrophes, max 25 chars"
  (imconnector.send.messages). WhatsApp profile names carry emoji, digits and dots: sanitize.
- Message text is BB-code. A customer's literal ``[b]`` must not turn bold, so tag-like brackets are
  neutralised with a zero-width space; WhatsApp's own ``*bold*``/``_italic_``/``~strike~``/
  ```` ```mono``` ```` become the matching BB-code so the operator sees the formatting.
- There is no native reply field: a reply is rendered as Bitrix24's quote block (two lines of 54
  dashes, what the connector core itself renders for ``attachments[reply]``).
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from datetime import UTC, datetime

NAME_MAX = 25
FALLBACK_NAME = ("WhatsApp", "customer")
QUOTE_LINE = "-" * 54
# A failure notice starts with this; the web handler drops operator events that echo one back.
NOTICE_PREFIX = "⚠️ Zaptrix:"
_NOTICE_RE = re.compile(r"⚠\ufe0f?\s*Zaptrix:")

_APOSTROPHES = frozenset("'`\u2019\u2018\u02bc\u00b4\u2032")
_HYPHENS = frozenset("-\u2010\u2011\u2012\u2013\u2014")
_SEPARATORS = frozenset('._,;:/\\|+&()[]{}<>"!?#*~=^@%$')


def _clean_name(raw: str) -> str:
    """Letters (as Python's ``str.isalpha``, after NFC), single hyphens/apostrophes inside words, spaces."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFC", raw):
        if ch.isalpha():
            out.append(ch)
        elif ch in _APOSTROPHES:
            out.append("'")
        elif ch in _HYPHENS:
            out.append("-")
        elif ch.isdigit():
            out.append("\x00")  # marks the word; dropped below
        elif ch.isspace() or ch in _SEPARATORS:
            out.append(" ")
        # combining marks, emoji, symbols and control characters are dropped
    words = []
    for raw_word in "".join(out).split():
        had_digit = "\x00" in raw_word
        pieces = re.split(r"([-']+)", raw_word.replace("\x00", ""))
        word = ""
        for i in range(0, len(pieces), 2):
            piece = pieces[i]
            if not piece:
                continue
            word = f"{word}{pieces[i - 1][0]}{piece}" if word else piece
        if had_digit and len(word) <= 2:  # "2nd", "B2": what is left of a number is not a name
            continue
        if word:
            words.append(word)
    return " ".join(words)


def _cut(text: str, limit: int = NAME_MAX) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    if " " in cut and text[limit] != " ":
        cut = cut[: cut.rfind(" ")]
    return cut.strip().strip("-'").strip()


def split_name(profile_name: str) -> tuple[str, str]:
    """WhatsApp profile name -> (name, last_name) within Bitrix24's rules; a fallback when nothing is left."""
    words = _clean_name(profile_name or "").split()
    if not words:
        return FALLBACK_NAME
    name = _cut(words[0])
    last = _cut(" ".join(words[1:]))
    return (name, last) if name else FALLBACK_NAME


def display_name(profile_name: str, wa_id: str) -> str:
    """A chat title: the profile name as the customer wrote it (no control characters), else the number."""
    shown = "".join(
        ch for ch in unicodedata.normalize("NFC", profile_name or "") if unicodedata.category(ch)[0] != "C"
    )
    shown = " ".join(shown.split())[:60]
    return shown or f"+{wa_id}"


# Tag names Bitrix24's chat parses; an opening bracket before one of them is neutralised.
_BB_TAG = re.compile(
    r"\[(?=/?(?:b|i|u|s|del|url|img|quote|code|color|size|br|user|chat|send|put|call|icon|context|"
    r"dialog|p|left|right|center|justify|list|table|tr|td|th|video|disk|pch|timestamp|attach|"
    r"mention|spoiler|font|background)\b|/?\w+=)",
    re.IGNORECASE,
)
_WA_MONO = re.compile(r"```(.+?)```", re.DOTALL)
_WA_BOLD = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]*?\S)\*(?![\w*])")
_WA_ITALIC = re.compile(r"(?<![\w_])_(?=\S)([^_\n]*?\S)_(?![\w_])")
_WA_STRIKE = re.compile(r"(?<![\w~])~(?=\S)([^~\n]*?\S)~(?![\w~])")


def escape_bbcode(text: str) -> str:
    """Make BB-code-looking brackets literal (a zero-width space after '[' keeps them readable)."""
    return _BB_TAG.sub("[\u200b", text)


def whatsapp_to_bbcode(text: str, *, convert_formatting: bool = True) -> str:
    """Customer text as BB-code: literal brackets escaped, WhatsApp formatting converted."""
    out = escape_bbcode(text)
    if not convert_formatting:
        return out
    out = _WA_MONO.sub(lambda m: f"[code]{m.group(1)}[/code]", out)
    out = _WA_BOLD.sub(r"[b]\1[/b]", out)
    out = _WA_ITALIC.sub(r"[i]\1[/i]", out)
    return _WA_STRIKE.sub(r"[s]\1[/s]", out)


def quote_block(text: str) -> str:
    """Bitrix24's quote rendering (the connector core uses the same for attachments[reply])."""
    return f"{QUOTE_LINE}\n{text}\n{QUOTE_LINE}\n"


def format_time(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def is_notice(text: str) -> bool:
    """True for one of our failure notices (so it is never relayed back to WhatsApp)."""
    return bool(_NOTICE_RE.search(text or ""))


def notice_text(body: str) -> str:
    return f"{NOTICE_PREFIX} {body.strip()}"


# Through the connector a notice appears under the customer's name: say plainly that it is not theirs.
CONNECTOR_NOTICE_NOTE = "[i](a notice from Zaptrix, not written by the customer)[/i]"


def connector_notice_text(body: str) -> str:
    """A notice posted through the connector (the fallback when it cannot be a system message)."""
    return notice_text(f"{CONNECTOR_NOTICE_NOTE} {body.strip()}")


_MIME_EXT = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/aac": ".aac",
    "audio/amr": ".amr",
    "video/mp4": ".mp4",
    "video/3gpp": ".3gp",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
}
_SAFE_FILE = re.compile(r"[^\w.\- ()]+", re.UNICODE)


def file_name(filename: str, mime_type: str, kind: str, fallback_id: str) -> str:
    """A file name with the extension Bitrix24 uses to decide how to show it (images inline)."""
    base_mime = (mime_type or "").split(";", 1)[0].strip().lower()
    ext = _MIME_EXT.get(base_mime) or (mimetypes.guess_extension(base_mime) if base_mime else None) or ""
    name = _SAFE_FILE.sub("_", (filename or "").strip()).strip(" ._")[:120]
    if not name:
        stem = kind or "file"
        name = f"{stem}-{re.sub(r'[^A-Za-z0-9]', '', fallback_id)[-12:] or 'media'}"
    if ext and "." not in name[-6:]:
        name += ext
    return name
