"""`zaptrix-admin portals list|show|add|remove|register`: Bitrix24 portals.

list/show/add/remove work on token-keeper's database (as `tokens`). `register` (and `add --register`) does
on the portal what the app install does (bitrix-ingress's install.ensure_setup: connector registration,
event.bind of the outbound and lifecycle events, the offline queue), with the portal's token from
token-keeper over gRPC: without it a portal added by hand never sends operator replies to the gateway.
It needs bitrix-ingress-web's settings: ZAPTRIX_PUBLIC_BASE_URL (where Bitrix24 reaches the web) and the
connector's (ZAPTRIX_CONNECTOR_ID, _NAME, _COLOR) as bitrix-ingress-web has them.
"""

from __future__ import annotations

import argparse
from typing import Any

from bitrix_ingress.bitrix_rest.client import BitrixError
from bitrix_ingress.bitrix_rest.egress import portal_rest
from bitrix_ingress.bitrix_rest.pacing import PacerRegistry
from bitrix_ingress.bitrix_rest.portal import PortalClient
from bitrix_ingress.deps import Deps
from bitrix_ingress.settings import WebSettings
from bitrix_ingress.web.install import InstallRefused, ensure_setup
from token_keeper import admin as tk_admin
from token_keeper.model import utcnow
from zaptrix.clients import Clients
from zaptrix.egress import InsecureUrlError
from zaptrix.rpc import RpcError
from zaptrix.v1 import mapper_pb2

from zaptrix_admin.connect import grpc_clients
from zaptrix_admin.output import Output, UsageError, confirm


def register(sub: Any) -> None:
    group = sub.add_parser("portals", help="Bitrix24 portals: list, show, add, remove, register on Bitrix24")
    cmds = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cmds.add_parser("list", help="every portal: state, token expiry, last error").set_defaults(
        handler=list_portals
    )
    show = cmds.add_parser("show", help="one portal and its numbers")
    show.add_argument("member_id")
    show.set_defaults(handler=show_portal)
    add = cmds.add_parser(
        "add", help="add or update a portal (secrets from env vars or a prompt, never argv)"
    )
    tk_admin.add_portal_arguments(add)
    add.add_argument(
        "--register", action="store_true", help="then register the connector and bind the events on Bitrix24"
    )
    add.set_defaults(handler=add_portal)
    rm = cmds.add_parser("remove", help="mark a portal uninstalled: no token is handed out for it any more")
    rm.add_argument("member_id")
    rm.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(handler=remove_portal)
    reg = cmds.add_parser(
        "register", help="register the connector and bind the events on the portal, as the app install does"
    )
    reg.add_argument("member_id")
    reg.set_defaults(handler=register_portal)


def _portal_dict(p: Any) -> dict[str, Any]:
    return {
        "member_id": p.member_id,
        "domain": p.domain,
        "client_endpoint": p.client_endpoint,
        "state": p.state,
        "access_expires_at": p.access_expires_at.isoformat(),
        "refresh_obtained_at": p.refresh_obtained_at.isoformat(),
        "last_refresh_at": p.last_refresh_at.isoformat() if p.last_refresh_at else None,
        "last_error": p.last_error or None,
        "key_id": p.key_id,
    }


async def _on_service(run: Any) -> Any:
    try:
        async with tk_admin.open_service("zaptrix-admin") as service:
            return await run(service)
    except tk_admin.ERRORS as exc:
        raise UsageError(str(exc)) from exc


async def list_portals(args: argparse.Namespace, out: Output) -> int:
    async def run(service: Any) -> int:
        now = utcnow()
        portals = await service.list_portals()
        out.table(
            f"PORTALS ({len(portals)})",
            ["MEMBER_ID", "DOMAIN", "STATE", "ACCESS TOKEN", "LAST ERROR"],
            [
                [p.member_id, p.domain, p.state, tk_admin._expiry(p.access_expires_at, now), p.last_error]
                for p in portals
            ],
            [_portal_dict(p) for p in portals],
        )
        return 0

    code: int = await _on_service(run)
    return code


async def show_portal(args: argparse.Namespace, out: Output) -> int:
    async def run(service: Any) -> Any:
        try:
            return await service.get_portal(args.member_id)
        except Exception as exc:  # token-keeper's NotFound and friends: their text is ours
            raise UsageError(f"portal {args.member_id}: {exc}") from exc

    portal = await _on_service(run)
    doc = _portal_dict(portal)
    try:
        async with grpc_clients() as clients:
            listed = await clients.mapper.ListChannels(
                mapper_pb2.ListChannelsRequest(member_id=args.member_id), timeout=clients.timeout
            )
        doc["channels"] = [
            {
                "phone_number_id": c.phone_number_id,
                "display": c.display_phone_number,
                "line_id": c.line_id,
                "active": c.active,
            }
            for c in listed.channels
        ]
    except Exception as exc:  # the portal is still shown; its numbers need the mapper
        doc["channels"] = None
        out.error(f"numbers not shown: the mapper did not answer ({type(exc).__name__})")
    if out.as_json:
        out.json(doc)
        return 0
    for key, value in doc.items():
        if key != "channels":
            out.say(f"{key:>20}: {value if value not in (None, '') else '-'}")
    for c in doc["channels"] or []:
        state = "active" if c["active"] else "paused"
        out.say(
            f"{'number':>20}: {c['display'] or c['phone_number_id']} (phone_number_id "
            f"{c['phone_number_id']}), Open Line {c['line_id']}, {state}"
        )
    return 0


async def add_portal(args: argparse.Namespace, out: Output) -> int:
    async def run(service: Any) -> int:
        code: int = await tk_admin.add_portal(args, service)
        return code

    code: int = await _on_service(run)
    if code == 0 and args.register:
        return await register_portal(argparse.Namespace(member_id=args.member_id), out)
    return code


async def remove_portal(args: argparse.Namespace, out: Output) -> int:
    if not confirm(out, f"mark portal {args.member_id} uninstalled?", assume_yes=args.yes):
        out.say("nothing changed")
        return 1

    async def run(service: Any) -> int:
        code: int = await tk_admin.mark_uninstalled(args, service)
        return code

    code: int = await _on_service(run)
    return code


async def register_on_bitrix24(clients: Clients, member_id: str, settings: WebSettings) -> list[str]:
    """ensure_setup with the portal's own token from token-keeper. Returns what changed."""
    rest = portal_rest(settings, timeout_s=min(settings.bitrix_rest_timeout_s, 20.0))
    portals = PortalClient(Deps(clients), rest, PacerRegistry(settings.rate_for), settings, attempts=2)
    try:
        token = await portals.token(member_id)
        return await ensure_setup(member_id, token, portals, settings)
    finally:
        await rest.aclose()


async def register_portal(args: argparse.Namespace, out: Output) -> int:
    settings = WebSettings()
    try:
        settings.url("/")
    except InsecureUrlError as exc:
        raise UsageError(f"{exc} (set it as bitrix-ingress-web has it)") from exc
    async with grpc_clients() as clients:
        try:
            changes = await register_on_bitrix24(clients, args.member_id, settings)
        except (BitrixError, RpcError, InstallRefused) as exc:
            raise UsageError(f"portal {args.member_id} not registered: {exc}") from exc
    if out.as_json:
        out.json({"member_id": args.member_id, "changes": changes})
    else:
        out.say(f"portal {args.member_id} registered on Bitrix24 (handlers at {settings.public_base_url}):")
        for c in changes:
            out.say(f"  {c}")
    return 0
