"""With Kafka unreachable, reading dead letters fails fast and leaves no client open: the settings page
reads them on every view, so one open consumer per failed start would pile up while Kafka is down."""

from __future__ import annotations

import gc
import logging

import pytest
from aiokafka.errors import KafkaConnectionError
from zaptrix.dead_letters import DeadLetters, Filter
from zaptrix.settings import KafkaSettings
from zaptrix_testing.ports import free_port


async def test_an_unreachable_broker_leaves_no_consumer_open(caplog: pytest.LogCaptureFixture) -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")  # nothing listens there
    letters = DeadLetters(settings)
    caplog.set_level(logging.ERROR)
    for _ in range(3):
        with pytest.raises(KafkaConnectionError):
            await letters.find(Filter())
        with pytest.raises(KafkaConnectionError):
            await letters.get("wa-to-b24:0:0")
    gc.collect()  # an unclosed AIOKafkaConsumer says so when it is collected
    unclosed = [r.getMessage() for r in caplog.records if "Unclosed AIOKafkaConsumer" in r.getMessage()]
    assert not unclosed, unclosed[:1]
