"""`zaptrix-admin dead-letters list|show|replay|audit`: the dead letters of every flow (zaptrix.dead_letters).

A dead letter is named `<flow>:<partition>:<offset>` (`list` shows it). Its portal comes from the event
(Bitrix24 events) or from the mapper's binding of its number (WhatsApp events); without the mapper the
portal shows as unknown and filters by portal find nothing of it. Every replay is audited first
(who, when, why) on the admin-audit topic; `audit` lists the entries.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from zaptrix.dead_letters import (
    AuditUnavailable,
    DeadLetter,
    DeadLetterNotFound,
    DeadLetters,
    Filter,
    ReplayResult,
    default_actor,
    describe,
    mapper_portals,
)
from zaptrix.kafka.topics import Flow
from zaptrix.settings import KafkaSettings

from zaptrix_admin.connect import grpc_clients
from zaptrix_admin.output import Output, UsageError, confirm


def register(sub: Any) -> None:
    group = sub.add_parser("dead-letters", help="dead letters of every flow: list, show, replay, audit")
    cmds = group.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = cmds.add_parser("list", help="dead letters, oldest first (filters combine)")
    _filters(ls)
    ls.set_defaults(handler=list_letters)

    show = cmds.add_parser("show", help="one dead letter: reason, event, effects already done, replays")
    show.add_argument("id", help="<flow>:<partition>:<offset> (from `list`)")
    show.add_argument("--portal", help="only if it belongs to this portal (member_id)")
    show.set_defaults(handler=show_letter)

    rp = cmds.add_parser(
        "replay",
        help="re-publish dead letters to their flow (audited); by id, or every one matching the filters",
    )
    rp.add_argument("ids", nargs="*", metavar="ID", help="dead letters to replay (else: the filters)")
    _filters(rp)
    rp.add_argument("--again", action="store_true", help="include dead letters replayed before")
    rp.add_argument("--why", default="", help="the reason, kept in the audit entry")
    rp.add_argument("--actor", default="", help="who replays (default cli:<os user>)")
    rp.add_argument("--dry-run", action="store_true", help="show what would be replayed, change nothing")
    rp.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rp.set_defaults(handler=replay_letters)

    au = cmds.add_parser("audit", help="who replayed which dead letter, when and why")
    au.add_argument("--portal", help="only this portal's (member_id)")
    au.set_defaults(handler=audit)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flow", action="append", choices=[f.value for f in Flow], help="flow (repeatable)")
    p.add_argument("--portal", help="portal (member_id)")
    p.add_argument("--event-type", help="e.g. customer_message, operator_message, whatsapp_status")
    p.add_argument("--reason", help="text the dead-letter reason contains (case-insensitive)")
    p.add_argument("--event-id", help="the event's id (e.g. wa:wamid...)")
    p.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")


def _where(args: argparse.Namespace, replayed: bool | None) -> Filter:
    return Filter(
        flows=tuple(Flow(f) for f in args.flow) if args.flow else tuple(Flow),
        member_id=args.portal,
        event_type=args.event_type,
        reason=args.reason,
        event_id=args.event_id,
        replayed=replayed,
        limit=args.limit,
    )


@contextlib.asynccontextmanager
async def _dead_letters() -> AsyncIterator[DeadLetters]:
    async with grpc_clients() as clients:
        yield DeadLetters(KafkaSettings(), mapper_portals(clients.mapper, clients.timeout))


def _row(x: DeadLetter) -> list[Any]:
    return [
        x.id,
        x.event_type,
        x.member_id or "?",
        x.event_id,
        x.dead_at.strftime("%Y-%m-%d %H:%M") if x.dead_at else "",
        "yes" if x.replayed else "no",
        x.reason[:90],
    ]


HEADER = ["ID", "TYPE", "PORTAL", "EVENT", "DEAD AT", "REPLAYED", "REASON"]


async def list_letters(args: argparse.Namespace, out: Output) -> int:
    async with _dead_letters() as dl:
        letters = await dl.find(_where(args, None))
    out.table(
        f"DEAD LETTERS ({len(letters)})", HEADER, [_row(x) for x in letters], [x.summary() for x in letters]
    )
    return 0


async def show_letter(args: argparse.Namespace, out: Output) -> int:
    async with _dead_letters() as dl:
        try:
            letter = await dl.get(args.id, member_id=args.portal)
        except DeadLetterNotFound as exc:
            raise UsageError(str(exc)) from exc
    detail = letter.detail()
    if out.as_json:
        out.json(detail)
        return 0
    for key in (
        "id",
        "flow",
        "event_type",
        "event_id",
        "member_id",
        "phone_number_id",
        "reason",
        "dead_at",
        "attempt",
        "source_topic",
    ):
        out.say(f"{key:>16}: {detail[key] if detail[key] not in (None, '') else '-'}")
    out.say(f"{'effects done':>16}: {detail['effects'] or '-'}")
    for a in letter.replays:
        out.say(f"{'replay':>16}: {a.at.isoformat()} by {a.actor} ({a.outcome}) {a.why}")
    out.json(detail["event"])
    return 0


async def replay_letters(args: argparse.Namespace, out: Output) -> int:
    if args.ids and any((args.flow, args.portal, args.event_type, args.reason, args.event_id)):
        raise UsageError("give dead-letter ids or filters, not both")
    async with _dead_letters() as dl:
        try:
            letters = (
                [await dl.get(i, member_id=args.portal) for i in args.ids]
                if args.ids
                else await dl.find(_where(args, None if args.again else False))
            )
        except DeadLetterNotFound as exc:
            raise UsageError(str(exc)) from exc
        if args.ids and not args.again and (done := [x.id for x in letters if x.replayed]):
            raise UsageError(f"already replayed: {', '.join(done)} (pass --again to replay them once more)")
        if not letters:
            out.say("nothing to replay")
            if out.as_json:
                out.json([])
            return 0
        if not args.dry_run and not confirm(out, f"replay {describe(letters)}?", assume_yes=args.yes):
            out.say("nothing replayed")
            return 1
        results: list[ReplayResult] = []
        with out.progress("replaying" if not args.dry_run else "checking", len(letters)) as bar:
            task = bar.tasks[0].id
            try:
                results = await dl.replay(
                    letters,
                    actor=args.actor or default_actor(),
                    why=args.why,
                    dry_run=args.dry_run,
                    on_each=lambda r: bar.advance(task),
                )
            except AuditUnavailable as exc:
                raise UsageError(f"{exc}: nothing more was replayed") from exc
    failed = [r for r in results if r.outcome == "failed"]
    out.table(
        "WOULD REPLAY" if args.dry_run else "REPLAYED",
        ["ID", "EVENT", "OUTCOME", "ERROR"],
        [[r.letter.id, r.letter.event_id, r.outcome, r.error] for r in results],
        [r.as_dict() for r in results],
    )
    verb = "would be replayed" if args.dry_run else "replayed"
    out.say(
        f"{len(results) - len(failed)} dead letter(s) {verb}" + (f", {len(failed)} failed" if failed else "")
    )
    return 1 if failed else 0


async def audit(args: argparse.Namespace, out: Output) -> int:
    async with _dead_letters() as dl:
        entries = await dl.audit(member_id=args.portal)
    out.table(
        f"REPLAYS ({len(entries)})",
        ["AT", "ACTOR", "DEAD LETTER", "PORTAL", "EVENT", "OUTCOME", "WHY"],
        [
            [
                a.at.isoformat(timespec="seconds"),
                a.actor,
                a.dead_letter_id,
                a.member_id,
                a.event_id,
                a.outcome,
                a.why,
            ]
            for a in entries
        ],
        [a.as_dict() for a in entries],
    )
    return 0
