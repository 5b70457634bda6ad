"""Storage on real PostgreSQL: nothing secret readable in the tables, upsert rules, AAD, key rotation,
application-token and verify-token checks."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta

import asyncpg
import pytest
from pydantic import SecretStr
from tk_support import PORTALS, Sandbox, install_portal, scan_tables_for
from token_keeper.crypto import Keyring
from token_keeper.errors import CredentialsUnreadable, InvalidInput, NotFound
from token_keeper.model import ChannelUpsert, PortalUpsert
from token_keeper.service import TokenService


async def test_nothing_secret_is_readable_in_any_column(
    service: TokenService, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    p = await install_portal(service, sandbox, "tk-portal-1")
    await service.upsert_channel(
        ChannelUpsert(
            phone_number_id="1001",
            waba_id="w1",
            access_token=SecretStr("EAAG-graph-token-abcdef123456"),
            app_secret=SecretStr("meta-app-secret-0123456789"),
            verify_token=SecretStr("verify-token-9876543210"),
        )
    )
    secrets = [
        p["client_secret"],
        p["access_token"],
        p["refresh_token"],
        p["application_token"],
        "EAAG-graph-token-abcdef123456",
        "meta-app-secret-0123456789",
        "verify-token-9876543210",
    ]
    assert await scan_tables_for(pool, secrets) == []
    # ... and yet every one of them is readable through the service.
    tok = await service.get_access_token("tk-portal-1")
    assert tok.access_token.get_secret_value() == p["access_token"]
    _, ch = await service.get_channel("1001")
    assert ch.app_secret is not None and ch.app_secret.get_secret_value() == "meta-app-secret-0123456789"
    assert "meta-app-secret" not in repr(ch) and p["access_token"] not in repr(tok)


async def test_upsert_keeps_stored_secrets_when_fields_are_empty(
    service: TokenService, sandbox: Sandbox
) -> None:
    p = await install_portal(service, sandbox, "tk-portal-1")
    before = await service.get_portal("tk-portal-1")
    # A settings update from the install handler without secrets: everything secret is kept.
    await service.upsert_portal(PortalUpsert(member_id="tk-portal-1", domain="renamed.bitrix24.test"))
    after = await service.get_portal("tk-portal-1")
    secrets = service.repo.portal_secrets(after)
    assert after.domain == "renamed.bitrix24.test"
    assert secrets.client_secret.get_secret_value() == p["client_secret"]
    assert secrets.refresh_token.get_secret_value() == p["refresh_token"]
    assert secrets.application_token is not None
    assert secrets.application_token.get_secret_value() == p["application_token"]
    assert after.refresh_obtained_at == before.refresh_obtained_at  # same refresh token: its age is kept
    assert (await service.verify_application_token("tk-portal-1", p["application_token"])) == (True, True)

    await service.upsert_channel(
        ChannelUpsert("1001", access_token=SecretStr("t1"), app_secret=SecretStr("s1"))
    )
    await service.upsert_channel(ChannelUpsert("1001", waba_id="w9", app_secret=SecretStr("s2")))
    service.channels._channels.clear()
    row, ch = await service.get_channel("1001")
    assert row.waba_id == "w9"
    assert ch.access_token == SecretStr("t1") and ch.app_secret == SecretStr("s2") and ch.verify_token is None


async def test_new_portal_needs_its_credentials_and_https(service: TokenService) -> None:
    with pytest.raises(InvalidInput, match="client_secret, refresh_token"):
        await service.upsert_portal(
            PortalUpsert(member_id="m-new", domain="d", client_endpoint="https://d/rest/", client_id="c")
        )
    prod = service.settings.model_copy(update={"allow_insecure_http": False})
    strict = TokenService(service.db, service.repo, service.oauth, prod)
    with pytest.raises(InvalidInput, match="https"):
        await strict.upsert_portal(
            PortalUpsert(
                member_id="m-new",
                domain="d",
                client_endpoint="http://d/rest/",
                client_id="c",
                client_secret=SecretStr("x"),
                refresh_token=SecretStr("y"),
            )
        )
    with pytest.raises(InvalidInput):
        await service.get_access_token("bad member id; drop table")
    with pytest.raises(NotFound):
        await service.get_access_token("unknown-member")


async def test_ciphertext_copied_to_another_row_does_not_decrypt(
    service: TokenService, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    await install_portal(service, sandbox, "tk-portal-1")
    await install_portal(service, sandbox, "tk-portal-2")
    async with pool.acquire() as conn:
        await conn.execute(
            """UPDATE token_keeper.portal_config SET access_token_enc =
                 (SELECT access_token_enc FROM token_keeper.portal_config WHERE member_id = 'tk-portal-1')
               WHERE member_id = 'tk-portal-2'"""
        )
    with pytest.raises(CredentialsUnreadable, match="failed authentication") as err:
        await service.get_access_token("tk-portal-2")
    assert (await sandbox.portal("tk-portal-1"))["access_token"] not in str(err.value)
    assert (await service.get_access_token("tk-portal-1")).access_token  # the original row is untouched


async def test_key_rotation_old_rows_readable_rotate_then_old_key_removed(
    make_service: Callable[..., TokenService], sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    svc1 = make_service(keys=Keyring({"k1": k1}, "k1"))
    p = await install_portal(svc1, sandbox, "tk-portal-1")
    await svc1.upsert_channel(
        ChannelUpsert("1001", verify_token=SecretStr("vt-rotate"), app_secret=SecretStr("as"))
    )

    # Deploy k2 as the active key, k1 still configured: old rows read, new writes use k2.
    ring12 = Keyring({"k1": k1, "k2": k2}, "k2")
    svc12 = make_service(keys=ring12)
    assert (await svc12.get_access_token("tk-portal-1")).access_token.get_secret_value() == p["access_token"]
    assert await svc12.check_verify_token("vt-rotate")  # hash under k1 still found
    await install_portal(svc12, sandbox, "tk-portal-2")
    async with pool.acquire() as conn:
        usage = await svc12.repo.key_usage(conn)
    assert usage == {"k1": 2, "k2": 1}

    # rotate-keys: every row re-encrypted under k2 (row lock each), lookup hash recomputed.
    async with pool.acquire() as conn:
        portals, channels = await svc12.repo.rows_not_under(conn, "k2")
        assert (portals, channels) == (["tk-portal-1"], ["1001"])
        for m in portals:
            assert await svc12.repo.rotate_portal(conn, m, now=svc12.clock())
        for c in channels:
            assert await svc12.repo.rotate_channel(conn, c, now=svc12.clock())
        assert await svc12.repo.key_usage(conn) == {"k2": 3}
        blobs = await conn.fetch(
            "SELECT client_secret_enc, refresh_token_enc FROM token_keeper.portal_config"
        )
    assert {Keyring.key_id_of(b) for r in blobs for b in r} == {"k2"}

    # k1 removed: everything still readable.
    svc2 = make_service(keys=Keyring({"k2": k2}, "k2"))
    row = await svc2.get_portal("tk-portal-1")
    assert svc2.repo.portal_secrets(row).client_secret.get_secret_value() == p["client_secret"]
    assert await svc2.check_verify_token("vt-rotate")
    _, ch = await svc2.get_channel("1001")
    assert ch.app_secret == SecretStr("as")


async def test_verify_application_token(service: TokenService, sandbox: Sandbox) -> None:
    p = await install_portal(service, sandbox, "tk-portal-1")
    assert await service.verify_application_token("tk-portal-1", p["application_token"]) == (True, True)
    assert await service.verify_application_token("tk-portal-1", p["application_token"] + "x") == (
        False,
        True,
    )
    assert await service.verify_application_token("tk-portal-1", "") == (False, True)
    assert await service.verify_application_token("unknown-portal", p["application_token"]) == (False, False)
    # Reinstall with a new application token: the cache of this process is invalidated.
    await service.upsert_portal(
        PortalUpsert(member_id="tk-portal-1", application_token=SecretStr("new-app-token"))
    )
    assert await service.verify_application_token("tk-portal-1", "new-app-token") == (True, True)
    assert await service.verify_application_token("tk-portal-1", p["application_token"]) == (False, True)


async def test_check_verify_token(service: TokenService) -> None:
    await service.upsert_channel(ChannelUpsert("1001", verify_token=SecretStr("shared-verify")))
    await service.upsert_channel(ChannelUpsert("1002", verify_token=SecretStr("shared-verify")))
    await service.upsert_channel(ChannelUpsert("1003", verify_token=SecretStr("other-verify")))
    assert await service.check_verify_token("shared-verify")
    assert await service.check_verify_token("other-verify")
    assert not await service.check_verify_token("shared-verifx")
    assert not await service.check_verify_token("")
    await service.upsert_channel(ChannelUpsert("1003", verify_token=SecretStr("changed")))
    assert not await service.check_verify_token("other-verify")
    assert await service.check_verify_token("changed")


async def test_access_token_without_expiry_counts_as_expired(service: TokenService, sandbox: Sandbox) -> None:
    spec = PORTALS[2]
    live = await sandbox.portal(spec["member_id"])
    await service.upsert_portal(
        PortalUpsert(
            member_id=spec["member_id"],
            domain=spec["domain"],
            client_endpoint=live["client_endpoint"],
            client_id=spec["client_id"],
            client_secret=SecretStr(spec["client_secret"]),
            refresh_token=SecretStr(live["refresh_token"]),
            access_token=SecretStr(live["access_token"]),
        )
    )
    row = await service.get_portal(spec["member_id"])
    assert row.access_expires_at <= service.clock() + timedelta(seconds=1)


async def test_random_member_ids_cost_no_query_each(
    make_service: Callable[..., TokenService], sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """L6: unknown member_ids are answered from the set of known portals, not one SELECT each."""
    service = make_service(unknown_portal_recheck_s=3600.0)
    p = await install_portal(service, sandbox, "tk-portal-1")
    reads: list[str] = []
    real = service.repo.get_portal

    async def counting(conn: asyncpg.Connection, member_id: str, **kw: bool) -> object:
        reads.append(member_id)
        return await real(conn, member_id, **kw)

    monkeypatch.setattr(service.repo, "get_portal", counting)
    for i in range(50):
        assert await service.verify_application_token(f"random-{i}", "x") == (False, False)
    assert reads == []
    service.app_tokens._app_tokens.clear()
    assert await service.verify_application_token("tk-portal-1", p["application_token"]) == (True, True)
    assert reads == ["tk-portal-1"]


async def test_a_portal_stored_by_another_replica_is_seen_after_the_recheck(
    make_service: Callable[..., TokenService], sandbox: Sandbox
) -> None:
    reader = make_service(unknown_portal_recheck_s=0.0)
    assert await reader.verify_application_token("tk-portal-1", "x") == (False, False)
    p = await install_portal(make_service(), sandbox, "tk-portal-1")
    assert await reader.verify_application_token("tk-portal-1", p["application_token"]) == (True, True)


async def test_events_of_an_uninstalled_portal_are_refused(
    service: TokenService, sandbox: Sandbox, pool: asyncpg.Pool
) -> None:
    """L6: Bitrix24 sends no events for an uninstalled app; needs_reauth portals' events are genuine."""
    from datetime import UTC, datetime

    p = await install_portal(service, sandbox, "tk-portal-1")
    async with pool.acquire() as conn:
        await service.repo.set_portal_state(conn, "tk-portal-1", "needs_reauth", now=datetime.now(UTC))
    service.app_tokens._app_tokens.clear()  # as after app_token_cache_ttl_s
    assert await service.verify_application_token("tk-portal-1", p["application_token"]) == (True, True)
    async with pool.acquire() as conn:
        await service.repo.set_portal_state(conn, "tk-portal-1", "uninstalled", now=datetime.now(UTC))
    service.app_tokens._app_tokens.clear()
    assert await service.verify_application_token("tk-portal-1", p["application_token"]) == (False, True)
