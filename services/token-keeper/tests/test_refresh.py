"""Refresh rules against the real sandbox OAuth endpoint and real PostgreSQL (in-process services).

The two-process case (real `token-keeper-server` subprocesses) is in test_server_replicas_and_start_up.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from tk_support import PORTALS, Sandbox, find_secrets_in, install_portal
from token_keeper.errors import PortalUnusable, RefreshUnavailable
from token_keeper.model import PortalUpsert
from token_keeper.service import TokenService
from zaptrix_testing.ports import free_port


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def oauth_calls(outcome: str) -> float:
    return sample(
        "zaptrix_external_api_calls_total", platform="bitrix24_oauth", method="refresh_token", outcome=outcome
    )


async def stored_refresh_token(service: TokenService, member_id: str) -> str:
    row = await service.get_portal(member_id)
    return service.repo.portal_secrets(row).refresh_token.get_secret_value()


def forwarding_client(
    sandbox: Sandbox, before: Callable[[int], Awaitable[httpx.Response | None]]
) -> httpx.AsyncClient:
    """An httpx client whose transport calls `before(n)` for the n-th request: a response is returned as is,
    None forwards the request to the real sandbox."""
    upstream = httpx.AsyncClient()
    count = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        early = await before(count)
        if early is not None:
            return early
        r = await upstream.get(str(request.url))
        return httpx.Response(r.status_code, content=r.content, headers={"content-type": "application/json"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_fresh_token_is_served_without_refresh_then_from_cache(
    service: TokenService, sandbox: Sandbox
) -> None:
    p = await install_portal(service, sandbox, "tk-portal-1", expires_in_s=3600)
    hits = sample("zaptrix_token_cache_total", result="hit")
    for _ in range(5):
        tok = await service.get_access_token("tk-portal-1")
        assert tok.access_token.get_secret_value() == p["access_token"]
        assert tok.client_endpoint == p["client_endpoint"]
    assert await sandbox.refresh_count("tk-portal-1") == 0
    assert sample("zaptrix_token_cache_total", result="hit") - hits == 4  # first call read the row


async def test_token_with_less_than_margin_left_is_refreshed_once(
    service: TokenService, sandbox: Sandbox
) -> None:
    p = await install_portal(service, sandbox, "tk-portal-1", expires_in_s=120)  # < 5 min
    before = await service.get_portal("tk-portal-1")
    tok = await service.get_access_token("tk-portal-1")
    live = await sandbox.portal("tk-portal-1")
    assert tok.access_token.get_secret_value() == live["access_token"] != p["access_token"]
    assert tok.expires_at - service.clock() > timedelta(minutes=55)
    assert await sandbox.refresh_count("tk-portal-1") == 1
    # The rotated refresh token was kept (the old one is now dead at Bitrix24).
    assert await stored_refresh_token(service, "tk-portal-1") == live["refresh_token"] != p["refresh_token"]
    after = await service.get_portal("tk-portal-1")
    assert after.refresh_count == 1 and after.last_refresh_at is not None
    assert after.refresh_obtained_at > before.refresh_obtained_at
    for _ in range(3):
        assert (await service.get_access_token("tk-portal-1")).access_token == tok.access_token
    assert await sandbox.refresh_count("tk-portal-1") == 1


async def test_many_callers_on_two_replicas_cause_one_refresh(
    make_service: Callable[..., TokenService], sandbox: Sandbox
) -> None:
    a, b = make_service(), make_service()
    await install_portal(a, sandbox, "tk-portal-2", expires_in_s=30)
    results = await asyncio.gather(*(svc.get_access_token("tk-portal-2") for svc in [a, b] * 25))
    live = await sandbox.portal("tk-portal-2")
    assert {r.access_token.get_secret_value() for r in results} == {live["access_token"]}
    assert await sandbox.refresh_count("tk-portal-2") == 1


async def test_report_rejected_refreshes_unless_someone_already_did(
    make_service: Callable[..., TokenService], sandbox: Sandbox
) -> None:
    a, b = make_service(), make_service()
    p = await install_portal(a, sandbox, "tk-portal-3", expires_in_s=3600)
    stale = (await b.get_access_token("tk-portal-3")).access_token.get_secret_value()  # b caches it
    assert stale == p["access_token"]

    fresh = await a.report_token_rejected("tk-portal-3", stale, "expired_token")
    assert fresh.access_token.get_secret_value() != stale
    assert await sandbox.refresh_count("tk-portal-3") == 1

    # Replica b still hands out its cached token; Bitrix24 rejects it; b finds the stored one differs.
    assert (await b.get_access_token("tk-portal-3")).access_token.get_secret_value() == stale
    again = await b.report_token_rejected("tk-portal-3", stale, "expired_token")
    assert again.access_token == fresh.access_token
    assert (await b.get_access_token("tk-portal-3")).access_token == fresh.access_token
    assert await sandbox.refresh_count("tk-portal-3") == 1

    # The brand-new token "rejected" right away: not refreshed again within the minimum interval.
    with pytest.raises(RefreshUnavailable, match="not refreshing more often"):
        await b.report_token_rejected("tk-portal-3", fresh.access_token.get_secret_value(), "invalid_token")
    assert await sandbox.refresh_count("tk-portal-3") == 1


async def test_invalid_grant_marks_portal_needs_reauth_without_retrying(
    service: TokenService, sandbox: Sandbox
) -> None:
    await install_portal(service, sandbox, "tk-portal-4", expires_in_s=60)
    await sandbox.expire_refresh_token("tk-portal-4")
    grants = oauth_calls("invalid_grant")
    metric = sample("zaptrix_token_refreshes_total", trigger="on_use", outcome="invalid_grant")

    for _ in range(5):
        with pytest.raises(PortalUnusable, match="needs re-authorisation") as err:
            await service.get_access_token("tk-portal-4")
    assert "invalid_grant" in str(err.value) and "zaptrix-admin portals add" in str(err.value)
    with pytest.raises(PortalUnusable):
        await service.report_token_rejected("tk-portal-4", "whatever", "expired_token")
    assert oauth_calls("invalid_grant") - grants == 1  # one call to Bitrix24, then no retry loop
    assert sample("zaptrix_token_refreshes_total", trigger="on_use", outcome="invalid_grant") - metric == 1
    assert sample("zaptrix_token_portals_needing_reauth") == 1
    row = await service.get_portal("tk-portal-4")
    assert row.state == "needs_reauth" and row.last_error.startswith("invalid_grant")

    # Operator fix: the app is reinstalled (new tokens arrive through UpsertPortal) -> active again.
    await sandbox.reset()
    await install_portal(service, sandbox, "tk-portal-4", expires_in_s=60)
    row = await service.get_portal("tk-portal-4")
    assert row.state == "active" and row.last_error == ""
    tok = await service.get_access_token("tk-portal-4")
    assert tok.access_token.get_secret_value() == (await sandbox.portal("tk-portal-4"))["access_token"]
    await service.update_gauges()
    assert sample("zaptrix_token_portals_needing_reauth") == 0


async def test_unreachable_oauth_retries_bounded_then_serves_stored_token_while_it_lasts(
    make_service: Callable[..., TokenService], sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    svc = make_service(
        oauth_url=f"http://127.0.0.1:{free_port()}/oauth/token/",
        oauth_attempts=3,
        bitrix_oauth_timeout_s=0.5,
        oauth_budget_s=3.0,
        refresh_failure_cooldown_s=60,
    )
    p = await install_portal(svc, sandbox, "tk-portal-5", expires_in_s=120)
    errors = oauth_calls("connection_error")
    tok = await svc.get_access_token("tk-portal-5")  # refresh fails; 2 minutes left: still served
    assert tok.access_token.get_secret_value() == p["access_token"]
    assert oauth_calls("connection_error") - errors == 3  # oauth_attempts, with backoff
    row = await svc.get_portal("tk-portal-5")
    assert row.state == "active" and row.last_error.startswith("connection_error")
    assert row.last_refresh_failed_at is not None

    await svc.get_access_token("tk-portal-5")  # within the cooldown: no new attempt
    assert oauth_calls("connection_error") - errors == 3

    async with pool.acquire() as conn:  # almost expired: nothing left to serve
        await conn.execute(
            "UPDATE token_keeper.portal_config SET access_expires_at = now() + interval '10 seconds'"
        )
    svc.tokens._tokens.clear()
    with pytest.raises(RefreshUnavailable, match="last refresh failed"):
        await svc.get_access_token("tk-portal-5")
    assert await sandbox.refresh_count("tk-portal-5") == 0


async def test_5xx_is_retried_then_succeeds(
    make_service: Callable[..., TokenService], sandbox: Sandbox
) -> None:
    async def fail_twice(n: int) -> httpx.Response | None:
        return httpx.Response(503, json={"error": "SERVICE_UNAVAILABLE"}) if n <= 2 else None

    svc = make_service(http=forwarding_client(sandbox, fail_twice), oauth_attempts=3)
    await install_portal(svc, sandbox, "tk-portal-6", expires_in_s=60)
    before = oauth_calls("http_503")
    tok = await svc.get_access_token("tk-portal-6")
    assert oauth_calls("http_503") - before == 2
    assert tok.access_token.get_secret_value() == (await sandbox.portal("tk-portal-6"))["access_token"]
    assert await sandbox.refresh_count("tk-portal-6") == 1


async def test_cancelled_caller_does_not_lose_the_rotated_refresh_token(
    make_service: Callable[..., TokenService], sandbox: Sandbox
) -> None:
    async def slow(n: int) -> None:
        await asyncio.sleep(0.5)  # Bitrix24 takes its time; the caller's deadline fires meanwhile

    svc = make_service(http=forwarding_client(sandbox, slow))
    await install_portal(svc, sandbox, "tk-portal-7", expires_in_s=60)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(svc.get_access_token("tk-portal-7"), timeout=0.1)
    await svc.drain(within_s=5)
    live = await sandbox.portal("tk-portal-7")
    assert await sandbox.refresh_count("tk-portal-7") == 1
    assert await stored_refresh_token(svc, "tk-portal-7") == live["refresh_token"]
    tok = await svc.get_access_token("tk-portal-7")
    assert tok.access_token.get_secret_value() == live["access_token"]
    assert await sandbox.refresh_count("tk-portal-7") == 1


async def test_idle_portals_refresh_only_near_the_end_of_the_refresh_token_life(
    service: TokenService, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    for m in ("tk-portal-1", "tk-portal-2", "tk-portal-3"):
        await install_portal(service, sandbox, m, expires_in_s=3600)
    async with pool.acquire() as conn:
        await conn.execute(
            """UPDATE token_keeper.portal_config SET refresh_obtained_at = now() - CASE member_id
                   WHEN 'tk-portal-1' THEN interval '151 days'
                   WHEN 'tk-portal-2' THEN interval '149 days'
                   ELSE interval '1 day' END"""
        )
    assert service.settings.idle_refresh_after_days == 150
    assert await service.refresh_idle_portals() == 1
    assert [await sandbox.refresh_count(m) for m in ("tk-portal-1", "tk-portal-2", "tk-portal-3")] == [
        1,
        0,
        0,
    ]
    row = await service.get_portal("tk-portal-1")
    assert service.clock() - row.refresh_obtained_at < timedelta(minutes=1)
    assert await service.refresh_idle_portals() == 0  # never more often
    assert await sandbox.refresh_count("tk-portal-1") == 1


async def test_reauth_through_upsert_of_a_new_client_secret_or_refresh_token(
    service: TokenService, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    await install_portal(service, sandbox, "tk-portal-8", expires_in_s=60)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE token_keeper.portal_config SET state = 'needs_reauth', last_error = 'x'")
    # An update without new credentials does not re-activate it.
    await service.upsert_portal(PortalUpsert(member_id="tk-portal-8", scope="imopenlines"))
    assert (await service.get_portal("tk-portal-8")).state == "needs_reauth"
    with pytest.raises(PortalUnusable):
        await service.get_access_token("tk-portal-8")
    # A corrected client secret (after invalid_client) re-activates it; the refresh then works.
    await service.upsert_portal(
        PortalUpsert(member_id="tk-portal-8", client_secret=SecretStr(PORTALS[7]["client_secret"] + "-new"))
    )
    row = await service.get_portal("tk-portal-8")
    assert row.state == "active" and row.last_error == ""


async def test_no_secret_in_spans_or_logs(
    make_service: Callable[..., TokenService], sandbox: Sandbox, capfd: pytest.CaptureFixture[str]
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from zaptrix.logging import configure_logging
    from zaptrix.telemetry import setup_telemetry

    exporter = InMemorySpanExporter()
    provider = setup_telemetry("token-keeper-test", exporter=exporter)
    configure_logging("token-keeper-test", "DEBUG")
    svc = make_service()
    p = await install_portal(svc, sandbox, "tk-portal-1", expires_in_s=60)
    await svc.get_access_token("tk-portal-1")
    provider.force_flush()
    live = await sandbox.portal("tk-portal-1")
    secrets = [
        p["client_secret"],
        p["refresh_token"],
        p["access_token"],
        live["access_token"],
        live["refresh_token"],
    ]
    spans = exporter.get_finished_spans()
    oauth_spans = [s for s in spans if s.name.endswith("oauth/token")]
    assert oauth_spans, [s.name for s in spans]
    assert oauth_spans[0].attributes is not None
    assert oauth_spans[0].attributes["url.full"] == f"{sandbox.url}/oauth/token/"
    dumped = "\n".join(s.to_json() for s in spans)
    assert find_secrets_in(dumped, secrets) == []
    out, err = capfd.readouterr()
    assert "access token refreshed" in out
    assert find_secrets_in(out + err, secrets) == []
