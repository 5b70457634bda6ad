"""The template picker's HTML (issue 16): server-rendered, no script, every input labelled. Pure."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from zaptrix.template_command import HEADER_MEDIA, shape
from zaptrix.v1 import mapper_pb2

esc = html.escape

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;padding:12px;color:#1f2d3d;background:#f5f7f8}
h1{font-size:17px;margin:0 0 4px} .sub{color:#525c69;margin:0 0 12px}
section{background:#fff;border:1px solid #dfe3e8;border-radius:8px;padding:10px 12px;margin:0 0 10px}
h2{font-size:15px;margin:0} .tags span{display:inline-block;font-size:12px;border-radius:10px;padding:1px 8px;
margin:4px 4px 6px 0;background:#eef2f4} .tags .MARKETING{background:#fde8d7} .tags .UTILITY{background:#dff3e4}
.tags .RED{background:#f9d6d6} .tags .YELLOW{background:#fcf2c4}
.preview{white-space:pre-wrap;background:#f7f9fa;border-left:3px solid #2fc6f6;padding:6px 8px;margin:0 0 8px}
label{display:block;font-weight:600;margin:6px 0 2px} input[type=text],select{width:100%;box-sizing:border-box;
padding:6px;border:1px solid #c6cdd3;border-radius:4px} button{margin-top:8px;background:#3bc8f5;border:0;
color:#fff;font-weight:600;padding:7px 16px;border-radius:4px;cursor:pointer} .error{background:#fde7e7;
border:1px solid #f3b1b1;padding:8px;border-radius:6px;margin:0 0 10px} .ok{background:#e3f6e8;border:1px solid
#9fd9ae;padding:8px;border-radius:6px} .hint{display:block;color:#525c69;font-size:12px;margin-top:2px}
"""


@dataclass
class DiskFile:
    id: str
    name: str
    kind: str  # IMAGE | VIDEO | DOCUMENT


@dataclass
class PageContext:
    member_id: str
    auth_id: str
    refresh_id: str
    dialog: str
    send_url: str
    nonce: str
    number: str  # the chat's WhatsApp number, for the heading
    customer: str
    disk: list[DiskFile] = field(default_factory=list)
    disk_note: str = ""


def _components(t: mapper_pb2.MessageTemplate) -> list[dict[str, Any]]:
    try:
        value = json.loads(t.components_json or "[]")
    except ValueError:
        return []
    return [c for c in value if isinstance(c, dict)] if isinstance(value, list) else []


def preview(t: mapper_pb2.MessageTemplate) -> str:
    parts = [
        str(c.get("text", "")) for c in _components(t) if str(c.get("type", "")).upper() in ("HEADER", "BODY")
    ]
    return "\n".join(p for p in parts if p)


def _input(fid: str, name: str, label: str, hint: str = "") -> str:
    hint_html = f'<span class="hint" id="{fid}-hint">{esc(hint)}</span>' if hint else ""
    described = f' aria-describedby="{fid}-hint"' if hint else ""
    return (
        f'<label for="{fid}">{esc(label)}</label>'
        f'<input type="text" id="{fid}" name="{esc(name)}" required{described}>{hint_html}'
    )


def template_form(ctx: PageContext, t: mapper_pb2.MessageTemplate, index: int) -> str:
    s = shape(t)
    fid = f"t{index}"
    hidden = {
        "member_id": ctx.member_id,
        "AUTH_ID": ctx.auth_id,
        "REFRESH_ID": ctx.refresh_id,
        "dialog": ctx.dialog,
        "template": t.name,
        "language": t.language,
        "nonce": f"{ctx.nonce}{index:04x}",
    }
    fields = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in hidden.items())
    inputs: list[str] = []
    if s.header_vars:
        inputs.append(
            _input(
                f"{fid}-header",
                "header",
                f"Header variable {{{{{s.header_vars[0]}}}}}",
                "at most 60 characters",
            )
        )
    if s.media:
        choices = [f for f in ctx.disk if f.kind == s.header_format]
        allowed = ", ".join(sorted(HEADER_MEDIA[s.header_format]))
        if choices:
            options = "".join(f'<option value="{esc(f.id)}">{esc(f.name)}</option>' for f in choices)
            inputs.append(
                f'<label for="{fid}-media">Header {esc(s.media)} from your Bitrix24 Drive</label>'
                f'<select id="{fid}-media" name="disk_file" required aria-describedby="{fid}-media-hint">'
                f"{options}</select>"
                f'<span class="hint" id="{fid}-media-hint">accepted: {esc(allowed)}</span>'
            )
        else:
            inputs.append(
                f'<p class="hint">This template needs a header {esc(s.media)} ({esc(allowed)}): put one in your '
                "Bitrix24 Drive, or attach it to a /template command in the chat.</p>"
            )
    for var in s.body_vars:
        label = f"{{{{{var}}}}}" if not s.named else var
        inputs.append(_input(f"{fid}-v-{esc(var)}", f"var_{var}", f"Body variable {label}", "no line breaks"))
    for i, has_var in sorted(s.url_buttons.items()):
        if has_var:
            inputs.append(_input(f"{fid}-b{i}", f"button{i}", f"Link button {i}: end of the URL"))
    tags = [t.language, t.category or "?", f"{'named' if s.named else 'positional'} variables"]
    if s.header_format:
        tags.append(f"header: {s.header_format.lower()}")
    if t.quality:
        tags.append(f"quality {t.quality}")
    tag_html = "".join(f'<span class="{esc(x)}">{esc(x)}</span>' for x in tags)
    return f"""<section aria-labelledby="{fid}-h">
<h2 id="{fid}-h">{esc(t.name)}</h2><div class="tags">{tag_html}</div>
<div class="preview" aria-label="Template text">{esc(preview(t)) or "(no text)"}</div>
<form method="post" action="{esc(ctx.send_url)}">{fields}{"".join(inputs)}
<button type="submit">Send “{esc(t.name)}” ({esc(t.language)})</button></form></section>"""


def page(
    ctx: PageContext, templates: list[mapper_pb2.MessageTemplate], error: str = "", done: str = ""
) -> str:
    head = (
        f'<h1>WhatsApp templates</h1><p class="sub">Approved templates of {esc(ctx.number)} for '
        f"{esc(ctx.customer)}. Outside the 24-hour window only these can be sent.</p>"
    )
    notes = ""
    if error:
        notes += f'<div class="error" role="alert">{esc(error)}</div>'
    if done:
        notes += f'<div class="ok" role="status">{esc(done)}</div>'
    if ctx.disk_note:
        notes += f'<p class="hint">{esc(ctx.disk_note)}</p>'
    if templates:
        body = "".join(template_form(ctx, t, i) for i, t in enumerate(templates))
    else:
        body = (
            "<p>No approved template for this number yet. The list is being read from WhatsApp; reopen this "
            "panel in a minute. Templates are created and approved in Meta's WhatsApp Manager.</p>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>WhatsApp templates</title><style>{STYLE}</style></head>
<body><main>{head}{notes}{body}
<p class="hint">In the chat you can also type: /template NAME value | value (named: name=value).</p>
</main></body></html>"""
