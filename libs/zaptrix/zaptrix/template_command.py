"""The operator's ``/template`` command and its check against the catalogue (issue 16). Pure, no I/O:
meta-dispatcher checks and sends with it, bitrix-ingress-web's template picker checks its form with it and
writes the command it submits.

Syntax (docs/templates.md)::

    /template NAME[@LANGUAGE] [VALUE | VALUE | ...] [| KEY=VALUE ...]

Values separated by ``|`` fill the body's ``{{1}}``, ``{{2}}``, ... in order. A template with named
parameters takes ``name=value`` for each of them. ``header=value`` fills a text header's variable,
``buttonN=value`` the variable of the URL button at index N. A media header (image, video, document) takes
the file attached to the same message (or chosen in the picker).

The checks are Meta's, made before anything is sent, so that the operator learns at once what is wrong:
the template exists and is APPROVED for the chat's number, the number of values, their lengths and
characters (no new line, tab or more than four spaces in a row), the header's media type.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from zaptrix.v1 import mapper_pb2

# Bitrix24 prefixes an operator's text with their name when the connector has NEED_SIGNATURE (bitrix24.md:
# "[b]<Operator name>:[/b][br] "): the command may follow it. Names are at most 25 characters (bitrix24.md).
_SIGNATURE = r"(?:\[b\][^\[\]\n]{1,64}:\[/b\]\s*(?:\[br\]|\n)\s*)?"
COMMAND = re.compile(r"^\s*" + _SIGNATURE + r"/template(?=\s|$)", re.IGNORECASE)
_NAME = re.compile(r"[a-z0-9_]{1,512}")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:_[A-Za-z0-9]{2,4})?")
_KEY = re.compile(r"^\s*([a-z_][a-z0-9_]{0,63})\s*=(.*)$", re.DOTALL)
_POSITIONAL_VAR = re.compile(r"\{\{\s*(\d{1,3})\s*\}\}")
_NAMED_VAR = re.compile(r"\{\{\s*([a-z_][a-z0-9_]{0,63})\s*\}\}")
_BAD_SPACING = re.compile(r"[\n\t]| {5,}")
MAX_VALUES = 100
MAX_HEADER_PARAM = 60  # a text header with its variable: 60 characters (Meta's template limits)
MAX_BODY_PARAM = 1024  # the body: 1,024 characters
MAX_BUTTON_PARAM = 2000  # the variable part of a dynamic URL
# A media header's accepted types (whatsapp.md A4; template document headers are PDF).
HEADER_MEDIA: dict[str, frozenset[str]] = {
    "IMAGE": frozenset({"image/jpeg", "image/png"}),
    "VIDEO": frozenset({"video/mp4", "video/3gpp"}),
    "DOCUMENT": frozenset({"application/pdf"}),
}


class CommandError(ValueError):
    """What is wrong with the command, in words for the operator's notice."""


@dataclass
class Command:
    name: str
    language: str  # "" when not given
    values: list[str] = field(default_factory=list)


@dataclass
class Shape:
    """What a template's components ask for."""

    named: bool
    header_format: str = ""  # "" | TEXT | IMAGE | VIDEO | DOCUMENT | LOCATION
    header_vars: list[str] = field(default_factory=list)
    body_vars: list[str] = field(default_factory=list)
    url_buttons: dict[int, int] = field(default_factory=dict)  # button index -> variables (0 or 1)
    otp: bool = False

    @property
    def media(self) -> str:
        return self.header_format.lower() if self.header_format in HEADER_MEDIA else ""


def is_command(text: str) -> bool:
    return bool(COMMAND.match(text))


def parse(text: str) -> Command:
    """A ``/template`` line as a Command; CommandError when the name or language is malformed."""
    rest = COMMAND.sub("", text, count=1).strip()
    head, _, tail = rest.partition(" ")
    if not head:
        raise CommandError("Write the template's name after /template, e.g. /template order_update 12345")
    name, _, language = head.partition("@")
    if not _NAME.fullmatch(name):
        raise CommandError(f"“{name[:60]}” is not a template name (lower-case letters, digits and _).")
    if language and not _LANGUAGE.fullmatch(language):
        raise CommandError(f"“{language[:20]}” is not a language code (e.g. en_US, pt_BR).")
    tail = tail.strip()
    values = [v.strip() for v in tail.split("|")] if tail else []
    if len(values) > MAX_VALUES:
        raise CommandError(f"At most {MAX_VALUES} values.")
    return Command(name, language, values)


def _variables(text: str, named: bool) -> list[str]:
    found = (_NAMED_VAR if named else _POSITIONAL_VAR).findall(text)
    return list(dict.fromkeys(found)) if named else sorted(set(found), key=int)


def shape(template: mapper_pb2.MessageTemplate) -> Shape:
    named = template.parameter_format.upper() == "NAMED"
    out = Shape(named=named)
    try:
        components: Any = json.loads(template.components_json or "[]")
    except ValueError:
        components = []
    for c in components if isinstance(components, list) else []:
        if not isinstance(c, dict):
            continue
        kind = str(c.get("type", "")).upper()
        if kind == "HEADER":
            out.header_format = str(c.get("format", "TEXT")).upper()
            if out.header_format == "TEXT":
                out.header_vars = _variables(str(c.get("text", "")), named)
        elif kind == "BODY":
            out.body_vars = _variables(str(c.get("text", "")), named)
        elif kind == "BUTTONS":
            buttons = c.get("buttons")
            for i, b in enumerate(buttons if isinstance(buttons, list) else []):
                if not isinstance(b, dict):
                    continue
                btype = str(b.get("type", "")).upper()
                if btype == "URL":
                    out.url_buttons[i] = 1 if _POSITIONAL_VAR.search(str(b.get("url", ""))) else 0
                elif btype == "OTP":
                    out.otp = True
    return out


def choose(
    templates: list[mapper_pb2.MessageTemplate], cmd: Command, preferred: str
) -> mapper_pb2.MessageTemplate:
    """The template to send: the named language, else the channel's template language, else en_US, else
    the only one. CommandError names what is missing or not approved."""
    if not templates:
        raise CommandError(
            f"There is no template “{cmd.name}” for this WhatsApp number. Check the name in the template "
            "picker; an administrator can refresh the list with zaptrix-admin templates sync."
        )
    langs = {t.language: t for t in templates}
    if cmd.language:
        chosen = langs.get(cmd.language)
        if chosen is None:
            raise CommandError(
                f"The template “{cmd.name}” has no {cmd.language} version (it has: {', '.join(sorted(langs))})."
            )
    else:
        approved = [t for t in templates if t.status == "APPROVED"]
        pool = {t.language: t for t in approved} or langs
        chosen = (
            pool.get(preferred)
            or pool.get("en_US")
            or (next(iter(pool.values())) if len(pool) == 1 else None)
        )
        if chosen is None:
            raise CommandError(
                f"The template “{cmd.name}” exists in several languages ({', '.join(sorted(pool))}): "
                f"choose one, e.g. /template {cmd.name}@{sorted(pool)[0]} ..."
            )
    if chosen.status != "APPROVED":
        raise CommandError(
            f"The template “{chosen.name}” ({chosen.language}) is {chosen.status.lower().replace('_', ' ')} "
            "at WhatsApp and cannot be sent now."
        )
    return chosen


def _check(value: str, what: str, limit: int) -> str:
    if not value:
        raise CommandError(f"{what} is empty.")
    if len(value) > limit:
        raise CommandError(f"{what} is {len(value)} characters long; WhatsApp allows at most {limit}.")
    if _BAD_SPACING.search(value):
        raise CommandError(
            f"{what} contains a new line, a tab or more than four spaces in a row, which WhatsApp refuses."
        )
    return value


def _param(name: str, value: str, named: bool) -> dict[str, str]:
    p = {"type": "text", "text": value}
    if named:
        p["parameter_name"] = name
    return p


def build(
    template: mapper_pb2.MessageTemplate,
    cmd: Command,
    header_media: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``template`` object of a Graph ``type: template`` send; CommandError when the values do not fit.
    ``header_media``: {"id": ...} or {"link": ...} for a media header (checked by the caller's type rule)."""
    s = shape(template)
    if s.otp or template.category == "AUTHENTICATION":
        raise CommandError(
            "Authentication templates (one-time codes) are sent by your login system, not from the chat."
        )
    keyed: dict[str, str] = {}
    plain: list[str] = []
    for v in cmd.values:
        m = _KEY.match(v)
        known = m is not None and (
            m.group(1) == "header"
            or m.group(1).startswith("button")
            or (s.named and m.group(1) in s.body_vars + s.header_vars)
        )
        if m is not None and known:
            keyed[m.group(1)] = m.group(2).strip()
        else:
            plain.append(v)
    components: list[dict[str, Any]] = []
    if s.media:
        if header_media is None:
            raise CommandError(
                f"The template “{template.name}” has a {s.media} header: attach the {s.media} to the message "
                "with the command, or choose it in the template picker."
            )
        components.append({"type": "header", "parameters": [{"type": s.media, s.media: header_media}]})
    elif s.header_vars:
        var = s.header_vars[0]
        value = keyed.pop("header", None) if not s.named else keyed.pop(var, keyed.pop("header", None))
        if value is None:
            raise CommandError(
                f"The header of “{template.name}” needs a value: add | header=... to the command."
            )
        components.append(
            {
                "type": "header",
                "parameters": [_param(var, _check(value, "The header value", MAX_HEADER_PARAM), s.named)],
            }
        )
    if s.named:
        if plain:
            raise CommandError(
                f"“{template.name}” has named variables ({', '.join(s.body_vars)}): write them as name=value."
            )
        missing = [v for v in s.body_vars if v not in keyed]
        if missing:
            raise CommandError(f"Missing values for {', '.join(missing)} (write name=value).")
        body = [
            _param(v, _check(keyed.pop(v), f"The value of {v}", MAX_BODY_PARAM), True) for v in s.body_vars
        ]
    else:
        if len(plain) != len(s.body_vars):
            expected = ", ".join("{{" + v + "}}" for v in s.body_vars) or "none"
            raise CommandError(
                f"The template “{template.name}” expects {len(s.body_vars)} value(s) ({expected}); "
                f"you gave {len(plain)}. Separate values with |."
            )
        body = [
            _param(v, _check(x, f"Value {v}", MAX_BODY_PARAM), False)
            for v, x in zip(s.body_vars, plain, strict=True)
        ]
    if body:
        components.append({"type": "body", "parameters": body})
    for index, nvars in sorted(s.url_buttons.items()):
        if not nvars:
            continue
        value = keyed.pop(f"button{index}", None)
        if value is None:
            raise CommandError(
                f"The link button {index} of “{template.name}” needs a value: add | button{index}=..."
            )
        components.append(
            {
                "type": "button",
                "sub_type": "url",
                "index": str(index),
                "parameters": [
                    {"type": "text", "text": _check(value, f"The button {index} value", MAX_BUTTON_PARAM)}
                ],
            }
        )
    extra = list(keyed)  # every value used was taken out
    if extra:
        raise CommandError(f"“{template.name}” has no variable {', '.join(extra)}.")
    out: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
    if components:
        out["components"] = components
    return out


def check_header_file(media: str, mime: str, name: str) -> None:
    """A media header's file must be of the header's type (IMAGE: JPEG/PNG, VIDEO: MP4, DOCUMENT: PDF)."""
    allowed = HEADER_MEDIA[media.upper()]
    if mime not in allowed:
        raise CommandError(
            f"The file “{name}” ({mime or 'unknown type'}) cannot be the template's {media} header; "
            f"WhatsApp accepts {', '.join(sorted(allowed))}."
        )


def command_text(name: str, language: str, values: list[str]) -> str:
    """The ``/template`` line for a name, language and values (the picker's submission)."""
    for v in values:
        if "|" in v:
            raise CommandError("A value cannot contain “|” (it separates the values).")
    head = f"/template {name}@{language}" if language else f"/template {name}"
    return f"{head} {' | '.join(values)}".rstrip() if values else head
