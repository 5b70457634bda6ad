"""`zaptrix-admin channels list|show|bind|pause|resume|unbind`: WhatsApp numbers and their Open Lines.

Binding goes through zaptrix.binding (the one implementation the connector settings page uses too): the
number's credentials to token-keeper, its binding to the mapper, with the checks that tell whether it will
work (number free, the token reads it, the app is subscribed to the WABA, the webhook answers the verify
token). Over gRPC as the operator identity (connect.py); the Graph API and the webhook URL from
ZAPTRIX_GRAPH_API_BASE_URL and ZAPTRIX_META_WEBHOOK_URL. Secrets only from environment variables or a
prompt, never from argv.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from token_keeper.admin import UsageError as TkUsageError
from token_keeper.admin import read_secret
from zaptrix.binding import ChannelBinder, CheckResult, InvalidBinding, NotThisPortals, NumberCredentials
from zaptrix.rpc import RpcError, call
from zaptrix.settings import ChannelBindingSettings
from zaptrix.v1 import mapper_pb2

from zaptrix_admin.connect import bound_channel, grpc_clients
from zaptrix_admin.output import Output, UsageError, confirm


def register(sub: Any) -> None:
    group = sub.add_parser(
        "channels", help="WhatsApp numbers: list, show (health), bind, pause, resume, unbind"
    )
    cmds = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ls = cmds.add_parser("list", help="bound numbers (all, or one portal's)")
    ls.add_argument("--portal", help="member_id")
    ls.set_defaults(handler=list_channels)
    show = cmds.add_parser(
        "show", help="one number: binding and health checked now with its stored credentials"
    )
    show.add_argument("phone_number_id")
    show.set_defaults(handler=show_channel)
    bind = cmds.add_parser("bind", help="bind a number to a portal's Open Line (checks, then stores)")
    bind.add_argument("--portal", required=True, help="member_id of the portal")
    bind.add_argument("--line", required=True, type=int, help="Open Line id")
    bind.add_argument("--phone-number-id", required=True)
    bind.add_argument("--waba-id", required=True)
    bind.add_argument(
        "--access-token-env", metavar="VAR", help="env var with the Graph API token (else prompt)"
    )
    bind.add_argument(
        "--app-secret-env", metavar="VAR", help="env var with the Meta app secret (else prompt)"
    )
    bind.add_argument(
        "--verify-token-env", metavar="VAR", help="env var with the webhook verify token (else prompt)"
    )
    bind.set_defaults(handler=bind_channel)
    for name, active, what in (
        ("pause", False, "stop taking and sending messages of the number (kept bound)"),
        ("resume", True, "take and send messages of a paused number again"),
    ):
        c = cmds.add_parser(name, help=what)
        c.add_argument("phone_number_id")
        c.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        c.set_defaults(handler=set_active, active=active)
    ub = cmds.add_parser(
        "unbind",
        help="detach the number from its Open Line: paused; free for another portal while it has no conversations",
    )
    ub.add_argument("phone_number_id")
    ub.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    ub.set_defaults(handler=unbind)


@contextlib.asynccontextmanager
async def _binder() -> AsyncIterator[ChannelBinder]:
    async with grpc_clients() as clients:
        binder = ChannelBinder(
            clients.mapper, clients.token_keeper, ChannelBindingSettings(), timeout=clients.timeout
        )
        try:
            yield binder
        except RpcError as exc:
            raise UsageError(exc.reason) from exc
        finally:
            await binder.aclose()


def _channel_dict(c: mapper_pb2.Channel) -> dict[str, Any]:
    return {
        "phone_number_id": c.phone_number_id,
        "display_phone_number": c.display_phone_number,
        "member_id": c.member_id,
        "line_id": c.line_id,
        "connector_id": c.connector_id,
        "active": c.active,
        "crm_mode": mapper_pb2.CrmMode.Name(c.crm_mode),
        "reengagement_template": c.reengagement_template,
    }


def _checks(out: Output, checks: list[CheckResult]) -> None:
    for c in checks:
        mark = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip"}[str(c.outcome)]
        out.say(f"  [{mark}] {c.check}: {c.detail}")


async def list_channels(args: argparse.Namespace, out: Output) -> int:
    async with _binder() as binder:
        listed = await call(
            "mapper ListChannels",
            binder.mapper.ListChannels(
                mapper_pb2.ListChannelsRequest(member_id=args.portal or ""), timeout=binder.timeout
            ),
        )
    rows = [
        [
            c.phone_number_id,
            c.display_phone_number,
            c.member_id,
            c.line_id,
            "active" if c.active else "paused",
        ]
        for c in listed.channels
    ]
    out.table(
        f"NUMBERS ({len(rows)})",
        ["PHONE_NUMBER_ID", "NUMBER", "PORTAL", "LINE", "STATE"],
        rows,
        [_channel_dict(c) for c in listed.channels],
    )
    return 0


async def show_channel(args: argparse.Namespace, out: Output) -> int:
    async with _binder() as binder:
        channel = await bound_channel(binder.mapper, binder.timeout, args.phone_number_id)
        health = await binder.health(channel.member_id, channel.phone_number_id)
    doc = _channel_dict(channel) | {
        "checks": [
            {"check": str(c.check), "outcome": str(c.outcome), "reason": c.reason, "detail": c.detail}
            for c in health.checks
        ],
        "number": health.number.__dict__ if health.number else None,
    }
    if out.as_json:
        out.json(doc)
        return 0 if health.ok else 1
    for key, value in _channel_dict(channel).items():
        out.say(f"{key:>22}: {value if value not in (None, '') else '-'}")
    if health.number:
        out.say(f"{'quality rating':>22}: {health.number.quality_rating or '-'}")
        out.say(f"{'messaging limit':>22}: {health.number.messaging_limit or '-'}")
    out.say("health:")
    _checks(out, health.checks)
    return 0 if health.ok else 1


async def bind_channel(args: argparse.Namespace, out: Output) -> int:
    def secret(env: str | None, label: str, required: bool) -> str:
        try:
            value = read_secret(env, label, required=required)
        except TkUsageError as exc:
            raise UsageError(str(exc)) from exc
        return value.get_secret_value() if value else ""

    creds = NumberCredentials(
        phone_number_id=args.phone_number_id,
        waba_id=args.waba_id,
        access_token=secret(args.access_token_env, "access token", True),
        app_secret=secret(args.app_secret_env, "app secret", args.app_secret_env is None),
        verify_token=secret(args.verify_token_env, "verify token", args.verify_token_env is None),
    )
    async with _binder() as binder:
        try:
            result = await binder.bind(args.portal, args.line, creds)
        except InvalidBinding as exc:
            raise UsageError(str(exc)) from exc
    if out.as_json:
        out.json(result.as_dict())
    else:
        verdict = "bound" if result.bound else "NOT bound"
        out.say(f"number {args.phone_number_id}: {verdict} to portal {args.portal}, Open Line {args.line}")
        _checks(out, result.checks)
        if result.bound and not result.ok:
            out.say(
                "bound, but Meta will not deliver until the failed checks are fixed: "
                f"`zaptrix-admin channels show {args.phone_number_id}` checks again"
            )
    return 0 if result.ok else 1


async def set_active(args: argparse.Namespace, out: Output) -> int:
    verb = "resume" if args.active else "pause"
    async with _binder() as binder:
        channel = await bound_channel(binder.mapper, binder.timeout, args.phone_number_id)
        if not confirm(
            out, f"{verb} number {args.phone_number_id} of portal {channel.member_id}?", assume_yes=args.yes
        ):
            out.say("nothing changed")
            return 1
        try:
            stored = await binder.set_active(channel.member_id, channel.phone_number_id, args.active)
        except NotThisPortals as exc:  # rebound meanwhile
            raise UsageError(f"number {exc} changed portal meanwhile: try again") from exc
    if out.as_json:
        out.json(_channel_dict(stored))
    else:
        out.say(f"number {stored.phone_number_id}: {'active' if stored.active else 'paused'}")
    return 0


async def unbind(args: argparse.Namespace, out: Output) -> int:
    """The mapper keeps a binding as long as conversations refer to it (their history and the customers'
    identities), so unbinding pauses the number: nothing is taken or sent any more, and another portal can
    bind it as long as it has no conversations (zaptrix.binding checks that)."""
    args.active = False
    code = await set_active(args, out)
    if code == 0 and not out.as_json:
        out.say(
            "unbound from its Open Line: no message is taken or sent; its credentials stay in token-keeper "
            "until it is bound again"
        )
    return code
