"""Storing a portal and setting it up (ONAPPINSTALL, or a UI app's install page): verify, UpsertPortal,
imconnector.register and the event bindings."""

from __future__ import annotations

from typing import Any

from sanic import HTTPResponse, Request, html, json
from zaptrix.logging import get_logger

from bitrix_ingress.deps import NotFound, RpcFailed
from bitrix_ingress.install import (
    InstallRefused,
    ensure_setup,
    install_finish_page,
    parse_install,
    upsert_request,
    verify_install,
)
from bitrix_ingress.metrics import INSTALLS
from bitrix_ingress.portal import Token
from bitrix_ingress.rest import BitrixError
from bitrix_ingress.settings import InsecureUrlError
from bitrix_ingress.web_context import LOGGER, ctx_of, problem, query

log = get_logger(LOGGER)


async def install_portal(request: Request, form: dict[str, Any]) -> HTTPResponse:
    ctx = ctx_of(request)
    settings = ctx.settings
    kind = "unknown"
    try:
        req = parse_install(form, query(request), settings)
        kind = req.kind
        stored, info = await verify_install(req, ctx.deps, ctx.portals)
        installed_flag = info.get("INSTALLED")
        first_install = stored is None or installed_flag in (False, "N", "0", 0) or req.kind == "event"
        if first_install:
            await ctx.deps.upsert_portal(upsert_request(req, settings))
            ctx.portals.forget_token(req.member_id)
            log.info("portal stored", member_id=req.member_id, domain=req.domain, kind=req.kind)
        token = Token(req.member_id, req.access_token, req.client_endpoint, req.expires_at)
        changes = await ensure_setup(req.member_id, token, ctx.portals, settings)
    except InsecureUrlError as exc:  # ZAPTRIX_PUBLIC_BASE_URL missing: Bitrix24 could not reach us anyway
        INSTALLS.labels(kind, "misconfigured").inc()
        log.error("install impossible: configuration", reason=str(exc))
        return problem(503, str(exc))
    except InstallRefused as exc:
        INSTALLS.labels(kind, "refused").inc()
        log.warning("install refused", reason=exc.reason, member_id=get_member(form))
        return problem(exc.status, exc.reason)
    except RpcFailed as exc:
        if exc.permanent:  # e.g. "a new portal needs: client_id, client_secret"
            INSTALLS.labels(kind, "refused_by_token_keeper").inc()
            log.error(
                "install failed: token-keeper refused the portal (set ZAPTRIX_BITRIX_CLIENT_ID/SECRET or "
                "register the app's credentials with token-keeper-admin)",
                reason=exc.reason,
                member_id=get_member(form),
            )
            return problem(503, f"the portal could not be stored: {exc.reason}")
        INSTALLS.labels(kind, "unavailable").inc()
        log.error("install failed: token-keeper unavailable", reason=exc.reason, member_id=get_member(form))
        return problem(503, "token-keeper unavailable, try again")
    except NotFound as exc:
        INSTALLS.labels(kind, "unavailable").inc()
        log.error("install failed", reason=exc.reason, member_id=get_member(form))
        return problem(503, "try again")
    except BitrixError as exc:
        INSTALLS.labels(kind, "bitrix_error").inc()
        log.error("install failed: bitrix24 refused the setup", reason=exc.reason, member_id=get_member(form))
        return problem(502, f"Bitrix24 refused the setup: {exc.code}")
    INSTALLS.labels(kind, "ok").inc()
    log.info("install done", member_id=req.member_id, changes=changes)
    if req.kind == "page":
        return html(install_finish_page(req.domain, changes))
    return json({"ok": True, "changes": changes})


def get_member(form: dict[str, Any]) -> str:
    auth = form.get("auth")
    if isinstance(auth, dict) and isinstance(auth.get("member_id"), str):
        return str(auth["member_id"])
    value = form.get("member_id")
    return value if isinstance(value, str) else ""
