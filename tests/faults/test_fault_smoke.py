"""A short run of the fault suite (`make faults`, docs/faults.md) on the test session's system: a small load
on both flows while the meta dispatcher is SIGKILLed and restarted, and while the mapper hangs (SIGSTOP)
for 20 s. Nothing may be lost and no duplicate may be left unexplained by a documented window.

No timing assertion: each scenario waits (up to its drain timeout) until everything that can arrive has
arrived, then counts what the stand-ins recorded."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from localsystem import SANDBOX_MEMBER_ID

from bench.faults.load import Customer
from bench.faults.scenarios import BY_ID, Config, Context, run_scenario
from bench.faults.world import META_RETRY_DELAYS_S, open_customers
from tests.system import System

CONFIG = Config(
    messages=60,
    replies=12,
    pre_s=4.0,
    post_s=8.0,
    stop_s=20.0,
    drain_timeout_s=300.0,
    settle_s=3.0,
)


@pytest.fixture(scope="module")
async def customers(system: System) -> AsyncIterator[list[Customer]]:
    """Six customers who wrote once; the Graph stand-in retries webhooks like Meta while this module runs."""
    before = (await system.graph.get("/_sandbox/config")).json()["options"]
    await system.graph.post("/_sandbox/config", json={"webhook_retry_delays_s": META_RETRY_DELAYS_S})
    try:
        yield await open_customers(system.graph, system.bitrix, per_number=6, two=False, prefix="49159")
    finally:
        restore = {k: before[k] for k in ("webhook_retry_delays_s",)}
        await system.graph.post("/_sandbox/config", json=restore)


def _explain(row: dict[str, Any]) -> str:
    keep = ("customer_messages", "operator_replies", "notes", "error", "fault_length_s")
    return str({k: row[k] for k in keep})


@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario", ["meta-dispatcher-kill", "mapper-stop"])
async def test_nothing_lost_nothing_unexplained_twice(
    system: System, customers: list[Customer], scenario: str
) -> None:
    ctx = Context(system.local, system.graph, system.bitrix, customers, [SANDBOX_MEMBER_ID])
    outcome = await run_scenario(ctx, BY_ID[scenario], CONFIG, f"S{secrets.token_hex(3)}")
    row = outcome.row()
    assert row["error"] is None, row["error"]
    assert row["sent"] == CONFIG.messages + CONFIG.replies
    assert row["lost"] == 0, _explain(row)
    assert row["unexplained_duplicates"] == 0, _explain(row)
