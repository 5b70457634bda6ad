"""App installation, connector registration and event binding (the settings page: web/settings_page/).

Nothing in an install payload is trusted but its tokens, and those only after Bitrix24's OAuth server
vouched for them (oauth_check.py); the two shapes an install arrives in and the checks made are described
in docs/bitrix-ingress.md ("POST /webhooks/bitrix24/install"). :func:`ensure_setup` is idempotent, so
running it again (re-install, app update, an admin opening the app) repairs a half-finished setup.
"""

from __future__ import annotations

import contextlib
import html
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sanic import HTTPResponse, Request
from sanic import html as html_response
from sanic import json as json_response
from zaptrix.egress import InsecureUrlError
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcFailed, RpcNotFound
from zaptrix.v1 import token_keeper_pb2

from bitrix_ingress.bitrix_rest.client import BitrixError, TokenError
from bitrix_ingress.bitrix_rest.portal import PortalClient, Token
from bitrix_ingress.deps import Deps
from bitrix_ingress.formparse import get_str
from bitrix_ingress.metrics import INSTALLS
from bitrix_ingress.settings import WebSettings
from bitrix_ingress.web.events import OUTBOUND_EVENTS
from bitrix_ingress.web.http import problem, query
from bitrix_ingress.web.install_guard import REFUSALS
from bitrix_ingress.web.oauth_check import (
    BAD_OAUTH,
    MALFORMED,
    NOT_ADMIN,
    PORTAL_UNAVAILABLE,
    OAuthServer,
    Refused,
    VerifiedAuth,
)
from bitrix_ingress.web.resources import WebResources
from bitrix_ingress.web.template_picker import ensure_placement, request_syncs

log = get_logger(__name__)

OUTBOUND_PATH = "/webhooks/bitrix24/outbound"
INSTALL_PATH = "/webhooks/bitrix24/install"
SETTINGS_PATH = "/webhooks/bitrix24/settings"
LIFECYCLE_EVENTS = ("OnAppUninstall", "OnAppInstall")
# Nice to have: install still succeeds when a portal does not know them (DialogFinish is documented for
# connectors but not registered by every imconnector version; OnAppInstall only matters for UI apps).
OPTIONAL_EVENTS = frozenset({"ONIMCONNECTORDIALOGFINISH", "ONAPPINSTALL"})
# Bound a second time with event_type=offline (no handler): Bitrix24 also queues each one on the portal, and
# bitrix-dispatcher's reconciler (dispatcher/offline_events.py) drains the queue, so an event that never
# reached the web is not lost. Optional: a portal that refuses it keeps the online path.
OFFLINE_EVENTS = ("OnImConnectorMessageAdd",)

_ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">'
    '<path fill="#fff" d="M32 6C17.6 6 6 17.3 6 31.2c0 4.9 1.4 9.4 3.9 13.3L6 58l14-3.7c3.6 1.9 7.7 3 12 3 '
    '14.4 0 26-11.3 26-25.2S46.4 6 32 6z"/>'
    '<path fill="#25D366" d="M24.6 19.5c-.6-1.3-1.2-1.3-1.8-1.3h-1.5c-.5 0-1.4.2-2.1 1s-2.8 2.7-2.8 6.6 '
    "2.9 7.7 3.3 8.2c.4.5 5.6 8.9 13.8 12.1 6.8 2.7 8.2 2.1 9.7 2s4.8-2 5.4-3.9c.7-1.9.7-3.5.5-3.9-.2-.3-.7"
    "-.5-1.5-.9s-4.8-2.4-5.5-2.6c-.7-.3-1.3-.4-1.8.4s-2.1 2.6-2.5 3.1c-.5.5-.9.6-1.7.2s-3.4-1.2-6.4-3.9c"
    "-2.4-2.1-4-4.7-4.4-5.5-.5-.8 0-1.2.4-1.6.4-.4.8-.9 1.2-1.4.4-.5.5-.8.8-1.3.3-.5.1-1-.1-1.4-.2-.3-1.7"
    '-4.2-2.4-5.7z"/></svg>'
)
ICON_DATA_URI = "data:image/svg+xml;charset=US-ASCII," + quote(_ICON_SVG, safe="")


class InstallRefused(Exception):
    """The install request is malformed (answered 400 with this reason: our own words, nothing remote)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass
class InstallRequest:
    kind: str  # "event" (ONAPPINSTALL) or "page" (a UI app's install/app page)
    member_id: str
    access_token: str
    refresh_token: str
    expires_at: float  # what the request claims; capped by the verification
    application_token: str
    scope: str


def _expires(auth: dict[str, Any], now: float) -> float:
    expires = get_str(auth, "expires")
    if expires.isdigit() and len(expires) < 12:
        return float(expires)
    expires_in = get_str(auth, "expires_in") or get_str(auth, "AUTH_EXPIRES")
    if expires_in.isdigit() and len(expires_in) < 9:
        return now + float(expires_in)
    return now + 3600.0


def parse_install(form: dict[str, Any], query: dict[str, Any]) -> InstallRequest:
    """Read either install shape; raises InstallRefused(400) when required fields are missing.
    domain, client_endpoint and server_endpoint are not read at all: only the OAuth server names them."""
    now = time.time()
    merged = {**query, **form}
    if get_str(merged, "event").upper() == "ONAPPINSTALL":
        auth = merged.get("auth")
        if not isinstance(auth, dict):
            raise InstallRefused("ONAPPINSTALL without auth[...]")
        req = InstallRequest(
            kind="event",
            member_id=get_str(auth, "member_id"),
            access_token=get_str(auth, "access_token"),
            refresh_token=get_str(auth, "refresh_token"),
            expires_at=_expires(auth, now),
            application_token=get_str(auth, "application_token"),
            scope=get_str(auth, "scope"),
        )
    else:
        req = InstallRequest(
            kind="page",
            member_id=get_str(merged, "member_id"),
            access_token=get_str(merged, "AUTH_ID"),
            refresh_token=get_str(merged, "REFRESH_ID"),
            expires_at=_expires({"AUTH_EXPIRES": get_str(merged, "AUTH_EXPIRES")}, now),
            application_token=get_str(merged, "APPLICATION_TOKEN"),
            scope=get_str(merged, "APPLICATION_SCOPE"),
        )
    missing = [n for n in ("member_id", "access_token") if not getattr(req, n)]
    if missing:
        raise InstallRefused(f"install request without {', '.join(missing)}")
    return req


async def require_admin(member_id: str, token: Token, portals: PortalClient) -> str:
    """The token's user must administer the portal: installs come from the admin who installs the app
    (DOCS settings/app-installation); any other user's token (an employee opening the app) is refused.
    `profile` is in every app's basic scope and answers ADMIN (DOCS api-reference/common/users/profile)."""
    try:
        profile = await portals.call_with_token(member_id, token, "profile", {})
    except TokenError as exc:
        raise Refused(BAD_OAUTH, f"profile: {exc.code}") from exc
    except BitrixError as exc:
        if exc.permanent:
            raise Refused(NOT_ADMIN, f"profile: {exc.code}", 403) from exc
        raise Refused(PORTAL_UNAVAILABLE, f"profile: {exc.code}", 503) from exc
    admin = profile.get("ADMIN") if isinstance(profile, dict) else None
    user = profile.get("ID") if isinstance(profile, dict) else None
    if admin not in (True, 1, "1", "Y", "y", "true"):
        raise Refused(NOT_ADMIN, f"user {str(user)[:20]} is not an administrator", 403)
    return str(user or "")[:20]


async def verify_install(
    req: InstallRequest, deps: Deps, portals: PortalClient, oauth: OAuthServer
) -> tuple[token_keeper_pb2.PortalStatus | None, VerifiedAuth]:
    """Raises Refused unless the OAuth server vouches for an administrator's token of our app on the
    claimed portal. Returns the stored portal (None when new) and what the OAuth server confirmed."""
    auth = await oauth.verify(
        member_id=req.member_id,
        access_token=req.access_token,
        refresh_token=req.refresh_token,
        claimed_expires_at=req.expires_at,
    )
    await require_admin(req.member_id, verified_token(auth), portals)
    try:
        stored: token_keeper_pb2.PortalStatus | None = await deps.get_portal_status(req.member_id)
    except RpcNotFound:
        stored = None
    return stored, auth


def verified_token(auth: VerifiedAuth) -> Token:
    return Token(auth.member_id, auth.access_token, auth.client_endpoint, auth.expires_at)


def replaces_stored(req: InstallRequest, stored: token_keeper_pb2.PortalStatus | None) -> bool:
    """A new portal, an ONAPPINSTALL (install, reinstall, app update: always the installing admin), or a UI
    page on a portal that is not active. An admin merely opening the app keeps the installer's tokens."""
    if stored is None or req.kind == "event":
        return True
    return stored.state != token_keeper_pb2.PORTAL_STATE_ACTIVE


def upsert_request(
    req: InstallRequest, auth: VerifiedAuth, settings: WebSettings
) -> token_keeper_pb2.UpsertPortalRequest:
    out = token_keeper_pb2.UpsertPortalRequest(
        member_id=auth.member_id,
        domain=auth.domain,
        client_endpoint=auth.client_endpoint,
        server_endpoint=settings.bitrix_oauth_server_endpoint,
        client_id=settings.bitrix_client_id,
        client_secret=settings.bitrix_client_secret.get_secret_value()
        if settings.bitrix_client_secret
        else "",
        access_token=auth.access_token,
        refresh_token=auth.refresh_token,
        application_token=req.application_token,
        scope=req.scope,
    )
    out.access_expires_at.FromDatetime(datetime.fromtimestamp(auth.expires_at, UTC))
    return out


def register_params(settings: WebSettings) -> dict[str, Any]:
    return {
        "ID": settings.connector_id,
        "NAME": settings.connector_name,
        "ICON": {
            "DATA_IMAGE": ICON_DATA_URI,
            "COLOR": settings.connector_color,
            "SIZE": "90%",
            "POSITION": "center",
        },
        "PLACEMENT_HANDLER": settings.url(SETTINGS_PATH),
        "CHAT_GROUP": False,
        # WhatsApp cannot edit or delete a message the business sent: operators are not offered it (an
        # older registration still sends edit/delete events; the meta dispatcher answers them with a notice).
        "EDIT_INTERNAL_MESSAGES": False,
        "DEL_INTERNAL_MESSAGES": False,
        # CRM mailings would be free-form messages, refused outside the 24 h window (131047).
        "NEWSLETTER": False,
    }


def desired_bindings(settings: WebSettings) -> dict[str, str]:
    """event name (upper case, as event.get reports it) -> handler URL."""
    out = {name.upper(): settings.url(OUTBOUND_PATH) for name in OUTBOUND_EVENTS}
    out.update({name.upper(): settings.url(INSTALL_PATH) for name in LIFECYCLE_EVENTS})
    return out


_CAMEL = {name.upper(): name for name in (*OUTBOUND_EVENTS, *LIFECYCLE_EVENTS)}


async def ensure_setup(
    member_id: str, token: Token, portals: PortalClient, settings: WebSettings
) -> list[str]:
    """Register the connector and bind our events (idempotent). Returns what was changed."""
    changes: list[str] = []
    result = await portals.call_with_token(
        member_id, token, "imconnector.register", register_params(settings)
    )
    if isinstance(result, dict) and result.get("result") is False:
        raise InstallRefused(f"imconnector.register refused: {result.get('error') or 'unknown error'}", 502)
    changes.append(f"connector {settings.connector_id} registered")

    bound = await portals.call_with_token(member_id, token, "event.get", {})
    have: set[tuple[str, str]] = set()
    have_offline: set[str] = set()
    for item in bound if isinstance(bound, list) else []:
        if isinstance(item, dict):
            event_upper = str(item.get("event", "")).upper()
            if str(item.get("offline", "0")) in ("1", "True", "true", "Y"):
                have_offline.add(event_upper)  # not a stale online handler: it has none
            else:
                have.add((event_upper, str(item.get("handler", ""))))
    want = desired_bindings(settings)
    for event, handler in sorted(have):
        if event in want and handler != want[event]:
            await portals.call_with_token(
                member_id, token, "event.unbind", {"event": _CAMEL.get(event, event), "handler": handler}
            )
            changes.append(f"unbound stale {event} -> {handler}")
    for event, handler in want.items():
        if (event, handler) in have:
            continue
        try:
            await portals.call_with_token(
                member_id, token, "event.bind", {"event": _CAMEL.get(event, event), "handler": handler}
            )
            changes.append(f"bound {event}")
        except BitrixError as exc:
            if "already" in exc.description.lower() or "already" in exc.code.lower():
                continue
            if event in OPTIONAL_EVENTS and exc.permanent:
                log.warning("optional event not bound", bitrix_event=event, error=exc.reason)
                changes.append(f"skipped {event}: {exc.code}")
                continue
            raise
    for name in OFFLINE_EVENTS:
        if name.upper() in have_offline:
            continue
        try:
            await portals.call_with_token(
                member_id, token, "event.bind", {"event": name, "event_type": "offline"}
            )
            changes.append(f"bound {name.upper()} offline")
        except BitrixError as exc:
            if "already" in exc.description.lower() or "already" in exc.code.lower():
                continue
            if not exc.permanent:
                raise
            log.warning("offline event not bound; lost events stay lost", bitrix_event=name, error=exc.reason)
            changes.append(f"skipped {name.upper()} offline: {exc.code}")
    return changes


def install_finish_page(domain: str, changes: list[str]) -> str:
    items = "".join(f"<li>{html.escape(c)}</li>" for c in changes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Zaptrix WhatsApp connector</title>
<script src="//api.bitrix24.com/api/v1/"></script></head>
<body style="font-family:sans-serif">
<h2>WhatsApp connector installed</h2>
<p>Portal {html.escape(domain)}: open Contact Center, pick the WhatsApp (Zaptrix) tile and connect it to an
Open Line.</p><ul>{items}</ul>
<script>if (window.BX24) {{ BX24.init(function () {{ BX24.installFinish(); }}); }}</script>
</body></html>"""


class Install:
    """POST /webhooks/bitrix24/install (ONAPPINSTALL, or a UI app's install page). The SETTING_CONNECTOR
    placement (POST /webhooks/bitrix24/settings) is the settings page's (web/settings_page/)."""

    def __init__(self, resources: WebResources) -> None:
        self.resources = resources

    async def install(self, request: Request, form: dict[str, Any]) -> HTTPResponse:
        """Store the portal and set it up: verify with Bitrix24's OAuth server, UpsertPortal,
        imconnector.register and the event bindings. Never a 500."""
        try:
            return await self.install_portal(request, form)
        except Exception:
            log.exception("install handler failed", member_id=member_of(form))
            INSTALLS.labels("unknown", "error").inc()
            return problem(503, "internal error, try again")

    async def install_portal(self, request: Request, form: dict[str, Any]) -> HTTPResponse:
        """The install itself; exceptions go to the caller."""
        ctx, settings, guard = self.resources, self.resources.settings, self.resources.guard
        limited = guard.rate_limited(request, "install")
        if limited is not None:
            INSTALLS.labels("unknown", "refused").inc()
            return limited
        try:
            req = parse_install(form, query(request))
        except InstallRefused as exc:  # our own words about the request's shape: safe to say
            INSTALLS.labels("unknown", "malformed").inc()
            REFUSALS.labels("install", MALFORMED).inc()
            return problem(exc.status, exc.reason)
        kind = req.kind
        try:
            stored, auth = await verify_install(req, ctx.deps, ctx.portals, guard.oauth)
            if replaces_stored(req, stored):
                await ctx.deps.upsert_portal(upsert_request(req, auth, settings))
                ctx.portals.forget_token(req.member_id)
                log.info("portal stored", member_id=req.member_id, domain=auth.domain, kind=req.kind)
            changes = await ensure_setup(req.member_id, verified_token(auth), ctx.portals, settings)
            # issue 16: the template picker in Open Lines chats, and the channels' template catalogues
            changes += await ensure_placement(req.member_id, verified_token(auth), ctx.portals, settings)
            await sync_templates_of(ctx, req.member_id)
        except Refused as exc:
            INSTALLS.labels(kind, "refused").inc()
            return await guard.refuse(request, "install", exc, req.member_id)
        except InstallRefused as exc:  # after verification: the portal's administrator may see why
            INSTALLS.labels(kind, "refused").inc()
            log.warning("install failed", reason=exc.reason, member_id=req.member_id)
            return problem(exc.status, exc.reason)
        except InsecureUrlError as exc:  # ZAPTRIX_PUBLIC_BASE_URL missing: Bitrix24 could not reach us anyway
            INSTALLS.labels(kind, "misconfigured").inc()
            log.error("install impossible: configuration", reason=str(exc))
            return problem(503, "the gateway is not configured for installs")
        except RpcFailed as exc:
            if exc.permanent:  # e.g. "a new portal needs: client_id, client_secret"
                INSTALLS.labels(kind, "refused_by_token_keeper").inc()
                log.error(
                    "install failed: token-keeper refused the portal (set ZAPTRIX_BITRIX_CLIENT_ID/SECRET or "
                    "register the app's credentials with zaptrix-admin portals add)",
                    reason=exc.reason,
                    member_id=req.member_id,
                )
                return problem(503, "the portal could not be stored")
            INSTALLS.labels(kind, "unavailable").inc()
            log.error("install failed: token-keeper unavailable", reason=exc.reason, member_id=req.member_id)
            return problem(503, "token-keeper unavailable, try again")
        except RpcNotFound as exc:
            INSTALLS.labels(kind, "unavailable").inc()
            log.error("install failed", reason=exc.reason, member_id=req.member_id)
            return problem(503, "try again")
        except BitrixError as exc:  # the caller is a verified administrator of this portal by now
            INSTALLS.labels(kind, "bitrix_error").inc()
            log.error(
                "install failed: bitrix24 refused the setup", reason=exc.reason, member_id=req.member_id
            )
            return problem(502, f"Bitrix24 refused the setup: {exc.code}")
        await _keep_portal_data(ctx.deps, req.member_id)
        INSTALLS.labels(kind, "ok").inc()
        log.info("install done", member_id=req.member_id, changes=changes)
        if req.kind == "page":
            return html_response(install_finish_page(auth.domain, changes))
        return json_response({"ok": True, "changes": changes})


async def _keep_portal_data(deps: Deps, member_id: str) -> None:
    """A (re)install cancels the removal of the portal's data that an earlier uninstall scheduled (mapper
    retention). Not worth failing the install for: should the mapper be out, the retention job also keeps
    a portal whose conversations moved after the uninstall (docs/mapper.md, "Retention")."""
    try:
        answer = await deps.set_portal_installed(member_id)
    except (RpcFailed, RpcNotFound) as exc:
        log.warning("install not recorded with the mapper", member_id=member_id, reason=str(exc)[:200])
        return
    if answer.HasField("uninstalled_at"):  # an uninstall newer than this install: cannot be
        log.warning("portal still marked uninstalled", member_id=member_id)


async def sync_templates_of(resources: WebResources, member_id: str) -> None:
    """Every channel of the portal has its template catalogue read again (meta-dispatcher, Graph API)."""
    with contextlib.suppress(RpcFailed, RpcNotFound):
        channels = (await resources.deps.list_channels(member_id)).channels
        await request_syncs(resources, member_id, "install", [c.phone_number_id for c in channels])


def member_of(form: dict[str, Any]) -> str:
    auth = form.get("auth")
    if isinstance(auth, dict) and isinstance(auth.get("member_id"), str):
        return str(auth["member_id"])[:64]
    value = form.get("member_id")
    return value[:64] if isinstance(value, str) else ""
