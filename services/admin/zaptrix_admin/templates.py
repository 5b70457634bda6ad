"""`zaptrix-admin templates`: a channel's WhatsApp template catalogue (issue 16, docs/templates.md).

  templates list --channel PNID [--all] [--name NAME]   what the picker and /template see (approved only
                                                        unless --all), from the mapper
  templates sync --channel PNID                         read the WABA's templates from the Graph API now
                                                        (every page), store them as the channel's catalogue

The sync is the meta dispatcher's own (meta_ingress.template_catalogue) with the channel's token from
token-keeper; it runs here so that the operator sees its progress and its errors at once.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from zaptrix.rpc import RpcNotFound, call
from zaptrix.template_command import shape
from zaptrix.v1 import mapper_pb2, token_keeper_pb2

from zaptrix_admin.connect import bound_channel, grpc_clients
from zaptrix_admin.output import Output, UsageError


def register(sub: Any) -> None:
    group = sub.add_parser("templates", help="WhatsApp message templates of a channel (list, sync)")
    commands = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ls = commands.add_parser("list", help="the channel's template catalogue")
    ls.add_argument("--channel", required=True, metavar="PHONE_NUMBER_ID")
    ls.add_argument("--all", action="store_true", help="every status, not only APPROVED")
    ls.add_argument("--name", default="", help="only this template name")
    ls.set_defaults(handler=list_templates)
    sync = commands.add_parser("sync", help="read the templates from the Graph API now")
    sync.add_argument("--channel", required=True, metavar="PHONE_NUMBER_ID")
    sync.set_defaults(handler=sync_templates)


def variables(t: mapper_pb2.MessageTemplate) -> str:
    s = shape(t)
    names = [*(f"header:{v}" for v in s.header_vars), *s.body_vars]
    return ("named: " if s.named else "") + (", ".join(names) or "none")


def row(t: mapper_pb2.MessageTemplate) -> dict[str, Any]:
    s = shape(t)
    return {
        "name": t.name,
        "language": t.language,
        "status": t.status,
        "category": t.category,
        "quality": t.quality,
        "variables": variables(t),
        "header": s.header_format.lower(),
        "template_id": t.template_id,
        "components": json.loads(t.components_json or "[]"),
    }


async def list_templates(args: argparse.Namespace, out: Output) -> int:
    async with grpc_clients() as clients:
        channel = await bound_channel(clients.mapper, clients.timeout, args.channel)
        request = mapper_pb2.ListTemplatesRequest(
            member_id=channel.member_id,
            phone_number_id=args.channel,
            approved_only=not args.all,
            name=args.name,
        )
        answer = await call(
            "mapper ListTemplates", clients.mapper.ListTemplates(request, timeout=clients.timeout)
        )
    rows = [row(t) for t in answer.templates]
    header = ["name", "language", "status", "category", "quality", "variables", "header"]
    what = "templates" if args.all else "approved templates"
    out.table(
        f"{what} of {args.channel} (portal {channel.member_id})",
        header,
        [[r[h] for h in header] for r in rows],
        rows,
    )
    if not rows:
        out.say(f"no {what}: run `zaptrix-admin templates sync --channel {args.channel}`")
    return 0


async def sync_templates(args: argparse.Namespace, out: Output) -> int:
    # meta-ingress's Graph client and sync: imported here, only this command needs them
    from meta_ingress.graph.client import GraphClient
    from meta_ingress.graph.errors import GraphApiError, GraphTransportError, describe
    from meta_ingress.settings import MetaSettings
    from meta_ingress.template_catalogue import CatalogueTooLarge, sync_channel

    graph = GraphClient(MetaSettings())
    try:
        async with grpc_clients() as clients:
            await bound_channel(clients.mapper, clients.timeout, args.channel)
            try:
                creds: token_keeper_pb2.ChannelCredentials = await call(
                    "token-keeper GetChannelCredentials",
                    clients.token_keeper.GetChannelCredentials(
                        token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=args.channel),
                        timeout=clients.timeout,
                    ),
                )
            except RpcNotFound:
                raise UsageError(f"token-keeper has no credentials for {args.channel}") from None
            if not creds.waba_id or not creds.access_token:
                raise UsageError(f"channel {args.channel} has no waba_id or access token in token-keeper")
            with out.progress(f"templates of WABA {creds.waba_id}", None) as bar:
                task = bar.task_ids[0]
                try:
                    answer = await sync_channel(
                        clients.mapper,
                        graph,
                        args.channel,
                        creds.waba_id,
                        creds.access_token,
                        clients.timeout,
                        progress=lambda n: bar.update(task, completed=n),
                    )
                except (GraphApiError, GraphTransportError, CatalogueTooLarge) as exc:
                    out.error(f"the Graph API refused the listing: {describe(exc)}")
                    return 2
    finally:
        await graph.aclose()
    result = {
        "channel": args.channel,
        "waba_id": creds.waba_id,
        "stored": answer.stored,
        "removed": answer.removed,
    }
    if out.as_json:
        out.json(result)
    else:
        out.say(
            f"{answer.stored} templates stored for {args.channel} (WABA {creds.waba_id}), {answer.removed} removed"
        )
    return 0
