"""The Bitrix24 UI around an app's placement: Contact Center's connector slider and the BX24 JS SDK.

GET /_sandbox/portals/{member_id}/connector-settings?line=1&lang=en opens what an administrator sees after
clicking the connector's tile: a portal page holding the slider, an iframe that the portal fills by POSTing
the SETTING_CONNECTOR placement to the connector's PLACEMENT_HANDLER (DOCS
api-reference/widgets/setting-connector.md: DOMAIN, PROTOCOL, LANG, APP_SID, AUTH_ID, AUTH_EXPIRES,
REFRESH_ID, member_id, status, PLACEMENT, PLACEMENT_OPTIONS) with a fresh token of the app for that user.
``user=2`` opens it as an ordinary user, ``forge=1`` with a token the OAuth server never issued.

GET /api/v1/ serves the BX24 SDK stand-in (the real one is https://api.bitrix24.com/api/v1/): like the
real SDK it talks to the portal page with postMessage - init asks for the init data (getInitData), then
getAuth, getLang, isAdmin, getDomain, placement.info, fitWindow/resizeWindow, closeApplication and
installFinish answer from it or post a command the portal page carries out.
"""

from __future__ import annotations

import json
import secrets
from html import escape
from typing import TYPE_CHECKING, Any

from sanic import Request
from sanic.response import HTTPResponse, html, raw

from .web import App

if TYPE_CHECKING:
    from .bitrix_app import BitrixSandbox

BX24_JS = r"""/* Bitrix24 JS SDK stand-in (zaptrix sandbox): the documented calls of api/v1 over postMessage. */
(function () {
  "use strict";
  var data = null, ready = false, waiting = [], calls = {}, next = 1;
  var sid = (new URLSearchParams(window.location.search)).get("APP_SID") || "";
  function send(cmd, params, callback) {
    var id = callback ? "cb" + (next++) : "";
    if (callback) { calls[id] = callback; }
    window.parent.postMessage(JSON.stringify({cmd: cmd, params: params || {}, callback: id, appSid: sid}), "*");
  }
  window.addEventListener("message", function (e) {
    if (e.source !== window.parent) { return; }
    var msg; try { msg = JSON.parse(e.data); } catch (err) { return; }
    if (msg && msg.callback && calls[msg.callback]) {
      var cb = calls[msg.callback]; delete calls[msg.callback]; cb(msg.result);
    }
  });
  function scrollHeight() {
    return Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0);
  }
  window.BX24 = {
    init: function (callback) {
      if (ready) { callback(); return; }
      waiting.push(callback);
      if (waiting.length > 1) { return; }
      send("getInitData", {}, function (result) {
        data = result; ready = true;
        var todo = waiting; waiting = [];
        todo.forEach(function (f) { f(); });
      });
    },
    isReady: function () { return ready; },
    getAuth: function () {
      if (!data || !data.AUTH_ID) { return false; }
      return {access_token: data.AUTH_ID, refresh_token: data.REFRESH_ID,
              expires_in: new Date(Date.now() + 1000 * Number(data.AUTH_EXPIRES || 0)),
              domain: data.DOMAIN, member_id: data.MEMBER_ID};
    },
    refreshAuth: function (callback) { send("refreshAuth", {}, function (r) { data.AUTH_ID = r.AUTH_ID; callback(BX24.getAuth()); }); },
    getLang: function () { return data ? data.LANG : "en"; },
    isAdmin: function () { return !!(data && data.IS_ADMIN); },
    getDomain: function () { return data ? data.DOMAIN : ""; },
    placement: {
      info: function () { return data ? {placement: data.PLACEMENT, options: data.PLACEMENT_OPTIONS} : {}; },
      call: function (command, params, callback) { send(command, params, callback); }
    },
    resizeWindow: function (width, height, callback) { send("resizeWindow", {width: width, height: height}, callback); },
    fitWindow: function (callback) { send("resizeWindow", {width: "100%", height: scrollHeight()}, callback); },
    closeApplication: function (callback) { send("closeApplication", {}, callback); },
    installFinish: function () { send("setInstallFinish", {}); },
    callMethod: function () { throw new Error("BX24.callMethod is not part of the sandbox stand-in"); }
  };
})();
"""

_PORTAL_PAGE = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Contact Center - {domain}</title>
<style>
body{{margin:0;font:14px system-ui,sans-serif;background:#eef2f4}}
header{{background:#2fc6f6;color:#fff;padding:8px 12px}}
#slider{{background:#fff;margin:0 auto;max-width:1000px}}
iframe{{border:0;width:100%;height:600px;display:block}}
#closed{{padding:20px}}
</style></head><body>
<header>Bitrix24 sandbox · {domain} · Contact Center · {connector} · line {line}</header>
<div id="slider"><iframe name="app" id="app" title="{connector}"></iframe></div>
<p id="closed" hidden>The slider was closed (BX24.closeApplication).</p>
<form id="placement" method="post" action="{handler}" target="app">{fields}</form>
<script>
(function () {{
  var init = {init};
  var frame = document.getElementById("app");
  window.addEventListener("message", function (e) {{
    if (e.source !== frame.contentWindow) {{ return; }}
    var msg; try {{ msg = JSON.parse(e.data); }} catch (err) {{ return; }}
    var result = null;
    if (msg.cmd === "getInitData") {{ result = init; }}
    else if (msg.cmd === "resizeWindow") {{
      var h = parseInt(msg.params.height, 10);
      if (h > 0) {{ frame.style.height = Math.min(h + 20, 5000) + "px"; }}
      document.body.setAttribute("data-fitted", String(h));
    }}
    else if (msg.cmd === "closeApplication") {{
      document.getElementById("slider").hidden = true; document.getElementById("closed").hidden = false;
    }}
    if (msg.callback) {{ e.source.postMessage(JSON.stringify({{callback: msg.callback, result: result}}), "*"); }}
  }});
  document.getElementById("placement").submit();
}})();
</script></body></html>"""


def register(app: App, sb: BitrixSandbox) -> None:
    @app.get("/api/v1/")
    async def sdk(request: Request) -> HTTPResponse:
        return raw(BX24_JS.encode(), content_type="application/javascript; charset=utf-8")

    @app.get("/_sandbox/portals/<member_id>/connector-settings")
    async def connector_settings(request: Request, member_id: str) -> HTTPResponse:
        portal = sb.portals.get(member_id)
        if portal is None:
            return html("<p>unknown portal</p>", status=404)
        args = request.args
        line = args.get("line") or str(portal.spec.line_id)
        connector_id = portal.spec.connector_id
        connector = portal.connectors.get(connector_id)
        handler = args.get("handler") or (connector.placement_handler if connector else "")
        if not handler:
            return html("<p>the connector has no PLACEMENT_HANDLER: install the app first</p>", status=404)
        user_id = int(args.get("user") or "1") if (args.get("user") or "1").isdigit() else 1
        if args.get("forge"):
            access, refresh = secrets.token_hex(36), secrets.token_hex(36)
        else:
            access, refresh = portal.issue(sb.options, user_id=user_id, current=False)
        lang = (args.get("lang") or portal.spec.language)[:8]
        options = {
            "CONNECTOR": connector_id,
            "LINE": line,
            "STATUS": "1",
            "ACTIVE_STATUS": "1"
            if connector_id in portal.active.get(int(line) if line.isdigit() else 0, set())
            else "0",
            "CONNECTION_STATUS": "1",
            "REGISTER_STATUS": "1",
            "ERROR_STATUS": "0",
        }
        app_sid = secrets.token_hex(16)
        form: dict[str, str] = {
            "DOMAIN": portal.spec.domain,
            "PROTOCOL": "1",
            "LANG": lang,
            "APP_SID": app_sid,
            "AUTH_ID": access,
            "AUTH_EXPIRES": str(int(sb.options.access_token_ttl_s)),
            "REFRESH_ID": refresh,
            "SERVER_ENDPOINT": f"{sb.base_url}/oauth/rest/",
            "APPLICATION_TOKEN": portal.spec.application_token,
            "APPLICATION_SCOPE": portal.spec.scope,
            "member_id": member_id,
            "status": "L",
            "PLACEMENT": "SETTING_CONNECTOR",
            "PLACEMENT_OPTIONS": json.dumps(options),
        }
        init: dict[str, Any] = {
            **{k: v for k, v in form.items() if k not in ("APPLICATION_TOKEN",)},
            "MEMBER_ID": member_id,
            "IS_ADMIN": user_id in portal.spec.admin_user_ids,
            "PLACEMENT_OPTIONS": options,
        }
        fields = "".join(
            f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in form.items()
        )
        sep = "&" if "?" in handler else "?"
        page = _PORTAL_PAGE.format(
            lang=escape(lang),
            domain=escape(portal.spec.domain),
            connector=escape(connector_id),
            line=escape(line),
            handler=escape(f"{handler}{sep}DOMAIN={portal.spec.domain}&APP_SID={app_sid}"),
            fields=fields,
            init=json.dumps(init).replace("<", "\\u003c"),
        )
        return html(page)
