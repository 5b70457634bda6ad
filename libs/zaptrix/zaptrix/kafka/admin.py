"""Topic creation (used by tests and local tooling; production topics come from the platform/Strimzi)."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from zaptrix.kafka.connection import connection_kwargs
from zaptrix.settings import KafkaSettings

# Topic max.message.bytes: Kafka's default (1 MiB + 12), set explicitly so that it agrees with the producer's
# max_request_size (ZAPTRIX_KAFKA_MAX_REQUEST_BYTES, 1 MiB), the broker's message.max.bytes (dev/stack/kafka.sh)
# and the chart's KafkaTopic config. See docs/meta-ingress.md "Sizes".
TOPIC_MAX_MESSAGE_BYTES = 1048588


async def ensure_topics(
    settings: KafkaSettings, names: Iterable[str], partitions: int = 6, replication: int = 1
) -> None:
    admin = AIOKafkaAdminClient(**connection_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        config = {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}
        missing = [
            NewTopic(n, partitions, replication, topic_configs=config) for n in names if n not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
