"""POST /webhooks/bitrix24/install (install, or an uninstall event bound there) and
POST /webhooks/bitrix24/settings (the SETTING_CONNECTOR placement: activate the connector on a line)."""

from __future__ import annotations

import contextlib
import time

from sanic import HTTPResponse, Request, html
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcFailed, RpcNotFound

from bitrix_ingress import events as ev
from bitrix_ingress.formparse import FormError
from bitrix_ingress.install import InstallRefused, connector_data, parse_placement, settings_page
from bitrix_ingress.install_guard import REFUSALS, guard_of, rate_limited, refuse
from bitrix_ingress.metrics import INSTALLS
from bitrix_ingress.oauth_check import MALFORMED, Refused
from bitrix_ingress.outbound_events import outbound
from bitrix_ingress.portal import Token
from bitrix_ingress.portal_install import get_member, install_portal
from bitrix_ingress.rest import BitrixError, TokenError
from bitrix_ingress.web_context import LOGGER, ctx_of, problem, query, read_body

log = get_logger(LOGGER)


async def install(request: Request) -> HTTPResponse:
    try:
        form = read_body(request)
    except FormError as exc:
        INSTALLS.labels("unknown", "malformed").inc()
        return problem(400, str(exc))
    if ev.event_name(form) == ev.APP_UNINSTALL:  # bound to this URL: an authenticated event like any other
        return await outbound(request)
    try:
        return await install_portal(request, form)
    except Exception:
        log.exception("install handler failed", member_id=get_member(form))
        INSTALLS.labels("unknown", "error").inc()
        return problem(503, "internal error, try again")


async def settings_handler(request: Request) -> HTTPResponse:
    """The SETTING_CONNECTOR slider. Its AUTH_ID must be a token of our app on this portal, as the OAuth
    server confirms (review L11: any user's or any other app's token used to be enough)."""
    ctx = ctx_of(request)
    settings = ctx.settings
    limited = rate_limited(request, "settings")
    if limited is not None:
        return limited
    try:
        form = read_body(request)
        req = parse_placement(form, query(request), settings)
    except FormError as exc:
        REFUSALS.labels("settings", MALFORMED).inc()
        return problem(400, str(exc))
    except InstallRefused as exc:
        REFUSALS.labels("settings", MALFORMED).inc()
        return problem(exc.status, exc.reason)
    try:
        auth = await guard_of(request).oauth.verify(
            member_id=req.member_id,
            access_token=req.auth_id,
            refresh_token=req.refresh_id,
            claimed_expires_at=time.time() + 600,
        )
    except Refused as exc:
        return await refuse(request, "settings", exc, req.member_id)
    try:
        stored = await ctx.deps.get_portal_status(req.member_id)
        if req.application_token:
            verdict = await ctx.deps.verify_application_token(req.member_id, req.application_token)
            if not verdict.valid:
                return problem(401, "wrong APPLICATION_TOKEN")
        token = Token(req.member_id, auth.access_token, stored.client_endpoint, auth.expires_at)
        activate = req.action != "deactivate"
        await ctx.portals.call_with_token(
            req.member_id,
            token,
            "imconnector.activate",
            {"CONNECTOR": req.connector, "LINE": req.line, "ACTIVE": 1 if activate else 0},
        )
        if activate:
            await ctx.portals.call_with_token(
                req.member_id,
                token,
                "imconnector.connector.data.set",
                {"CONNECTOR": req.connector, "LINE": req.line, "DATA": connector_data(settings, req.line)},
            )
        channels: list[tuple[str, str]] = []
        with contextlib.suppress(RpcFailed, RpcNotFound):
            listed = await ctx.deps.list_channels(req.member_id)
            channels = [
                (c.phone_number_id, c.display_phone_number) for c in listed.channels if c.line_id == req.line
            ]
    except RpcNotFound:
        return problem(401, "unknown portal: install the app first")
    except TokenError:
        return problem(401, "AUTH_ID is not valid on this portal")
    except RpcFailed as exc:
        log.error("settings page: dependency failed", reason=exc.reason)
        return problem(503, "temporarily unavailable, reload the page")
    except BitrixError as exc:  # the caller holds a verified token of our app on this portal
        log.error("settings page: bitrix24 refused", reason=exc.reason, member_id=req.member_id)
        return problem(502, f"Bitrix24 refused: {exc.code}")
    INSTALLS.labels("settings", "activated" if activate else "deactivated").inc()
    log.info("connector line configured", member_id=req.member_id, line=req.line, active=activate)
    message = "Messages from the bound numbers arrive in this line." if activate else "Disconnected."
    return html(
        settings_page(settings=settings, req=req, active=activate, channels=channels, message=message)
    )
