"""zaptrix-replay: move dead letters back to their flow's main topic once the cause is fixed.

Without --event-id it consumes the dead-letter topic as consumer group "zaptrix-replay.<flow>" and commits
what it re-published, so each dead letter is replayed once. With --event-id it scans the whole
dead-letter topic without committing and re-publishes only that event.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiokafka import AIOKafkaConsumer

from zaptrix.kafka.connection import connection_kwargs
from zaptrix.kafka.envelope import H_DLQ_REASON, H_EFFECTS, H_EVENT_ID, header, without_bookkeeping
from zaptrix.kafka.producer import EventProducer
from zaptrix.kafka.topics import Flow, topics_for
from zaptrix.settings import KafkaSettings


async def replay(
    settings: KafkaSettings,
    flow: Flow,
    *,
    event_id: str | None = None,
    limit: int = 0,
    dry_run: bool = False,
    idle_s: float = 3.0,
) -> list[tuple[str, str]]:
    """Returns (event id, dead-letter reason) of every record re-published (or that would be, if dry_run)."""
    topics = topics_for(flow, settings.topic_prefix)
    group = None if event_id or dry_run else f"zaptrix-replay.{flow.value}"
    consumer = AIOKafkaConsumer(
        topics.dlq,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **connection_kwargs(settings),
    )
    producer = EventProducer(settings, client_id="zaptrix-replay")
    await consumer.start()
    await producer.start()
    done: list[tuple[str, str]] = []
    try:
        while not limit or len(done) < limit:
            batches = await consumer.getmany(timeout_ms=int(idle_s * 1000), max_records=100)
            if not batches:
                break
            for tp, records in batches.items():
                for rec in records:
                    headers = list(rec.headers or [])
                    rid = header(headers, H_EVENT_ID) or "?"
                    if event_id and rid != event_id:
                        continue
                    if limit and len(done) >= limit:
                        break
                    if not dry_run:
                        # What already happened goes along (effects.py): a message the dead letter
                        # had sent is recorded, not sent again.
                        effects = [(k, v) for k, v in headers if k == H_EFFECTS]
                        await producer.publish_raw(
                            topics.main, rec.key, rec.value, [*without_bookkeeping(headers), *effects]
                        )
                    done.append((rid, header(headers, H_DLQ_REASON) or ""))
                    if group:
                        await consumer.commit({tp: rec.offset + 1})
    finally:
        await producer.stop()
        await consumer.stop()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(prog="zaptrix-replay", description=__doc__)
    parser.add_argument("--flow", required=True, choices=[f.value for f in Flow])
    parser.add_argument("--event-id", help="replay only this event (scans without committing)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    args = parser.parse_args()
    done = asyncio.run(
        replay(
            KafkaSettings(), Flow(args.flow), event_id=args.event_id, limit=args.limit, dry_run=args.dry_run
        )
    )
    verb = "would replay" if args.dry_run else "replayed"
    for rid, reason in done:
        sys.stdout.write(f"{verb} {rid}  (dead because: {reason})\n")
    sys.stdout.write(f"{len(done)} event(s) {verb}\n")
