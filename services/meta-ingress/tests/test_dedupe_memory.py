"""The meta dispatcher remembers dedupe records it saw in the mapper: the offline copy of an operator
message costs no RPC, and nothing unrecorded (or recorded by someone else) is ever taken as done."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from meta_ingress.dispatcher.records import Records
from meta_support import Fakes
from zaptrix.clients import Clients
from zaptrix.settings import GrpcClientSettings


@pytest.fixture
async def records(fresh: Fakes) -> AsyncIterator[Records]:
    clients = Clients(GrpcClientSettings(mapper_addr=fresh.addr, token_keeper_addr=fresh.addr))
    yield Records(clients)
    await clients.close()


async def test_a_recorded_event_is_answered_from_memory_afterwards(records: Records, fresh: Fakes) -> None:
    assert await records.recorded("b24:m1:1") is None
    assert records.known("b24:m1:1") is None  # "not processed" is never remembered
    await records.mark("b24:m1:1", "wamid.A")
    assert records.known("b24:m1:1") == "wamid.A"
    asked = fresh.mapper.count("CheckProcessed")
    assert await records.recorded("b24:m1:1") == "wamid.A"
    assert fresh.mapper.count("CheckProcessed") == asked  # the copy: no RPC


async def test_only_the_result_the_mapper_kept_is_remembered(records: Records, fresh: Fakes) -> None:
    fresh.mapper.processed["b24:m1:2"] = "wamid.FIRST"  # another replica recorded it first
    await records.mark("b24:m1:2", "wamid.SECOND")
    assert records.known("b24:m1:2") is None
    assert await records.recorded("b24:m1:2") == "wamid.FIRST"
    assert records.known("b24:m1:2") == "wamid.FIRST"


async def test_an_event_recorded_elsewhere_is_learned_from_the_mapper(records: Records, fresh: Fakes) -> None:
    assert await records.recorded("b24:m1:3") is None
    fresh.mapper.processed["b24:m1:3"] = "wamid.C"  # recorded by another replica meanwhile
    assert await records.recorded("b24:m1:3") == "wamid.C"  # the miss was not remembered
