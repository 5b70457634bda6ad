"""Storing a portal and setting it up (ONAPPINSTALL, or a UI app's install page): verify with Bitrix24's
OAuth server, UpsertPortal, imconnector.register and the event bindings."""

from __future__ import annotations

from typing import Any

from sanic import HTTPResponse, Request, html, json
from zaptrix.egress import InsecureUrlError
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcFailed, RpcNotFound

from bitrix_ingress.install import (
    InstallRefused,
    ensure_setup,
    install_finish_page,
    parse_install,
    replaces_stored,
    upsert_request,
    verified_token,
    verify_install,
)
from bitrix_ingress.install_guard import REFUSALS, guard_of, rate_limited, refuse
from bitrix_ingress.metrics import INSTALLS
from bitrix_ingress.oauth_check import MALFORMED, Refused
from bitrix_ingress.rest import BitrixError
from bitrix_ingress.web_context import LOGGER, ctx_of, problem, query

log = get_logger(LOGGER)


async def install_portal(request: Request, form: dict[str, Any]) -> HTTPResponse:
    ctx = ctx_of(request)
    settings = ctx.settings
    limited = rate_limited(request, "install")
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
        stored, auth = await verify_install(req, ctx.deps, ctx.portals, guard_of(request).oauth)
        if replaces_stored(req, stored):
            await ctx.deps.upsert_portal(upsert_request(req, auth, settings))
            ctx.portals.forget_token(req.member_id)
            log.info("portal stored", member_id=req.member_id, domain=auth.domain, kind=req.kind)
        changes = await ensure_setup(req.member_id, verified_token(auth), ctx.portals, settings)
    except Refused as exc:
        INSTALLS.labels(kind, "refused").inc()
        return await refuse(request, "install", exc, req.member_id)
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
                "register the app's credentials with token-keeper-admin)",
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
        log.error("install failed: bitrix24 refused the setup", reason=exc.reason, member_id=req.member_id)
        return problem(502, f"Bitrix24 refused the setup: {exc.code}")
    INSTALLS.labels(kind, "ok").inc()
    log.info("install done", member_id=req.member_id, changes=changes)
    if req.kind == "page":
        return html(install_finish_page(auth.domain, changes))
    return json({"ok": True, "changes": changes})


def get_member(form: dict[str, Any]) -> str:
    auth = form.get("auth")
    if isinstance(auth, dict) and isinstance(auth.get("member_id"), str):
        return str(auth["member_id"])[:64]
    value = form.get("member_id")
    return value[:64] if isinstance(value, str) else ""
