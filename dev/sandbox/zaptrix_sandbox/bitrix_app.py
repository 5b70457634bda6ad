"""Bitrix24 stand-in: OAuth server + REST (/rest/{method}.json) + simulator, on Sanic."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
from sanic import Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from . import (
    bitrix_crm,
    bitrix_disk,
    bitrix_im,
    bitrix_imconnector,
    bitrix_offline,
    bitrix_placement,
    bitrix_sim,
)
from . import faults as fault_injection
from .bitrix_oauth import handle_app_info, handle_token
from .bitrix_rest import handle
from .bitrix_settings import BitrixOptions, BitrixSettings, PortalSpec
from .bitrix_state import PortalState
from .tasks import Background
from .web import App, new_app

assert (
    bitrix_crm and bitrix_disk and bitrix_im and bitrix_imconnector
)  # imported for their @method registrations


def _client() -> httpx.AsyncClient:
    """Webhooks go out concurrently (Meta sends sent/delivered/read per message): a pool sized for bursts."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64), timeout=10.0
    )


@dataclass
class BitrixSandbox:
    settings: BitrixSettings
    options: BitrixOptions = field(default_factory=BitrixOptions)
    portals: dict[str, PortalState] = field(default_factory=dict)
    background: Background = field(default_factory=Background)
    client: httpx.AsyncClient = field(default_factory=_client)
    faults: fault_injection.Faults = field(
        default_factory=lambda: fault_injection.Faults(frozenset({"5xx", "timeout"}))
    )

    @property
    def base_url(self) -> str:
        return self.settings.base_url()

    def reset(self) -> None:
        self.options = BitrixOptions.model_validate(
            self.settings.model_dump(include=set(BitrixOptions.model_fields))
        )
        self.portals = {}
        for spec in self.options.portals:
            portal = PortalState(spec, self.options)
            portal.issue(self.options)  # the installer's tokens, as handed over by ONAPPINSTALL
            bitrix_disk.seed_drive(portal)
            self.portals[spec.member_id] = portal

    def add_portal(self, spec: PortalSpec) -> PortalState:
        """A portal added at run time (POST /_sandbox/portals); gone after /_sandbox/reset."""
        portal = PortalState(spec, self.options)
        portal.issue(self.options)  # the installer's tokens, handed over by ONAPPINSTALL
        bitrix_disk.seed_drive(portal)
        self.portals[spec.member_id] = portal
        return portal

    def portal_view(self, p: PortalState) -> dict[str, Any]:
        return {
            "member_id": p.spec.member_id,
            "domain": p.spec.domain,
            "client_id": p.spec.client_id,
            "application_token": p.spec.application_token,
            "admin_user_ids": p.spec.admin_user_ids,
            "client_endpoint": f"{self.base_url}/rest/",
            "line_id": p.spec.line_id,
            "connector_id": p.spec.connector_id,
            "placements": p.placements,
            "drive": {str(u): ids for u, ids in p.drive.items()},
            "access_token": p.current_access,
            "refresh_token": p.current_refresh,
            "connectors": {c.id: {"name": c.name, "flags": c.flags} for c in p.connectors.values()},
            "active": {str(line): sorted(c) for line, c in p.active.items()},
            "connector_data": [
                {"connector": c, "line": line, "data": d} for (c, line), d in p.connector_data.items()
            ],
            "bindings": p.bindings,
        }


def create_app(settings: BitrixSettings | None = None, name: str = "sandbox_bitrix") -> App:
    settings = settings or BitrixSettings()
    app = new_app(name)
    app.config.RESPONSE_TIMEOUT = 600  # a "timeout" fault holds requests past the caller's 65 s read timeout
    sb = BitrixSandbox(settings=settings)
    sb.reset()

    @app.route("/oauth/token", methods=["GET", "POST"], strict_slashes=False)
    async def token(request: Request) -> HTTPResponse:
        return handle_token(request, sb.portals, sb.options, sb.base_url)

    # The OAuth server's own REST (https://oauth.bitrix.info/rest/): only app.info, the token check.
    @app.route("/oauth/rest/app.info", methods=["GET", "POST"], strict_slashes=False)
    async def oauth_app_info(request: Request) -> HTTPResponse:
        return handle_app_info(request, sb.portals, sb.options, sb.base_url)

    @app.route("/rest/<method_name>", methods=["GET", "POST"])
    async def rest(request: Request, method_name: str) -> HTTPResponse:
        mode = sb.faults.mode()
        if mode != "none":  # injected outage (POST /_sandbox/faults): nothing is done
            sb.faults.hit(mode)
            if mode == "timeout":
                await asyncio.sleep(sb.faults.spec.hang_s)
                return json_response({"error": "GATEWAY_TIMEOUT", "error_description": "sandbox fault"}, 504)
            return json_response(
                {"error": "INTERNAL_SERVER_ERROR", "error_description": "sandbox fault"}, 500
            )
        return handle(request, method_name, sb.portals, sb.options, sb.base_url, sb.background, sb.client)

    @app.after_server_stop
    async def close(app: App) -> None:
        await sb.background.cancel_all()
        await sb.client.aclose()

    bitrix_sim.register(app, sb)
    fault_injection.register(app, sb.faults)
    bitrix_offline.register(app, sb)
    bitrix_disk.register(app, sb)
    bitrix_placement.register(app, sb)
    return app
