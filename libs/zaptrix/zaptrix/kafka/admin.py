"""Topic creation (used by tests and local tooling; production topics come from the platform/Strimzi)."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from zaptrix.kafka.connection import connection_kwargs
from zaptrix.settings import KafkaSettings


async def ensure_topics(
    settings: KafkaSettings, names: Iterable[str], partitions: int = 6, replication: int = 1
) -> None:
    admin = AIOKafkaAdminClient(**connection_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, partitions, replication) for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
