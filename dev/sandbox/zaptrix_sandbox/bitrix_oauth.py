"""The Bitrix24 stand-in's OAuth server (oauth.bitrix.info): the token endpoint (bitrix24.md §5) with
refresh-token rotation, and its REST `app.info`, which tells an app whether an access token is genuine:
it answers only for tokens this server issued, naming the app (client_id) they were issued to and the
portal (member_id, domain, client_endpoint)."""

from __future__ import annotations

import time
from typing import Any

from sanic import Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from . import formdata
from .bitrix_rest import RestError, find_token, request_params
from .bitrix_settings import BitrixOptions
from .bitrix_state import PortalState


def _error(code: str, description: str, status: int = 400) -> HTTPResponse:
    return json_response({"error": code, "error_description": description}, status=status)


def token_response(
    portal: PortalState, options: BitrixOptions, base_url: str, access: str, refresh: str
) -> dict[str, Any]:
    token = portal.access[access]
    return {
        "access_token": access,
        "expires": int(token.expires_at),
        "expires_in": int(options.access_token_ttl_s),
        "scope": portal.spec.scope,
        "domain": options.oauth_domain,  # the auth server's domain, not the portal's (bitrix24.md §5)
        "server_endpoint": f"{base_url}/rest/",
        "status": "L",
        "client_endpoint": f"{base_url}/rest/",
        "member_id": portal.spec.member_id,
        "user_id": token.user_id,
        "refresh_token": refresh,
    }


def handle_token(
    request: Request, portals: dict[str, PortalState], options: BitrixOptions, base_url: str
) -> HTTPResponse:
    params = formdata.parse_query(request.query_string or "")
    if request.method == "POST" and request.body:
        params.update(formdata.parse_query(request.body.decode("utf-8", "replace")))
    grant = params.get("grant_type")
    client_id, secret = params.get("client_id"), params.get("client_secret")
    if not grant or not client_id or not secret:
        return _error("invalid_request", "grant_type, client_id and client_secret are required")
    # One app (client_id) may be installed on several portals; the refresh token names the portal.
    apps = [p for p in portals.values() if p.spec.client_id == client_id and p.spec.client_secret == secret]
    if not apps:
        return _error("invalid_client", "Invalid client credentials", 401)
    if grant != "refresh_token":
        # authorization_code needs a user's browser consent, which the sandbox does not simulate.
        return _error("invalid_request", f"Unsupported grant_type {grant}")
    supplied = str(params.get("refresh_token") or "")
    portal = next((p for p in apps if supplied in p.refresh), apps[0])
    stored = portal.refresh.get(supplied)
    if stored is None or stored.used or time.time() >= stored.expires_at:
        return _error("invalid_grant", "Invalid refresh token")
    if stored.client_id and stored.client_id != client_id:  # another app's refresh token
        return _error("invalid_grant", "Invalid refresh token")
    stored.used = True  # rotation: a refresh token works once
    if options.revoke_access_on_refresh:
        for token in portal.access.values():
            if token.user_id == stored.user_id:
                token.revoked = True
    portal.refresh_count += 1
    access, refresh = portal.issue(options, user_id=stored.user_id, current=stored.user_id == 1)
    return json_response(token_response(portal, options, base_url, access, refresh))


def handle_app_info(
    request: Request, portals: dict[str, PortalState], options: BitrixOptions, base_url: str
) -> HTTPResponse:
    """GET/POST {oauth server}/rest/app.info?auth=<access token>. The "full" shape names the portal; its
    real field layout is UNCONFIRMED (see docs/sandbox.md), "minimal" leaves the portal out."""
    try:
        params = request_params(request)
        portal, access = find_token(portals, options, params.get("auth"))
    except RestError as err:
        return json_response(err.body(), status=err.status)
    result: dict[str, Any] = {
        "scope": portal.spec.scope,
        "client_id": access.client_id or portal.spec.client_id,
        "expires": int(access.expires_at),
        "user_id": access.user_id,
    }
    if options.oauth_app_info == "full":
        result["install"] = {
            "installed": True,
            "version": 1,
            "status": "L",
            "domain": portal.spec.domain,
            "member_id": portal.spec.member_id,
            "client_endpoint": f"{base_url}/rest/",
        }
    return json_response({"result": result})
