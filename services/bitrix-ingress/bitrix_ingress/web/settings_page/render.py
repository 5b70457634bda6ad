"""The page as HTML: server-rendered, no build step, every value escaped.

Accessible by construction: one h1, a section (h2) per part, a label for every field, buttons that are
<button>s (keyboard and screen readers work without our script), a visible focus ring, notices in an
aria-live region, and a layout that reflows from a laptop to Bitrix24's mobile app (~375 px). The BX24 SDK
only fits the slider to the page, refreshes the line switch's token and closes the slider.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from html import escape

from google.protobuf.timestamp_pb2 import Timestamp
from zaptrix.binding import BindResult, CheckResult, Outcome
from zaptrix.dead_letters import DeadLetter

from bitrix_ingress.web.settings_page.i18n import Words
from bitrix_ingress.web.settings_page.view import NumberView, PageView

ACTION_PATH = "/webhooks/bitrix24/settings/action"

_CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2d3d;background:#f5f7f8}
main{max-width:960px;margin:0 auto;padding:16px}
h1{font-size:1.4rem;margin:.2em 0 .6em}
h2{font-size:1.15rem;margin:0 0 .6em}
h3{font-size:1rem;margin:.2em 0 .4em}
section,.card{background:#fff;border:1px solid #dfe3e6;border-radius:8px;padding:14px;margin:0 0 14px}
.card{margin:10px 0}
.row{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:10px 16px}
label{display:block;font-weight:600;margin-bottom:4px}
.hint{font-weight:400;color:#525c69;font-size:.9em}
input[type=text],input[type=password]{width:100%;padding:8px;border:1px solid #8a949e;border-radius:4px;font:inherit}
button{font:inherit;padding:8px 14px;border-radius:4px;border:1px solid #1a6fb3;background:#1a6fb3;color:#fff;cursor:pointer;min-height:40px}
button.secondary{background:#fff;color:#1a6fb3}
button.danger{background:#b3261e;border-color:#b3261e}
:focus-visible{outline:3px solid #f59e0b;outline-offset:2px}
.ok{color:#1b6e2d}.failed{color:#b3261e}.skipped{color:#525c69}
.notice{padding:10px 12px;border-radius:6px;margin:0 0 14px;border:1px solid}
.notice.ok{background:#e8f5ec;border-color:#1b6e2d}.notice.error{background:#fdecea;border-color:#b3261e}
.error-text{color:#b3261e;font-size:.9em;margin-top:4px}
ul.checks{list-style:none;padding:0;margin:.3em 0}
ul.checks li{margin:.25em 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 12px;margin:.5em 0}
dt{color:#525c69}dd{margin:0;overflow-wrap:anywhere}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #dfe3e6;vertical-align:top;overflow-wrap:break-word}
td button{white-space:nowrap}
code{font-size:.9em;overflow-wrap:anywhere}
@media (max-width:520px){main{padding:8px}dl{grid-template-columns:1fr}dt{margin-top:6px}
 table,thead,tbody,tr,th,td{display:block}thead{position:absolute;left:-9999px}
 tr{border-bottom:1px solid #dfe3e6;padding:6px 0}td{border:0;padding:2px 0;overflow-wrap:anywhere}
 td::before{content:attr(data-label);display:block;color:#525c69;font-size:.85em}}
"""

_MARK = {Outcome.OK: "✓", Outcome.FAILED: "✗", Outcome.SKIPPED: "\u2013"}  # en dash: not checked


def _when(ts: Timestamp | None, t: Words) -> str:
    if ts is None or not ts.seconds:
        return t("never")
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _dt(value: datetime | None, t: Words) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else t("unknown")


def _hidden(view: PageView, action: str, **extra: str) -> str:
    fields = {"session": view.token, "action": action, **extra}
    return "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items())


def _form(view: PageView, action: str, label: str, css: str = "", **extra: str) -> str:
    cls = f' class="{css}"' if css else ""
    return (
        f'<form method="post" action="{ACTION_PATH}">{_hidden(view, action, **extra)}'
        f'<button type="submit"{cls}>{escape(label)}</button></form>'
    )


def check_line(check: CheckResult, t: Words) -> str:
    """One check: mark, name and what it means (the reason in the page's language, else the detail)."""
    reason_key = f"reason.{check.reason}"
    text = t(reason_key) if t(reason_key) != reason_key else check.detail
    if check.outcome is Outcome.OK:
        text = t(f"ok.{check.check}")
    status = t(f"outcome.{check.outcome}")
    return (
        f'<li class="{check.outcome}" data-check="{escape(str(check.check))}" data-outcome="{check.outcome}">'
        f'<span aria-hidden="true">{_MARK[check.outcome]}</span> <strong>{escape(t(f"check.{check.check}"))}</strong>'
        f' <span class="visually-status">({escape(status)})</span>: {escape(text)}</li>'
    )


def _bind_result(result: BindResult, t: Words) -> str:
    if result.ok:
        head, kind = t("bind.ok"), "ok"
    elif result.bound:
        head, kind = t("bind.bound_with_problems"), "error"
    else:
        head, kind = t("bind.refused"), "error"
    checks = "".join(check_line(c, t) for c in result.checks)
    return (
        f'<div class="notice {kind}" id="bind-result" role="status" tabindex="-1">'
        f'<h3>{escape(head)}</h3><ul class="checks">{checks}</ul></div>'
    )


def _bind_form(view: PageView, t: Words) -> str:
    def field(name: str, secret: bool, hint_key: str) -> str:
        err = view.bind_errors.get(name)
        described = f"{name}-hint" + (f" {name}-error" if err else "")
        value = "" if secret else escape(view.bind_values.get(name, ""))
        kind = "password" if secret else "text"
        extra = (
            ' autocomplete="off" spellcheck="false"' if secret else ' inputmode="numeric" autocomplete="off"'
        )
        error_html = f'<div class="error-text" id="{name}-error">{escape(t(err))}</div>' if err else ""
        invalid = ' aria-invalid="true"' if err else ""
        return (
            f'<div><label for="{name}">{escape(t(f"field.{name}"))} '
            f'<span class="hint" id="{name}-hint">{escape(t(hint_key))}</span></label>'
            f'<input type="{kind}" id="{name}" name="{name}" value="{value}"{extra}{invalid}'
            f' aria-describedby="{described}" maxlength="2048">{error_html}</div>'
        )

    fields = "".join(
        (
            field("phone_number_id", False, "hint.phone_number_id"),
            field("waba_id", False, "hint.waba_id"),
            field("access_token", True, "hint.access_token"),
            field("app_secret", True, "hint.app_secret"),
            field("verify_token", True, "hint.verify_token"),
        )
    )
    result = _bind_result(view.bind_result, t) if view.bind_result else ""
    return (
        f'<section aria-labelledby="bind-h"><h2 id="bind-h">{escape(t("bind.title"))}</h2>'
        f"<p>{escape(t('bind.intro'))}</p>{result}"
        f'<form method="post" action="{ACTION_PATH}" id="bind-form">{_hidden(view, "bind")}'
        f'<div class="grid">{fields}</div><p class="hint">{escape(t("bind.secrets_note"))}</p>'
        f'<button type="submit" id="bind-submit">{escape(t("bind.submit"))}</button></form></section>'
    )


def _number(view: PageView, n: NumberView, t: Words) -> str:
    c = n.channel
    pid = c.phone_number_id
    state = t("state.active") if c.active else t("state.paused")
    rows: list[tuple[str, str]] = [("number.id", pid), ("number.state", state)]
    if n.health and n.health.number:
        info = n.health.number
        rows += [
            ("number.quality", info.quality_rating or t("unknown")),
            ("number.limit", info.messaging_limit or t("unknown")),
            ("number.throughput", info.throughput_level or t("unknown")),
        ]
    a = n.activity
    rows += [
        ("number.last_in", _when(a.last_inbound_at if a and a.HasField("last_inbound_at") else None, t)),
        ("number.last_out", _when(a.last_outbound_at if a and a.HasField("last_outbound_at") else None, t)),
        ("number.open_windows", str(a.open_windows if a else 0)),
        ("number.conversations", str(a.conversations if a else 0)),
    ]
    if n.templates is None:
        templates = escape(t("number.templates_unknown"))
    else:
        templates = escape(t("number.templates_count", count=str(n.templates)))
    details = "".join(f"<dt>{escape(t(k))}</dt><dd>{escape(v)}</dd>" for k, v in rows)
    details += f'<dt>{escape(t("number.templates"))}</dt><dd data-hook="templates">{templates}</dd>'
    checks = (
        f'<ul class="checks">{"".join(check_line(ch, t) for ch in n.health.checks)}</ul>'
        if n.health
        else f"<p>{escape(t('health.unavailable'))}</p>"
    )
    title = (c.display_phone_number and f"+{c.display_phone_number}") or pid
    toggle = (
        _form(view, "pause", t("number.pause"), "secondary", phone_number_id=pid)
        if c.active
        else _form(view, "resume", t("number.resume"), "", phone_number_id=pid)
    )
    return (
        f'<article class="card" data-number="{escape(pid)}" aria-labelledby="n-{escape(pid)}">'
        f'<h3 id="n-{escape(pid)}">{escape(title)}</h3><dl>{details}</dl>'
        f"<h4>{escape(t('health.title'))}</h4>{checks}"
        f'<div class="row">{_form(view, "check", t("number.check"), "secondary", phone_number_id=pid)}'
        f"{toggle}{_form(view, 'unbind', t('number.unbind'), 'secondary', phone_number_id=pid)}</div>"
        f'<p class="hint">{escape(t("number.unbind_hint"))}</p></article>'
    )


def _numbers(view: PageView, t: Words) -> str:
    body = (
        "".join(_number(view, n, t) for n in view.numbers)
        if view.numbers
        else f"<p>{escape(t('numbers.none'))}</p>"
    )
    return f'<section aria-labelledby="numbers-h"><h2 id="numbers-h">{escape(t("numbers.title"))}</h2>{body}</section>'


def _dead_letters(view: PageView, t: Words) -> str:
    head = f'<h2 id="dl-h">{escape(t("dl.title"))}</h2><p>{escape(t("dl.intro"))}</p>'
    if view.confirm is not None:
        letter = view.confirm
        return (
            f'<section aria-labelledby="dl-h">{head}'
            f'<div class="notice error" role="alertdialog" aria-labelledby="confirm-h" id="confirm">'
            f'<h3 id="confirm-h">{escape(t("dl.confirm_title"))}</h3>'
            f"<p>{escape(t('dl.confirm_text', event=letter.event_type, reason=letter.reason[:200]))}</p>"
            f'<div class="row">{_form(view, "replay_confirmed", t("dl.confirm"), "danger", dead_letter=letter.id)}'
            f"{_form(view, 'show', t('cancel'), 'secondary')}</div></div></section>"
        )
    if view.dead_letters is None:
        return f'<section aria-labelledby="dl-h">{head}<p class="failed">{escape(t("dl.unavailable"))}</p></section>'
    if not view.dead_letters:
        return f'<section aria-labelledby="dl-h">{head}<p>{escape(t("dl.none"))}</p></section>'
    cols = [t("dl.when"), t("dl.type"), t("dl.reason"), t("dl.event"), ""]
    header = "".join(f'<th scope="col">{escape(c)}</th>' for c in cols)
    rows = "".join(_letter_row(view, letter, cols, t) for letter in view.dead_letters)
    return (
        f'<section aria-labelledby="dl-h">{head}<div class="scroll"><table>'
        f"<thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table></div></section>"
    )


def _letter_row(view: PageView, letter: DeadLetter, cols: list[str], t: Words) -> str:
    cells = [_dt(letter.dead_at, t), letter.event_type, letter.reason[:300], letter.event_id[:120]]
    tds = "".join(f'<td data-label="{escape(c)}">{escape(v)}</td>' for c, v in zip(cols, cells, strict=False))
    button = _form(view, "replay", t("dl.replay"), "secondary", dead_letter=letter.id)
    return f'<tr data-dead-letter="{escape(letter.id)}">{tds}<td>{button}</td></tr>'


def _line(view: PageView, t: Words) -> str:
    s = view.session
    state = t("line.connected") if s.active else t("line.disconnected")
    action, label = ("line_off", t("line.disconnect")) if s.active else ("line_on", t("line.connect"))
    form = (
        f'<form method="post" action="{ACTION_PATH}">{_hidden(view, action, auth=view.auth_id)}'
        f'<button type="submit" class="secondary">{escape(label)}</button></form>'
    )
    return (
        f'<section aria-labelledby="line-h"><h2 id="line-h">{escape(t("line.title", line=s.line))}</h2>'
        f'<div class="row"><p id="line-state" data-active="{str(s.active).lower()}">{escape(state)}</p>{form}</div>'
        "</section>"
    )


def page(view: PageView, title: str) -> tuple[str, str]:
    """(HTML, CSP nonce) of the whole page."""
    t = Words(view.session.lang)
    nonce = secrets.token_urlsafe(12)
    notice = ""
    if view.notice:
        notice = (
            f'<div class="notice {view.notice.kind}" id="notice">'
            f"{escape(t(view.notice.key, **view.notice.values))}</div>"
        )
    body = "".join((_line(view, t), _bind_form(view, t), _numbers(view, t), _dead_letters(view, t)))
    html = f"""<!doctype html>
<html lang="{t.lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style nonce="{nonce}">{_CSS}</style></head>
<body><main id="main"><h1>{escape(title)}</h1>
<div aria-live="polite">{notice}</div>{body}
<p><button type="button" class="secondary" id="close" hidden>{escape(t("close"))}</button></p></main>
{_script(view.sdk_url, nonce)}
</body></html>"""
    return html, nonce


def _script(sdk_url: str, nonce: str) -> str:
    # Without the SDK (opened outside Bitrix24) the page still works: forms post, nothing else is needed.
    return f"""<script src="{escape(sdk_url)}" nonce="{nonce}"></script>
<script nonce="{nonce}">
(function () {{
  var focus = document.getElementById("bind-result") || document.getElementById("confirm");
  if (focus) {{ focus.setAttribute("tabindex", "-1"); focus.focus(); }}
  if (!window.BX24) {{ return; }}
  BX24.init(function () {{
    var auth = BX24.getAuth();
    if (auth && auth.access_token) {{
      document.querySelectorAll('input[name="auth"]').forEach(function (i) {{ i.value = auth.access_token; }});
    }}
    var close = document.getElementById("close");
    close.hidden = false;
    close.addEventListener("click", function () {{ BX24.closeApplication(); }});
    BX24.fitWindow();
  }});
}})();
</script>"""


def message_page(lang: str, title_key: str, text_key: str) -> str:
    """A refusal or error as a page in the portal's language (no details: the caller may be anyone)."""
    t = Words(lang)
    return f"""<!doctype html>
<html lang="{t.lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(t(title_key))}</title>
<style>{_CSS}</style></head><body><main><h1>{escape(t(title_key))}</h1>
<p id="refusal">{escape(t(text_key))}</p></main></body></html>"""


def csp(nonce: str, sdk_url: str, portal_origin: str) -> str:
    """Scripts and styles of this page only; forms post only here; framed only by the portal itself."""
    from urllib.parse import urlsplit

    sdk = urlsplit(sdk_url)
    sdk_origin = f"{sdk.scheme}://{sdk.netloc}" if sdk.netloc else ""
    ancestors = portal_origin or "'none'"
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}' {sdk_origin}; style-src 'nonce-{nonce}' 'unsafe-inline'; "
        f"img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors {ancestors}"
    ).replace("  ", " ")
