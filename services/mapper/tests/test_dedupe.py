from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
from mapper.expiry import expire_forever, expire_once
from mapper_support import Mapper, expect_code
from zaptrix.v1 import mapper_pb2 as pb


async def test_mark_and_check_are_idempotent(mapper: Mapper) -> None:
    check = mapper.stub.CheckProcessed
    mark = mapper.stub.MarkProcessed
    before = await check(pb.CheckProcessedRequest(event_id="wamid.X"))
    assert (before.processed, before.result) == (False, "")
    assert not (await mark(pb.MarkProcessedRequest(event_id="wamid.X", result="b24:501"))).already_processed
    assert (await mark(pb.MarkProcessedRequest(event_id="wamid.X", result="b24:999"))).already_processed
    after = await check(pb.CheckProcessedRequest(event_id="wamid.X"))
    assert (after.processed, after.result) == (True, "b24:501")  # the first effect is what counts
    rows = await mapper.sql("SELECT event_id, result FROM mapper.processed_event")
    assert [(r["event_id"], r["result"]) for r in rows] == [("wamid.X", "b24:501")]


async def test_concurrent_marks_let_exactly_one_through(mapper: Mapper) -> None:
    replies = await asyncio.gather(
        *(
            mapper.stub.MarkProcessed(pb.MarkProcessedRequest(event_id="evt-1", result=str(i)))
            for i in range(20)
        )
    )
    assert sum(not r.already_processed for r in replies) == 1


async def test_a_known_event_is_answered_from_memory(mapper: Mapper) -> None:
    await mapper.stub.MarkProcessed(pb.MarkProcessedRequest(event_id="evt-1", result="r"))
    await mapper.sql("DELETE FROM mapper.processed_event")  # only the cache can still know it
    reply = await mapper.stub.CheckProcessed(pb.CheckProcessedRequest(event_id="evt-1"))
    assert (reply.processed, reply.result) == (True, "r")
    # "not processed" is never cached: an event marked by another replica is seen at once
    assert not (await mapper.stub.CheckProcessed(pb.CheckProcessedRequest(event_id="evt-2"))).processed
    await mapper.sql("INSERT INTO mapper.processed_event (event_id, result) VALUES ('evt-2', 'elsewhere')")
    assert (
        await mapper.stub.CheckProcessed(pb.CheckProcessedRequest(event_id="evt-2"))
    ).result == "elsewhere"


async def test_dedupe_errors(mapper: Mapper) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect_code(mapper.stub.CheckProcessed(pb.CheckProcessedRequest(event_id="")), invalid)
    await expect_code(mapper.stub.MarkProcessed(pb.MarkProcessedRequest(event_id=" ")), invalid)
    await expect_code(
        mapper.stub.MarkProcessed(pb.MarkProcessedRequest(event_id="e", result="x" * 5000)), invalid
    )


async def _age(mapper: Mapper, prefix: str, count: int, days: int) -> None:
    await mapper.sql(
        "INSERT INTO mapper.processed_event (event_id, processed_at)"
        " SELECT $1 || g, now() - make_interval(days => $3) FROM generate_series(1, $2) g",
        prefix,
        count,
        days,
    )


async def test_expiry_deletes_only_old_records_in_batches(mapper: Mapper) -> None:
    await _age(mapper, "old-", 7, days=10)
    await _age(mapper, "fresh-", 3, days=0)
    repo = mapper.service.repo
    assert await repo.expire_processed(timedelta(days=8), batch=3) == 3  # one statement, one batch
    assert await expire_once(repo, timedelta(days=8), batch=3, pause_s=0) == 4
    rows = await mapper.sql("SELECT event_id FROM mapper.processed_event ORDER BY 1")
    assert [r["event_id"] for r in rows] == ["fresh-1", "fresh-2", "fresh-3"]
    assert await expire_once(repo, timedelta(days=8), batch=3, pause_s=0) == 0


async def test_background_expiry_runs_periodically(mapper: Mapper) -> None:
    await _age(mapper, "old-", 5, days=10)
    task = asyncio.create_task(
        expire_forever(mapper.service.repo, timedelta(days=8), batch=2, interval_s=0.05)
    )
    try:
        for _ in range(100):
            if not await mapper.sql("SELECT 1 FROM mapper.processed_event"):
                break
            await asyncio.sleep(0.05)
        assert await mapper.sql("SELECT 1 FROM mapper.processed_event") == []
        await _age(mapper, "later-", 2, days=10)  # a later sweep picks up new old rows too
        for _ in range(100):
            if not await mapper.sql("SELECT 1 FROM mapper.processed_event"):
                break
            await asyncio.sleep(0.05)
        assert await mapper.sql("SELECT 1 FROM mapper.processed_event") == []
    finally:
        task.cancel()
