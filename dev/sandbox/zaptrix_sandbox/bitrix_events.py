"""Outgoing Bitrix24 events: form-encoded POSTs, never retried (bitrix24.md §3, §5)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from . import bitrix_offline, formdata
from .bitrix_settings import BitrixOptions
from .bitrix_state import PortalState


def auth_block(
    portal: PortalState,
    options: BitrixOptions,
    base_url: str,
    *,
    user_id: int = 1,
    with_tokens: bool = True,
    refresh: bool = False,
    app_token: str | None = None,
) -> dict[str, Any]:
    """The `auth[...]` part of an event. Tokens are absent when no user acted (automation, robots);
    a refresh token arrives only with ONAPPINSTALL."""
    auth: dict[str, Any] = {"domain": portal.spec.domain}
    if with_tokens:
        access, refresh_token = portal.issue(options, user_id=user_id, with_refresh=refresh)
        auth.update(
            access_token=access,
            expires=str(int(portal.access[access].expires_at)),
            expires_in=str(int(options.access_token_ttl_s)),
            scope=portal.spec.scope,
        )
        if refresh:
            auth["refresh_token"] = refresh_token
        auth["user_id"] = str(user_id)
    auth.update(
        server_endpoint=f"{base_url}/rest/",
        status="L",
        client_endpoint=f"{base_url}/rest/",
        member_id=portal.spec.member_id,
        application_token=app_token if app_token is not None else portal.spec.application_token,
    )
    return auth


def handler_for(portal: PortalState, options: BitrixOptions, event: str) -> tuple[str | None, int]:
    """Where this event goes: the bound handler, else the configured default URL."""
    bound = [b for b in portal.bindings if b["event"] == event.upper() and not b["offline"]]
    if bound:
        return str(bound[-1]["handler"]), int(bound[-1]["handler_id"])
    if event.upper() == "ONAPPINSTALL":
        return options.install_url, 0  # the app's "initial installation path"
    if options.require_event_binding:
        return None, 0
    return options.outbound_url, 555


async def post_event(
    client: httpx.AsyncClient,
    portal: PortalState,
    options: BitrixOptions,
    event: str,
    data: Any,
    auth: dict[str, Any],
) -> dict[str, Any]:
    url, handler_id = handler_for(portal, options, event)
    form: dict[str, Any] = {
        "event": event.upper(),
        "event_handler_id": str(handler_id),
        "data": data,
        "ts": str(int(time.time())),
        "auth": auth,
    }
    body = formdata.encode(form)
    record: dict[str, Any] = {
        "event": event.upper(),
        "url": url,
        "form": formdata.flatten(form),
        "at": time.time(),
        "status_code": None,
        "error": None,
    }
    bitrix_offline.queue(portal, event, data, str(auth.get("user_id", "")))
    if event.upper() in {e.upper() for e in options.drop_online_events}:
        record["error"] = "dropped: drop_online_events (the event is lost, as Bitrix24 never resends one)"
    elif url is None:
        record["error"] = "no handler bound (event.bind) for this event"
    else:
        try:
            response = await client.post(
                url,
                content=body,
                timeout=options.event_timeout_s,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            record.update(status_code=response.status_code, response=response.text[:2000])
        except httpx.HTTPError as exc:  # no retry: Bitrix24 logs the failure and moves on
            record["error"] = f"{type(exc).__name__}: {exc}"
    portal.events.append(record)
    return record
