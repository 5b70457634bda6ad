"""Conversations held behind a pending retry, so a conversation's events take effect in order.

When an event goes to the retry topic, the later events of its conversation must not overtake it: they
are moved behind it in the retry topic ("held") instead of being handled. Each record carries the offset it
had in the main topic (``zaptrix-seq``), its place in the conversation's order; a record is held while an
earlier-placed record of its conversation is pending in the retry topic, and it becomes due no sooner
than that record.

The pending list is the retry topic itself. Main and retry topics have the same partition count and a
conversation key hashes to the same partition number in both; the consumer uses the range assignor, so one
member owns partition N of both topics and the holds of a key live in one process. When a retry partition
changes hands, its new owner reads the pending records back (``rebuild``) before it handles anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from zaptrix.kafka.connection import connection_kwargs
from zaptrix.kafka.envelope import H_NOT_BEFORE, H_SEQ, header
from zaptrix.logging import get_logger
from zaptrix.settings import KafkaSettings

log = get_logger(__name__)
REBUILD_MAX_S = 30.0


@dataclass(frozen=True)
class Pending:
    seq: int  # place in the conversation (offset in the main topic)
    not_before_ms: int


def seq_of(headers: Sequence[tuple[str, bytes]] | None, default: int) -> int:
    value = header(headers or [], H_SEQ)
    return int(value) if value is not None and value.isdigit() and len(value) <= 18 else default


class Holds:
    def __init__(self) -> None:
        # conversation key -> {(retry partition, retry offset): Pending}
        self._by_key: dict[bytes, dict[tuple[int, int], Pending]] = {}

    def add(self, key: bytes | None, partition: int, offset: int, pending: Pending) -> None:
        if key is not None:
            self._by_key.setdefault(key, {})[(partition, offset)] = pending

    def consumed(self, key: bytes | None, partition: int, offset: int) -> None:
        entries = self._by_key.get(key) if key is not None else None
        if entries is not None:
            entries.pop((partition, offset), None)
            if not entries:
                del self._by_key[key]  # type: ignore[arg-type]

    def ahead(self, key: bytes | None, seq: int) -> int | None:
        """The due time (epoch ms) of the last pending record placed before ``seq`` in this conversation,
        or None when nothing of it is pending ahead."""
        entries = self._by_key.get(key) if key is not None else None
        due = [p.not_before_ms for p in (entries or {}).values() if p.seq < seq]
        return max(due) if due else None

    def forget(self, partitions: set[int]) -> None:
        for key in list(self._by_key):
            entries = {k: v for k, v in self._by_key[key].items() if k[0] not in partitions}
            if entries:
                self._by_key[key] = entries
            else:
                del self._by_key[key]

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_key.values())

    async def rebuild(
        self, settings: KafkaSettings, group: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> None:
        """Read the pending records of newly owned retry partitions (committed offset to end)."""
        if not partitions:
            return
        starts = {tp: (await group.committed(tp)) or 0 for tp in partitions}
        reader = AIOKafkaConsumer(enable_auto_commit=False, **connection_kwargs(settings))
        await reader.start()
        try:
            reader.assign(partitions)
            ends = await reader.end_offsets(partitions)
            todo = {tp for tp in partitions if ends[tp] > starts[tp]}
            for tp in todo:
                reader.seek(tp, starts[tp])
            deadline = time.monotonic() + REBUILD_MAX_S
            while todo and time.monotonic() < deadline:
                batch = await reader.getmany(*todo, timeout_ms=500, max_records=5000)
                for tp, records in batch.items():
                    for rec in records:
                        if rec.offset >= ends[tp]:
                            break
                        if header(rec.headers or [], H_SEQ) is None:
                            continue  # a retry that does not hold its conversation (Outcome.ordered)
                        nb = header(rec.headers or [], H_NOT_BEFORE) or "0"
                        due = int(nb) if nb.isdigit() and len(nb) <= 18 else 0
                        self.add(
                            rec.key, tp.partition, rec.offset, Pending(seq_of(rec.headers, rec.offset), due)
                        )
                    if records and records[-1].offset + 1 >= ends[tp]:
                        todo.discard(tp)
                await asyncio.sleep(0)
            log.info("pending retries read back", partitions=len(partitions), pending=len(self))
            if todo:
                log.error("pending retries not fully read back; order may not hold", partitions=len(todo))
        finally:
            await reader.stop()
