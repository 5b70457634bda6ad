"""`zaptrix-admin tokens status|refresh|reauth|rotate-keys|generate-key`: token-keeper's credentials.

On token-keeper's database, through token_keeper.admin's functions (same encryption and row locks as the
server): run it where token-keeper's environment is (`kubectl exec deploy/<release>-token-keeper -- ...`).
"""

from __future__ import annotations

import argparse
from typing import Any

from token_keeper import admin as tk_admin
from token_keeper.crypto import generate_key

from zaptrix_admin.output import Output, UsageError

REAUTH_GUIDE = """\
Portal {member_id} ({domain}) needs re-authorisation: Bitrix24 refused its refresh token for good
(refresh tokens die after 180 days unused, or when the app was reinstalled or its secret changed).
Nothing refreshes it from here. Either:
  1. an administrator of {domain} opens the Zaptrix app once (Applications > Zaptrix): the install flow
     stores fresh tokens and repairs the connector and event bindings; or
  2. with a refresh token obtained by hand (OAuth authorisation code flow of the app):
       zaptrix-admin portals add --member-id {member_id} --refresh-token-env VAR --verify
Messages to and from this portal meanwhile end as dead letters; replay them afterwards:
       zaptrix-admin dead-letters replay --portal {member_id} --why "portal re-authorised"
"""


def register(sub: Any) -> None:
    group = sub.add_parser("tokens", help="token status, refresh, re-authorisation, encryption keys")
    cmds = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cmds.add_parser(
        "status", help="portals and channels: state, token ages, last error, keys (no secrets)"
    ).set_defaults(handler=status)
    rf = cmds.add_parser("refresh", help="refresh one portal's token now (same lock as the servers)")
    rf.add_argument("--member-id", required=True)
    rf.set_defaults(handler=refresh)
    ra = cmds.add_parser("reauth", help="which portals need re-authorisation, and what to do about it")
    ra.add_argument("--member-id", help="only this portal")
    ra.set_defaults(handler=reauth)
    rk = cmds.add_parser("rotate-keys", help="re-encrypt every row under the active key")
    rk.add_argument("--dry-run", action="store_true", help="only count rows not yet under the active key")
    rk.set_defaults(handler=rotate_keys)
    cmds.add_parser(
        "generate-key", help="print a new random AES-256 key (base64) for ZAPTRIX_TOKEN_KEEPER_KEYS"
    ).set_defaults(handler=generate)


async def _on_service(args: argparse.Namespace, run: Any) -> int:
    try:
        async with tk_admin.open_service("zaptrix-admin") as service:
            code: int = await run(args, service)
            return code
    except tk_admin.ERRORS as exc:
        raise UsageError(str(exc)) from exc


async def status(args: argparse.Namespace, out: Output) -> int:
    args.json = out.as_json
    return await _on_service(args, tk_admin.status)


async def refresh(args: argparse.Namespace, out: Output) -> int:
    return await _on_service(args, tk_admin.refresh)


async def rotate_keys(args: argparse.Namespace, out: Output) -> int:
    return await _on_service(args, tk_admin.rotate_keys)


async def generate(args: argparse.Namespace, out: Output) -> int:
    out.json({"key": generate_key()}) if out.as_json else out.say(generate_key())
    return 0


async def reauth(args: argparse.Namespace, out: Output) -> int:
    async def run(args: argparse.Namespace, service: Any) -> int:
        portals = [p for p in await service.list_portals() if args.member_id in (None, p.member_id)]
        needs = [p for p in portals if p.state == "needs_reauth"]
        if out.as_json:
            out.json(
                [{"member_id": p.member_id, "domain": p.domain, "last_error": p.last_error} for p in needs]
            )
            return 1 if needs else 0
        if not needs:
            out.say("no portal needs re-authorisation")
            return 0
        for p in needs:
            out.say(REAUTH_GUIDE.format(member_id=p.member_id, domain=p.domain or "the portal"))
        return 1

    return await _on_service(args, run)
