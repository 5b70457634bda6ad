"""GetWabaAppSecret on real PostgreSQL: the app secret of one channel of a WhatsApp Business Account (what
verifies the WABA's own webhooks on a meta-ingress pod that never saw that WABA), through the index."""

from __future__ import annotations

import asyncpg
import pytest
from pydantic import SecretStr
from token_keeper.errors import InvalidInput, NotFound
from token_keeper.model import ChannelUpsert
from token_keeper.repository import CHANNELS
from token_keeper.service import TokenService


async def test_the_lowest_channel_of_the_waba_that_holds_an_app_secret_answers(service: TokenService) -> None:
    async def channel(pnid: str, waba: str, app_secret: str | None) -> None:
        await service.upsert_channel(
            ChannelUpsert(
                phone_number_id=pnid,
                waba_id=waba,
                access_token=SecretStr(f"token-{pnid}"),
                app_secret=SecretStr(app_secret) if app_secret else None,
            )
        )

    await channel("1001", "5001", None)  # the lowest id of the WABA cannot sign: skipped
    await channel("1003", "5001", "secret-1003")
    await channel("1002", "5001", "secret-1002")
    await channel("1000", "5002", "secret-other-waba")
    row, secret = await service.waba_app_secret("5001")
    assert (row.phone_number_id, row.waba_id, secret.get_secret_value()) == ("1002", "5001", "secret-1002")
    assert "secret-1002" not in repr(secret)
    # An app secret added to the lowest channel: it answers from now on (no cache in token-keeper).
    await channel("1001", "5001", "secret-1001")
    row, secret = await service.waba_app_secret("5001")
    assert (row.phone_number_id, secret.get_secret_value()) == ("1001", "secret-1001")
    assert (await service.waba_app_secret("5002"))[1].get_secret_value() == "secret-other-waba"


async def test_unknown_or_unsigned_wabas_are_not_found_and_bad_ids_invalid(service: TokenService) -> None:
    await service.upsert_channel(ChannelUpsert(phone_number_id="2001", waba_id="6001"))  # no app secret
    for waba in ("6001", "6002"):
        with pytest.raises(NotFound):
            await service.waba_app_secret(waba)
    for bad in ("", "x" * 129, "12 34", "5001' OR '1'='1"):
        with pytest.raises(InvalidInput):
            await service.waba_app_secret(bad)


async def test_the_lookup_is_an_index_scan(pool: asyncpg.Pool) -> None:
    """An unauthenticated webhook can make meta-ingress ask for any WABA id: never a scan of every channel."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                f"""EXPLAIN SELECT * FROM {CHANNELS} WHERE waba_id = '1' AND app_secret_enc IS NOT NULL
                    ORDER BY phone_number_id LIMIT 1"""
            )
        )
    assert "channel_credentials_waba_idx" in plan, plan
