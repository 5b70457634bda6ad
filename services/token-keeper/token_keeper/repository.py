"""SQL of the `token_keeper` schema (asyncpg). Every secret is encrypted here, right before it is written.

Functions take a connection: transactions and locks are the caller's (see service.py). Every write of a row
re-encrypts all of that row's secrets under the active key, so `key_id` always names the one key a row
depends on; `rotate-keys` only has to visit rows whose key_id is not the active one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import SecretStr
from zaptrix.database import Database
from zaptrix.settings import DatabaseSettings

from token_keeper.crypto import Field, Keyring

SCHEMA = "token_keeper"
PORTALS = f"{SCHEMA}.portal_config"
CHANNELS = f"{SCHEMA}.channel_credentials"

STATE_ACTIVE = "active"
STATE_NEEDS_REAUTH = "needs_reauth"
STATE_UNINSTALLED = "uninstalled"

_PORTAL_SECRET_COLUMNS = ("client_secret", "access_token", "refresh_token", "application_token")
_CHANNEL_SECRET_COLUMNS = ("access_token", "app_secret", "verify_token")


def database(db: DatabaseSettings, application_name: str) -> Database:
    """token-keeper's pool (server and admin CLI): refuses an unmigrated schema. The refresh transaction
    may wait for a portal's row lock up to oauth_budget_s + 5 s, so the client-side statement backstop
    stays well above the server's statement_timeout."""
    return Database(
        db,
        application_name=application_name,
        command_timeout_s=max(db.statement_timeout_ms / 1000 * 4, 30.0),
        required_table=PORTALS,
        migrate_command="token-keeper-migrate",
    )


def _lock_key(kind: str, ident: str) -> str:
    return f"token_keeper:{kind}:{ident}"


@dataclass(frozen=True, slots=True)
class PortalRow:
    """A portal row as stored. Encrypted columns are kept out of repr."""

    member_id: str
    domain: str
    client_endpoint: str
    server_endpoint: str
    client_id: str
    scope: str
    state: str
    last_error: str
    last_error_at: datetime | None
    access_expires_at: datetime
    refresh_obtained_at: datetime
    last_refresh_at: datetime | None
    last_refresh_failed_at: datetime | None
    refresh_count: int
    key_id: str
    created_at: datetime
    updated_at: datetime
    client_secret_enc: bytes = field(repr=False)
    access_token_enc: bytes | None = field(repr=False)
    refresh_token_enc: bytes = field(repr=False)
    application_token_enc: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class PortalSecrets:
    client_secret: SecretStr
    refresh_token: SecretStr
    access_token: SecretStr | None
    application_token: SecretStr | None


@dataclass(frozen=True, slots=True)
class ChannelRow:
    phone_number_id: str
    waba_id: str
    key_id: str
    created_at: datetime
    updated_at: datetime
    access_token_enc: bytes | None = field(repr=False)
    app_secret_enc: bytes | None = field(repr=False)
    verify_token_enc: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class ChannelSecrets:
    access_token: SecretStr | None
    app_secret: SecretStr | None
    verify_token: SecretStr | None


Encrypted = dict[str, bytes | None]  # column -> ciphertext


def _portal_field(member_id: str, column: str) -> Field:
    return Field("portal_config", column, member_id)


def _channel_field(phone_number_id: str, column: str) -> Field:
    return Field("channel_credentials", column, phone_number_id)


def _secret(value: str | None) -> SecretStr | None:
    return None if value is None else SecretStr(value)


class Repository:
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    # ---- portals -------------------------------------------------------------------------------------------

    async def get_portal(
        self, conn: asyncpg.Connection, member_id: str, *, for_update: bool = False, skip_locked: bool = False
    ) -> PortalRow | None:
        lock = " FOR UPDATE" + (" SKIP LOCKED" if skip_locked else "") if for_update else ""
        row = await conn.fetchrow(f"SELECT * FROM {PORTALS} WHERE member_id = $1{lock}", member_id)  # noqa: S608
        return None if row is None else PortalRow(**dict(row))

    async def portal_ids(self, conn: asyncpg.Connection) -> set[str]:
        rows = await conn.fetch(f"SELECT member_id FROM {PORTALS}")  # noqa: S608
        return {str(r["member_id"]) for r in rows}

    async def list_portals(self, conn: asyncpg.Connection) -> list[PortalRow]:
        rows = await conn.fetch(f"SELECT * FROM {PORTALS} ORDER BY member_id")  # noqa: S608
        return [PortalRow(**dict(r)) for r in rows]

    def portal_secrets(self, row: PortalRow) -> PortalSecrets:
        k, m = self.keyring, row.member_id
        return PortalSecrets(
            client_secret=SecretStr(k.decrypt(row.client_secret_enc, _portal_field(m, "client_secret"))),
            refresh_token=SecretStr(k.decrypt(row.refresh_token_enc, _portal_field(m, "refresh_token"))),
            access_token=_secret(
                None
                if row.access_token_enc is None
                else k.decrypt(row.access_token_enc, _portal_field(m, "access_token"))
            ),
            application_token=_secret(
                None
                if row.application_token_enc is None
                else k.decrypt(row.application_token_enc, _portal_field(m, "application_token"))
            ),
        )

    def access_token(self, row: PortalRow) -> str | None:
        if row.access_token_enc is None:
            return None
        return self.keyring.decrypt(row.access_token_enc, _portal_field(row.member_id, "access_token"))

    def application_token(self, row: PortalRow) -> str | None:
        if row.application_token_enc is None:
            return None
        return self.keyring.decrypt(
            row.application_token_enc, _portal_field(row.member_id, "application_token")
        )

    def _encrypt(self, secrets: object, columns: tuple[str, ...], field: Callable[[str], Field]) -> Encrypted:
        """Each secret column of a row encrypted under the active key (None stays None)."""
        values: dict[str, SecretStr | None] = {column: getattr(secrets, column) for column in columns}
        return {
            column: None if value is None else self.keyring.encrypt(value.get_secret_value(), field(column))
            for column, value in values.items()
        }

    def _encrypt_portal(self, member_id: str, secrets: PortalSecrets) -> Encrypted:
        return self._encrypt(secrets, _PORTAL_SECRET_COLUMNS, lambda column: _portal_field(member_id, column))

    async def lock_portal_ident(self, conn: asyncpg.Connection, member_id: str) -> None:
        """Transaction-scoped lock on the portal's id, held even before its row exists (concurrent installs)."""
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _lock_key("portal", member_id)
        )

    async def write_portal(
        self,
        conn: asyncpg.Connection,
        *,
        member_id: str,
        domain: str,
        client_endpoint: str,
        server_endpoint: str,
        client_id: str,
        scope: str,
        secrets: PortalSecrets,
        access_expires_at: datetime,
        refresh_obtained_at: datetime,
        state: str,
        clear_error: bool,
        now: datetime,
    ) -> PortalRow:
        """Insert or replace a portal's configuration (UpsertPortal / add-portal). Caller holds the ident lock."""
        enc = self._encrypt_portal(member_id, secrets)
        row = await conn.fetchrow(
            f"""
            INSERT INTO {PORTALS} AS p (
                member_id, domain, client_endpoint, server_endpoint, client_id, scope,
                client_secret_enc, access_token_enc, refresh_token_enc, application_token_enc,
                access_expires_at, refresh_obtained_at, state, key_id, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)
            ON CONFLICT (member_id) DO UPDATE SET
                domain = EXCLUDED.domain, client_endpoint = EXCLUDED.client_endpoint,
                server_endpoint = EXCLUDED.server_endpoint, client_id = EXCLUDED.client_id,
                scope = EXCLUDED.scope, client_secret_enc = EXCLUDED.client_secret_enc,
                access_token_enc = EXCLUDED.access_token_enc, refresh_token_enc = EXCLUDED.refresh_token_enc,
                application_token_enc = EXCLUDED.application_token_enc,
                access_expires_at = EXCLUDED.access_expires_at,
                refresh_obtained_at = EXCLUDED.refresh_obtained_at, state = EXCLUDED.state,
                key_id = EXCLUDED.key_id, updated_at = EXCLUDED.updated_at,
                last_error = CASE WHEN $16 THEN '' ELSE p.last_error END,
                last_error_at = CASE WHEN $16 THEN NULL ELSE p.last_error_at END,
                last_refresh_failed_at = CASE WHEN $16 THEN NULL ELSE p.last_refresh_failed_at END
            RETURNING *
            """,  # noqa: S608
            member_id,
            domain,
            client_endpoint,
            server_endpoint,
            client_id,
            scope,
            enc["client_secret"],
            enc["access_token"],
            enc["refresh_token"],
            enc["application_token"],
            access_expires_at,
            refresh_obtained_at,
            state,
            self.keyring.active_id,
            now,
            clear_error,
        )
        assert row is not None
        return PortalRow(**dict(row))

    async def store_refresh(
        self,
        conn: asyncpg.Connection,
        row: PortalRow,
        *,
        secrets: PortalSecrets,
        access_expires_at: datetime,
        client_endpoint: str,
        scope: str,
        now: datetime,
    ) -> PortalRow:
        """Keep the new access AND refresh token of a successful refresh. Caller holds the row lock."""
        enc = self._encrypt_portal(row.member_id, secrets)
        new = await conn.fetchrow(
            f"""
            UPDATE {PORTALS} SET
                client_secret_enc = $2, access_token_enc = $3, refresh_token_enc = $4,
                application_token_enc = $5, access_expires_at = $6, refresh_obtained_at = $7,
                last_refresh_at = $7, refresh_count = refresh_count + 1, client_endpoint = $8, scope = $9,
                state = '{STATE_ACTIVE}', last_error = '', last_error_at = NULL, last_refresh_failed_at = NULL,
                key_id = $10, updated_at = $7
            WHERE member_id = $1
            RETURNING *
            """,  # noqa: S608
            row.member_id,
            enc["client_secret"],
            enc["access_token"],
            enc["refresh_token"],
            enc["application_token"],
            access_expires_at,
            now,
            client_endpoint,
            scope,
            self.keyring.active_id,
        )
        assert new is not None
        return PortalRow(**dict(new))

    async def record_refresh_failure(
        self, conn: asyncpg.Connection, member_id: str, *, error: str, needs_reauth: bool, now: datetime
    ) -> PortalRow | None:
        new = await conn.fetchrow(
            f"""
            UPDATE {PORTALS} SET
                state = CASE WHEN $3 THEN '{STATE_NEEDS_REAUTH}' ELSE state END,
                last_error = $2, last_error_at = $4, last_refresh_failed_at = $4, updated_at = $4
            WHERE member_id = $1
            RETURNING *
            """,  # noqa: S608
            member_id,
            error[:500],
            needs_reauth,
            now,
        )
        return None if new is None else PortalRow(**dict(new))

    async def set_portal_state(
        self, conn: asyncpg.Connection, member_id: str, state: str, *, now: datetime
    ) -> PortalRow | None:
        new = await conn.fetchrow(
            f"UPDATE {PORTALS} SET state = $2, updated_at = $3 WHERE member_id = $1 RETURNING *",  # noqa: S608
            member_id,
            state,
            now,
        )
        return None if new is None else PortalRow(**dict(new))

    async def idle_portals(self, conn: asyncpg.Connection, older_than: datetime) -> list[str]:
        rows = await conn.fetch(
            f"""SELECT member_id FROM {PORTALS}
                WHERE state = '{STATE_ACTIVE}' AND refresh_obtained_at < $1
                ORDER BY refresh_obtained_at""",  # noqa: S608
            older_than,
        )
        return [r["member_id"] for r in rows]

    async def count_portals_by_state(self, conn: asyncpg.Connection) -> dict[str, int]:
        rows = await conn.fetch(f"SELECT state, count(*) AS n FROM {PORTALS} GROUP BY state")  # noqa: S608
        return {r["state"]: r["n"] for r in rows}

    # ---- channels ------------------------------------------------------------------------------------------

    async def lock_channel_ident(self, conn: asyncpg.Connection, phone_number_id: str) -> None:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _lock_key("channel", phone_number_id)
        )

    async def get_channel(
        self, conn: asyncpg.Connection, phone_number_id: str, *, for_update: bool = False
    ) -> ChannelRow | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await conn.fetchrow(
            f"SELECT * FROM {CHANNELS} WHERE phone_number_id = $1{lock}",  # noqa: S608
            phone_number_id,
        )
        return None if row is None else _channel_row(row)

    def channel_secrets(self, row: ChannelRow) -> ChannelSecrets:
        k, p = self.keyring, row.phone_number_id

        def dec(blob: bytes | None, column: str) -> SecretStr | None:
            return None if blob is None else SecretStr(k.decrypt(blob, _channel_field(p, column)))

        return ChannelSecrets(
            access_token=dec(row.access_token_enc, "access_token"),
            app_secret=dec(row.app_secret_enc, "app_secret"),
            verify_token=dec(row.verify_token_enc, "verify_token"),
        )

    async def write_channel(
        self,
        conn: asyncpg.Connection,
        *,
        phone_number_id: str,
        waba_id: str,
        secrets: ChannelSecrets,
        now: datetime,
    ) -> ChannelRow:
        enc = self._encrypt(
            secrets, _CHANNEL_SECRET_COLUMNS, lambda column: _channel_field(phone_number_id, column)
        )
        verify_hash = (
            None
            if secrets.verify_token is None
            else self.keyring.lookup_hash(secrets.verify_token.get_secret_value())
        )
        row = await conn.fetchrow(
            f"""
            INSERT INTO {CHANNELS} (phone_number_id, waba_id, access_token_enc, app_secret_enc,
                verify_token_enc, verify_token_hash, key_id, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
            ON CONFLICT (phone_number_id) DO UPDATE SET
                waba_id = EXCLUDED.waba_id, access_token_enc = EXCLUDED.access_token_enc,
                app_secret_enc = EXCLUDED.app_secret_enc, verify_token_enc = EXCLUDED.verify_token_enc,
                verify_token_hash = EXCLUDED.verify_token_hash, key_id = EXCLUDED.key_id,
                updated_at = EXCLUDED.updated_at
            RETURNING *
            """,  # noqa: S608
            phone_number_id,
            waba_id,
            enc["access_token"],
            enc["app_secret"],
            enc["verify_token"],
            verify_hash,
            self.keyring.active_id,
            now,
        )
        assert row is not None
        return _channel_row(row)

    async def channel_of_waba(self, conn: asyncpg.Connection, waba_id: str) -> ChannelRow | None:
        """The channel of this WhatsApp Business Account with the lowest phone_number_id among those that
        hold an app secret (one answer, the same on every replica): it signs the WABA's own webhooks."""
        row = await conn.fetchrow(
            f"""SELECT * FROM {CHANNELS} WHERE waba_id = $1 AND app_secret_enc IS NOT NULL
                ORDER BY phone_number_id LIMIT 1""",  # noqa: S608
            waba_id,
        )
        return None if row is None else _channel_row(row)

    async def channels_by_verify_hash(
        self, conn: asyncpg.Connection, hashes: list[bytes]
    ) -> list[ChannelRow]:
        rows = await conn.fetch(
            f"SELECT * FROM {CHANNELS} WHERE verify_token_hash = ANY($1::bytea[]) LIMIT 10",  # noqa: S608
            hashes,
        )
        return [_channel_row(r) for r in rows]

    async def list_channels(self, conn: asyncpg.Connection) -> list[ChannelRow]:
        rows = await conn.fetch(f"SELECT * FROM {CHANNELS} ORDER BY phone_number_id")  # noqa: S608
        return [_channel_row(r) for r in rows]

    # ---- key rotation --------------------------------------------------------------------------------------

    async def key_usage(self, conn: asyncpg.Connection) -> dict[str, int]:
        rows = await conn.fetch(
            f"""SELECT key_id, sum(n)::bigint AS n FROM (
                    SELECT key_id, count(*) AS n FROM {PORTALS} GROUP BY key_id
                    UNION ALL SELECT key_id, count(*) AS n FROM {CHANNELS} GROUP BY key_id) u
                GROUP BY key_id ORDER BY key_id"""  # noqa: S608
        )
        return {r["key_id"]: r["n"] for r in rows}

    async def rotate_portal(self, conn: asyncpg.Connection, member_id: str, *, now: datetime) -> bool:
        """Re-encrypt one portal under the active key (own transaction, row lock). False if already there."""
        async with conn.transaction():
            row = await self.get_portal(conn, member_id, for_update=True)
            if row is None or row.key_id == self.keyring.active_id:
                return False
            enc = self._encrypt_portal(member_id, self.portal_secrets(row))
            await conn.execute(
                f"""UPDATE {PORTALS} SET client_secret_enc = $2, access_token_enc = $3, refresh_token_enc = $4,
                        application_token_enc = $5, key_id = $6, updated_at = $7
                    WHERE member_id = $1""",  # noqa: S608
                member_id,
                enc["client_secret"],
                enc["access_token"],
                enc["refresh_token"],
                enc["application_token"],
                self.keyring.active_id,
                now,
            )
            return True

    async def rotate_channel(self, conn: asyncpg.Connection, phone_number_id: str, *, now: datetime) -> bool:
        async with conn.transaction():
            row = await self.get_channel(conn, phone_number_id, for_update=True)
            if row is None or row.key_id == self.keyring.active_id:
                return False
            await self.write_channel(
                conn,
                phone_number_id=phone_number_id,
                waba_id=row.waba_id,
                secrets=self.channel_secrets(row),
                now=now,
            )
            return True

    async def rows_not_under(self, conn: asyncpg.Connection, key_id: str) -> tuple[list[str], list[str]]:
        portals = await conn.fetch(
            f"SELECT member_id FROM {PORTALS} WHERE key_id <> $1 ORDER BY member_id",  # noqa: S608
            key_id,
        )
        channels = await conn.fetch(
            f"SELECT phone_number_id FROM {CHANNELS} WHERE key_id <> $1 ORDER BY phone_number_id",  # noqa: S608
            key_id,
        )
        return [r["member_id"] for r in portals], [r["phone_number_id"] for r in channels]


def _channel_row(row: Any) -> ChannelRow:
    d = dict(row)
    d.pop("verify_token_hash", None)
    return ChannelRow(**d)
