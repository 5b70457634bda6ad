"""Counting starts before handling, so a record that kills its process still reaches the dead-letter topic.

A record that crashes its process (OOM kill, segfault, os._exit in a C extension) never returns an outcome,
so counting attempts when a record is routed misses it: it is redelivered forever. Instead, before a batch
is handled, the consumer commits each partition's current position again with a mark in the commit's
metadata (Kafka's OffsetAndMetadata): "records first..last have been started n times". The mark is durable
(the group's offsets topic) and follows the partition to whichever replica gets it next.

After a crash the new owner reads the mark back. Records under a mark are suspects: they are handled one at
a time, alone, each start counted, until one reaches the limit and is dead-lettered ("crashed its process N
times"). A successful commit clears the mark (or carries it to the next suspect).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

_PREFIX = "zaptrix-starts:v1"
_FORMAT = re.compile(rf"{_PREFIX}:(\d{{1,19}}):(\d{{1,19}}):(\d{{1,6}})")


@dataclass(frozen=True)
class StartMark:
    """Records first..last of a partition were in a started batch; the one at ``first`` started ``starts``
    times without completing."""

    first: int
    last: int
    starts: int

    def encode(self) -> str:
        return f"{_PREFIX}:{self.first}:{self.last}:{self.starts}"

    @classmethod
    def decode(cls, metadata: str | None) -> StartMark | None:
        match = _FORMAT.fullmatch(metadata or "")
        if not match:
            return None
        first, last, starts = (int(g) for g in match.groups())
        return cls(first, last, starts) if first <= last else None

    def starts_of(self, offset: int) -> int:
        """How many unfinished starts the record at ``offset`` has behind it (0: not a suspect)."""
        if offset == self.first:
            return self.starts
        return 1 if self.first < offset <= self.last else 0

    def after_success(self, offset: int) -> StartMark | None:
        """The mark once the record at ``offset`` has completed: the later suspects keep one start each."""
        return StartMark(offset + 1, self.last, 1) if offset < self.last else None


async def read_marks(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, StartMark | None]:
    """The marks committed for these partitions (by this process or a previous owner)."""
    # AIOKafkaConsumer.committed() drops the metadata; the coordinator it uses returns OffsetAndMetadata.
    coordinator: Any = consumer._coordinator
    committed = await coordinator.fetch_committed_offsets(partitions)
    return {tp: StartMark.decode(getattr(committed.get(tp), "metadata", None)) for tp in partitions}
