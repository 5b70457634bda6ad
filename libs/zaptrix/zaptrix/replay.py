"""zaptrix-replay (deprecated: use `zaptrix-admin dead-letters replay`; this entry point goes away in the
next release). Moves a flow's dead letters back to its main topic through zaptrix.dead_letters: every
replay audited, each dead letter replayed once (those with an audit entry are skipped) unless named by
--event-id.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from zaptrix.dead_letters import DeadLetters, Filter, ReplayResult, default_actor
from zaptrix.kafka.topics import Flow
from zaptrix.settings import KafkaSettings

DEPRECATED = (
    "zaptrix-replay is deprecated and goes away in the next release: use `zaptrix-admin dead-letters replay`"
)


async def replay_flow(
    settings: KafkaSettings,
    flow: Flow,
    *,
    event_id: str | None = None,
    limit: int = 0,
    dry_run: bool = False,
    actor: str = "",
    why: str = "zaptrix-replay",
) -> list[ReplayResult]:
    """The flow's dead letters not yet replayed (or the one named), re-published and audited."""
    dead = DeadLetters(settings)
    where = Filter(flows=(flow,), event_id=event_id, replayed=None if event_id else False, limit=limit)
    letters = await dead.find(where)
    return await dead.replay(letters, actor=actor or default_actor(), why=why, dry_run=dry_run)


def main() -> None:
    sys.stderr.write(DEPRECATED + "\n")
    parser = argparse.ArgumentParser(prog="zaptrix-replay", description=__doc__)
    parser.add_argument("--flow", required=True, choices=[f.value for f in Flow])
    parser.add_argument("--event-id", help="replay only this event (even if replayed before)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    args = parser.parse_args()
    done = asyncio.run(
        replay_flow(
            KafkaSettings(), Flow(args.flow), event_id=args.event_id, limit=args.limit, dry_run=args.dry_run
        )
    )
    for r in done:
        verb = {"replayed": "replayed", "would_replay": "would replay", "failed": "FAILED to replay"}[
            r.outcome
        ]
        sys.stdout.write(f"{verb} {r.letter.event_id or '?'}  (dead because: {r.letter.reason})\n")
    verb = "would replay" if args.dry_run else "replayed"
    sys.stdout.write(f"{sum(r.outcome != 'failed' for r in done)} event(s) {verb}\n")
    if any(r.outcome == "failed" for r in done):
        sys.exit(1)
