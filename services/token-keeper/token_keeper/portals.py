"""Portals (Bitrix24 installs): create or update one, read them, and the by-state gauges."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import SecretStr
from zaptrix.egress import InsecureUrlError, require_https
from zaptrix.logging import get_logger

from token_keeper import metrics
from token_keeper.context import Context
from token_keeper.errors import InvalidInput, NotFound, decrypted
from token_keeper.model import EPOCH, PortalUpsert, check_ident, nonempty, same_secret
from token_keeper.repository import (
    STATE_ACTIVE,
    STATE_NEEDS_REAUTH,
    STATE_UNINSTALLED,
    PortalRow,
    PortalSecrets,
)

log = get_logger(__name__)


async def update_gauges(ctx: Context) -> None:
    async with ctx.db.connection() as conn:
        counts = await ctx.repo.count_portals_by_state(conn)
    for state in (STATE_ACTIVE, STATE_NEEDS_REAUTH, STATE_UNINSTALLED):
        metrics.PORTALS_BY_STATE.labels(state).set(counts.get(state, 0))
    metrics.PORTALS_NEEDING_REAUTH.set(counts.get(STATE_NEEDS_REAUTH, 0))


class Portals:
    def __init__(self, ctx: Context, stored: Callable[[str], None]) -> None:
        """`stored(member_id)` is called after every write: the caches of the other parts forget the portal."""
        self.ctx = ctx
        self.stored = stored

    def _endpoint(self, url: str, what: str) -> str:
        try:
            require_https(url, self.ctx.settings, what=what)
        except InsecureUrlError as exc:
            raise InvalidInput(str(exc)) from None
        return url

    async def upsert(self, req: PortalUpsert) -> PortalRow:
        member_id = check_ident(req.member_id, "member_id")
        now = self.ctx.clock()
        async with self.ctx.db.connection() as conn, conn.transaction():
            await self.ctx.repo.lock_portal_ident(conn, member_id)
            old = await self.ctx.repo.get_portal(conn, member_id, for_update=True)
            old_secrets = (
                None if old is None else decrypted(lambda: self.ctx.repo.portal_secrets(old), member_id)
            )
            domain = req.domain or (old.domain if old else "")
            client_endpoint = req.client_endpoint or (old.client_endpoint if old else "")
            server_endpoint = req.server_endpoint or (old.server_endpoint if old else "")
            client_id = req.client_id or (old.client_id if old else "")
            client_secret = nonempty(req.client_secret) or (
                old_secrets.client_secret if old_secrets else None
            )
            refresh_token = nonempty(req.refresh_token) or (
                old_secrets.refresh_token if old_secrets else None
            )
            missing = [
                name
                for name, value in (
                    ("domain", domain),
                    ("client_endpoint", client_endpoint),
                    ("client_id", client_id),
                    ("client_secret", client_secret),
                    ("refresh_token", refresh_token),
                )
                if not value
            ]
            if missing:
                raise InvalidInput(f"a new portal needs: {', '.join(missing)}")
            assert client_secret is not None and refresh_token is not None
            self._endpoint(client_endpoint, "client_endpoint")
            if server_endpoint:
                self._endpoint(server_endpoint, "server_endpoint")

            new_access = nonempty(req.access_token)
            if new_access is not None:
                access_token: SecretStr | None = new_access
                # Unknown expiry: treat as expired, the first use refreshes (never serve a dead token).
                access_expires_at = req.access_expires_at or now
            else:
                access_token = old_secrets.access_token if old_secrets else None
                access_expires_at = old.access_expires_at if old else EPOCH
            new_refresh = old_secrets is None or not same_secret(refresh_token, old_secrets.refresh_token)
            new_secret = old_secrets is not None and not same_secret(client_secret, old_secrets.client_secret)
            reauthorised = new_refresh or new_secret
            state = STATE_ACTIVE if (old is None or reauthorised) else old.state
            if old is not None and old.state == STATE_UNINSTALLED and new_refresh:
                state = STATE_ACTIVE
            row = await self.ctx.repo.write_portal(
                conn,
                member_id=member_id,
                domain=domain,
                client_endpoint=client_endpoint,
                server_endpoint=server_endpoint,
                client_id=client_id,
                scope=req.scope or (old.scope if old else ""),
                secrets=PortalSecrets(
                    client_secret=client_secret,
                    refresh_token=refresh_token,
                    access_token=access_token,
                    application_token=nonempty(req.application_token)
                    or (old_secrets.application_token if old_secrets else None),
                ),
                access_expires_at=access_expires_at,
                refresh_obtained_at=now if new_refresh or old is None else old.refresh_obtained_at,
                state=state,
                clear_error=reauthorised,
                now=now,
            )
        self.stored(member_id)
        log.info(
            "portal upserted",
            member_id=member_id,
            domain=domain,
            created=old is None,
            new_refresh=new_refresh,
            state=row.state,
        )
        if old is not None and old.state != row.state:
            await update_gauges(self.ctx)
        return row

    async def get(self, member_id: str) -> PortalRow:
        check_ident(member_id, "member_id")
        async with self.ctx.db.connection() as conn:
            row = await self.ctx.repo.get_portal(conn, member_id)
        if row is None:
            raise NotFound(f"unknown portal {member_id}")
        return row

    async def list_all(self) -> list[PortalRow]:
        async with self.ctx.db.connection() as conn:
            return await self.ctx.repo.list_portals(conn)
