"""Portal calls: token from token-keeper, refresh on rejection, pacing, QUERY_LIMIT_EXCEEDED, retries."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from bitrix_ingress.bitrix_rest.blocks import OVERLOAD_WAIT_S, PROBE_S, Blocks
from bitrix_ingress.bitrix_rest.client import (
    ArgumentError,
    BitrixRest,
    MethodBlocked,
    Overloaded,
    ServerError,
)
from bitrix_ingress.bitrix_rest.pacing import PacerRegistry, PortalPacer
from bitrix_ingress.bitrix_rest.portal import (
    PortalClient,
    PortalUnknown,
    RateLimitWaitExceeded,
    TokenRejectedTwice,
)
from bitrix_ingress.deps import Deps
from bitrix_ingress.settings import DispatcherSettings, RateSpec
from zaptrix.clients import Clients
from zaptrix.settings import GrpcClientSettings
from zaptrix_testing.fakes import GrpcFakes, Portal


@pytest.fixture
async def deps(fakes: GrpcFakes) -> AsyncIterator[Deps]:
    fakes.token_keeper.add(Portal("m1", "apptok", access_token="access-1"))
    clients = Clients(GrpcClientSettings(mapper_addr=fakes.addr, token_keeper_addr=fakes.addr))
    yield Deps(clients)
    await clients.close()


def portal_client(deps: Deps, handler: object, **kw: object) -> PortalClient:
    settings = DispatcherSettings(bitrix_rate_per_s=50, bitrix_burst=50)
    rest = BitrixRest(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    return PortalClient(
        deps,
        rest,
        PacerRegistry(settings.rate_for),
        settings,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        **kw,
    )  # type: ignore[arg-type]


async def test_expired_token_is_reported_once_then_retried(deps: Deps, fakes: GrpcFakes) -> None:
    tokens: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        token = json.loads(request.content)["auth"]
        tokens.append(token)
        if token == "access-1":
            return httpx.Response(401, json={"error": "expired_token"})
        return httpx.Response(200, json={"result": "ok"})

    pc = portal_client(deps, handler)
    assert await pc.call("m1", "app.info", {}) == "ok"
    assert await pc.call("m1", "app.info", {}) == "ok"  # the fresh token is cached
    assert tokens == ["access-1", "access-1-r", "access-1-r"]
    (rejected,) = fakes.token_keeper.rejections
    assert (rejected.member_id, rejected.access_token, rejected.error) == ("m1", "access-1", "expired_token")


async def test_concurrent_calls_report_an_expired_token_once(deps: Deps, fakes: GrpcFakes) -> None:
    """The consumer and the offline reconciler share the portal's token: one rejection, one report."""
    import asyncio
    import json

    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["auth"] == "access-1":
            return httpx.Response(401, json={"error": "expired_token"})
        return httpx.Response(200, json={"result": "ok"})

    pc = portal_client(deps, handler)
    await pc.token("m1")  # both calls start with the cached token
    assert await asyncio.gather(*(pc.call("m1", "app.info", {}) for _ in range(5))) == ["ok"] * 5
    assert len(fakes.token_keeper.rejections) == 1


async def test_a_refused_fresh_token_is_not_refreshed_forever(deps: Deps, fakes: GrpcFakes) -> None:
    pc = portal_client(deps, lambda r: httpx.Response(401, json={"error": "invalid_token"}))
    with pytest.raises(TokenRejectedTwice):
        await pc.call("m1", "app.info", {})
    assert (
        len(fakes.token_keeper.rejections) == 1 and fakes.token_keeper.rejections[0].error == "invalid_token"
    )


async def test_unknown_portal_is_permanent(deps: Deps) -> None:
    pc = portal_client(deps, lambda r: httpx.Response(200, json={"result": 1}))
    with pytest.raises(PortalUnknown) as info:
        await pc.call("nobody", "app.info", {})
    assert info.value.permanent


async def test_query_limit_slows_down_and_retries_in_place(deps: Deps) -> None:
    answers = [503, 503, 200]
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        status = answers.pop(0)
        if status == 503:
            return httpx.Response(503, json={"error": "QUERY_LIMIT_EXCEEDED"}, headers={"Retry-After": "0.2"})
        return httpx.Response(200, json={"result": "done"})

    pc = portal_client(deps, handler)
    pacer = pc.pacers.get("m1")
    pacer.pause_base_s, pacer.pause_max_s = 0.05, 0.1  # backoff below Retry-After: Retry-After rules
    assert await pc.call("m1", "imconnector.send.messages", {}) == "done"
    assert len(seen) == 3 and 0.19 <= seen[1] - seen[0] < 1.0 and 0.19 <= seen[2] - seen[1] < 1.0
    assert pacer.penalties == 0  # success resets the backoff


def test_pacer_backoff_grows_and_honours_retry_after() -> None:
    now = [100.0]
    pacer = PortalPacer(RateSpec(2, 10), clock=lambda: now[0])
    delays = [pacer.slow_down() for _ in range(7)]
    assert 1.0 <= delays[0] <= 2.0 and 2.0 <= delays[1] <= 4.0 and all(d <= 30.0 for d in delays)
    assert delays[-1] >= 15.0
    assert pacer.slow_down(retry_after=45.0) == 45.0 and pacer.paused_until == 145.0


async def test_query_limit_beyond_the_wait_budget_goes_up(deps: Deps) -> None:
    pc = portal_client(
        deps,
        lambda r: httpx.Response(503, json={"error": "QUERY_LIMIT_EXCEEDED"}, headers={"Retry-After": "5"}),
        rate_limit_max_wait_s=1.0,
    )
    started = time.monotonic()
    with pytest.raises(RateLimitWaitExceeded) as info:
        await pc.call("m1", "imconnector.send.messages", {})
    assert time.monotonic() - started < 1.0 and not info.value.permanent and info.value.retry_after == 5.0


async def test_server_errors_are_retried_a_bounded_number_of_times(deps: Deps) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500, json={"error": "INTERNAL_SERVER_ERROR"})

    pc = portal_client(deps, handler, attempts=3)
    with pytest.raises(ServerError):
        await pc.call("m1", "imconnector.send.messages", {})
    assert len(calls) == 3
    calls.clear()
    pc = portal_client(
        deps, lambda r: (calls.append(1), httpx.Response(400, json={"error": "ERROR_ARGUMENT"}))[1]
    )
    with pytest.raises(ArgumentError):
        await pc.call("m1", "imconnector.send.messages", {})
    assert len(calls) == 1  # permanent: no retry


async def test_a_blocked_method_is_not_retried_in_place(deps: Deps) -> None:
    """OPERATION_TIME_LIMIT blocks one method until operating_reset_at: it goes up with that wait at once
    (the event takes the retry topic), and the portal's other methods are not held back."""
    calls: list[str] = []
    reset = time.time() + 300

    def handler(request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        calls.append(method)
        if method == "imconnector.send.messages":
            body = {"error": "OPERATION_TIME_LIMIT", "time": {"operating_reset_at": reset}}
            return httpx.Response(429, json=body)
        return httpx.Response(200, json={"result": "done"})

    pc = portal_client(deps, handler, attempts=3)
    with pytest.raises(MethodBlocked) as info:
        await pc.call("m1", "imconnector.send.messages", {})
    assert info.value.retry_after is not None and 290 < info.value.retry_after <= 300
    assert await pc.call("m1", "crm.contact.list", {}) == "done"
    assert calls == ["imconnector.send.messages", "crm.contact.list"]
    assert pc.pacers.get("m1").paused_for() == 0


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _method(request: httpx.Request) -> str:
    return request.url.path.rsplit("/", 1)[-1]


async def test_a_blocked_method_is_not_asked_again_before_its_reset(deps: Deps) -> None:
    """After one OPERATION_TIME_LIMIT the method is refused here, with the wait left, until the reset: no
    request spends the portal's budget on an answer known in advance. Other methods go on."""
    calls: list[str] = []
    blocked = {"on": True}

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(_method(request))
        if _method(request) == "imconnector.send.messages" and blocked["on"]:
            body = {"error": "OPERATION_TIME_LIMIT", "time": {"operating_reset_at": time.time() + 120}}
            return httpx.Response(429, json=body)
        return httpx.Response(200, json={"result": "done"})

    pc = portal_client(deps, handler)
    pc.blocks = Blocks(clock=(clock := Clock()))
    with pytest.raises(MethodBlocked):
        await pc.call("m1", "imconnector.send.messages", {})
    clock.now += 30
    with pytest.raises(MethodBlocked) as info:
        await pc.call("m1", "imconnector.send.messages", {})
    assert info.value.retry_after is not None and 85 < info.value.retry_after <= 90
    assert await pc.call("m1", "crm.contact.list", {}) == "done"
    assert calls == ["imconnector.send.messages", "crm.contact.list"]
    clock.now += 91  # the reset has passed: asked again
    blocked["on"] = False
    assert await pc.call("m1", "imconnector.send.messages", {}) == "done"
    assert calls[-1] == "imconnector.send.messages" and len(calls) == 3


async def test_a_batch_sends_only_the_commands_of_methods_not_blocked(deps: Deps) -> None:
    """A nested OPERATION_TIME_LIMIT (its wait from result_time) keeps that method out of the next batches
    until the reset; their other commands are sent, and a batch of blocked commands only sends nothing."""
    sent: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cmd = json.loads(request.content)["cmd"]
        sent.append(cmd)
        results, errors, times = {}, {}, {}
        for key, line in cmd.items():
            if line.startswith("imconnector.send.messages?"):
                errors[key] = {"error": "OPERATION_TIME_LIMIT", "error_description": "blocked"}
                times[key] = {"operating_reset_at": time.time() + 60}
            else:
                results[key] = "ok"
        body = {"result": {"result": results, "result_error": errors, "result_time": times}}
        return httpx.Response(200, json=body)

    pc = portal_client(deps, handler)
    send = ("imconnector.send.messages", {"LINE": 1})
    mark = ("imconnector.send.status.delivery", {"LINE": 1})
    first = await pc.batch("m1", {"a": send, "b": mark})
    assert isinstance(first.errors["a"], MethodBlocked) and first.results == {"b": "ok"}
    second = await pc.batch("m1", {"c": send, "d": mark, "e": send})
    assert len(sent) == 2 and list(sent[1]) == ["d"]
    assert second.results == {"d": "ok"} and set(second.errors) == {"c", "e"}
    assert all(
        isinstance(e, MethodBlocked) and 55 < (e.retry_after or 0) <= 60 for e in second.errors.values()
    )
    only_blocked = await pc.batch("m1", {"f": send})
    assert len(sent) == 2 and isinstance(only_blocked.errors["f"], MethodBlocked)


async def test_overload_limit_holds_every_call_to_the_portal(deps: Deps) -> None:
    """OVERLOAD_LIMIT (Bitrix24's manual block of the portal's REST API): one request, not retried in place;
    nothing is asked of that portal for OVERLOAD_WAIT_S, then one request finds out whether it was lifted."""
    calls: list[str] = []
    overloaded = {"on": True}

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(_method(request))
        if overloaded["on"]:
            return httpx.Response(503, json={"error": "OVERLOAD_LIMIT", "error_description": "blocked"})
        return httpx.Response(200, json={"result": "done"})

    pc = portal_client(deps, handler, attempts=3)
    pc.blocks = Blocks(clock=(clock := Clock()))
    with pytest.raises(Overloaded) as info:
        await pc.call("m1", "imconnector.send.messages", {})
    assert calls == ["imconnector.send.messages"]  # no retry in place
    assert info.value.retry_after == OVERLOAD_WAIT_S  # the event's retry is due when we look again
    for method in ("crm.contact.list", "imconnector.send.messages"):
        with pytest.raises(Overloaded):
            await pc.call("m1", method, {})
    refused = await pc.batch("m1", {"a": ("crm.contact.list", {})})
    assert isinstance(refused.errors["a"], Overloaded)
    assert calls == ["imconnector.send.messages"]
    clock.now += OVERLOAD_WAIT_S + 1  # the wait is over: a whole batch is the one that looks again
    with pytest.raises(Overloaded):  # refused again
        await pc.batch("m1", {"a": ("crm.contact.list", {}), "b": ("profile", {})})
    assert calls == ["imconnector.send.messages", "batch"]
    with pytest.raises(Overloaded) as again:  # another full wait
        await pc.call("m1", "profile", {})
    assert again.value.retry_after == OVERLOAD_WAIT_S and len(calls) == 2
    clock.now += OVERLOAD_WAIT_S + 1
    overloaded["on"] = False
    assert await pc.call("m1", "crm.contact.list", {}) == "done"


def test_after_the_overload_wait_one_call_looks_again_while_the_others_wait() -> None:
    blocks = Blocks(clock=(clock := Clock()), overload_wait_s=600)
    assert blocks.note("m1", Overloaded("OVERLOAD_LIMIT", status=503))
    clock.now += 601
    assert blocks.blocked("m1", "crm.contact.list") is None  # this one goes
    waiting = blocks.blocked("m1", "imconnector.send.messages")
    assert isinstance(waiting, Overloaded) and waiting.retry_after == PROBE_S
    assert blocks.blocked("m2", "crm.contact.list") is None  # other portals are not held
    # Refused again: another full wait (and no second "blocked" log line: the same block).
    assert not blocks.note("m1", Overloaded("OVERLOAD_LIMIT", status=503))
    assert (blocks.blocked("m1", "x") or Overloaded("")).retry_after == 600
    clock.now += 601
    assert blocks.blocked("m1", "x") is None
    blocks.lifted("m1")  # it answered
    assert blocks.blocked("m1", "y") is None and len(blocks) == 0


def test_blocks_are_bounded() -> None:
    blocks = Blocks(max_size=3)
    for n in range(5):
        blocks.note(f"m{n}", MethodBlocked("OPERATION_TIME_LIMIT", method="x", retry_after=60))
    assert len(blocks) == 3
    assert blocks.blocked("m0", "x") is None and blocks.blocked("m4", "x") is not None


async def test_pacer_keeps_the_sustained_rate() -> None:
    pacer = PortalPacer(RateSpec(rate=20.0, burst=5))
    started = time.monotonic()
    for _ in range(25):
        await pacer.acquire()
    elapsed = time.monotonic() - started
    # 5 at once, then 20 more at 20/s: about 1 s (never faster than the bucket drains)
    assert 0.9 <= elapsed < 1.6


async def test_background_requests_yield_to_live_ones() -> None:
    """The history import must not queue in front of live traffic at a portal's pacer."""
    pacer = PortalPacer(RateSpec(rate=20.0, burst=4))
    for _ in range(4):  # the bucket is full
        await pacer.acquire()
    order: list[str] = []

    async def take(who: str, background: bool) -> None:
        await pacer.acquire(background=background)
        order.append(who)

    history = asyncio.create_task(take("history", True))  # waiting first
    await asyncio.sleep(0)
    live = asyncio.create_task(take("live", False))
    await asyncio.gather(history, live)
    assert order == ["live", "history"]


async def test_a_background_request_goes_when_nothing_live_waits() -> None:
    pacer = PortalPacer(RateSpec(rate=20.0, burst=1))  # a bucket of one: no reserve, still served
    await pacer.acquire(background=True)
    await pacer.acquire(background=True)


def test_rate_overrides() -> None:
    s = DispatcherSettings(bitrix_portal_rates={"big": "5/50"})
    assert s.rate_for("big") == RateSpec(5.0, 50)
    assert s.rate_for("other") == RateSpec(2.0, 10)
    with pytest.raises(ValueError):
        DispatcherSettings(bitrix_portal_rates={"x": "fast"})


def test_pacers_are_a_bounded_lru() -> None:
    registry = PacerRegistry(DispatcherSettings().rate_for, max_size=3)
    first = registry.get("a")
    for name in ("b", "c", "a", "d", "e"):
        registry.get(name)
    assert len(registry) == 3 and registry.get("a") is first  # "a" was used recently: kept
    assert set(registry._pacers) == {"a", "d", "e"}


def test_a_hostile_retry_after_pauses_a_portal_for_at_most_900_s() -> None:
    now = [100.0]
    pacer = PortalPacer(RateSpec(2, 10), clock=lambda: now[0])
    for hostile in (float("inf"), 1e9, float("nan")):
        assert pacer.slow_down(retry_after=hostile) <= 900.0
    assert pacer.paused_for() <= 900.0


async def test_a_long_paused_portal_sends_its_events_to_the_retry_topic_at_once(deps: Deps) -> None:
    calls: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"result": 1})

    pc = portal_client(deps, answer)
    pc.pacers.get("m1").slow_down(retry_after=600.0)
    with pytest.raises(RateLimitWaitExceeded) as info:
        await pc.call("m1", "imconnector.send.messages", {})
    assert calls == [] and info.value.retry_after is not None and 500 < info.value.retry_after <= 600
