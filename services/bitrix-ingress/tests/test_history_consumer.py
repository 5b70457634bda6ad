"""The history import's consumer (process.py): its own topic and group, small batches, so that the import
never waits in front of live traffic."""

from __future__ import annotations

from typing import Any, cast

from bitrix_ingress.bitrix_rest.pacing import PacerRegistry
from bitrix_ingress.bitrix_rest.portal import PortalClient
from bitrix_ingress.dispatcher.process import history_consumer_for
from bitrix_ingress.settings import DispatcherSettings
from zaptrix.settings import KafkaSettings


async def test_the_history_consumer_reads_its_own_topic_in_small_batches() -> None:
    settings = DispatcherSettings(history_max_records=7)
    kafka = KafkaSettings(topic_prefix="zp", consumer_max_records=200)
    nothing = cast(Any, None)  # not used before run()
    live = PortalClient(nothing, nothing, PacerRegistry(settings.rate_for), settings)
    consumer = history_consumer_for(settings, kafka, nothing, live, nothing)
    assert consumer.topics.all() == ["zp.wa-history.v1", "zp.wa-history.retry.v1", "zp.wa-history.dlq.v1"]
    assert consumer.group_id == "bitrix-dispatcher-history" != settings.consumer_group
    assert consumer.settings.consumer_max_records == 7 and consumer.catch_up_records == 7
    assert kafka.consumer_max_records == 200  # the live consumer's settings are left alone
    portals = consumer.handler.__self__.portals  # type: ignore[attr-defined]
    assert portals.background and not live.background  # its calls yield to live ones
    assert portals.pacers is live.pacers  # one pacer per portal for both: one REST budget
