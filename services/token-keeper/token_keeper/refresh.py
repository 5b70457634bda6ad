"""Access tokens of the portals: the cache, when to refresh, the cross-replica lock, the idle sweep.

Refresh discipline (docs/token-keeper.md):
- A portal is refreshed only inside a transaction holding its row lock (SELECT … FOR UPDATE), so at most one
  refresh per portal runs across every replica. After the lock is granted the row is read again: if another
  replica refreshed meanwhile, its token is returned and Bitrix24 is not called.
- Within one process, concurrent callers share one refresh task (single flight) so a burst costs one pool
  connection. The task is shielded from the callers' cancellation (a gRPC deadline): once Bitrix24 has been
  asked, the new refresh token is always stored — abandoning it would lose the portal (refresh tokens rotate).
- The lock is bounded: the OAuth call and its retries fit in oauth_budget_s; lock_timeout, statement_timeout and
  idle_in_transaction_session_timeout of the transaction are set just above it, so a stuck or dead holder
  cannot keep a portal locked, and waiters give up instead of queueing forever.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg
from pydantic import SecretStr
from zaptrix.logging import get_logger

from token_keeper import metrics
from token_keeper.context import Context
from token_keeper.errors import (
    DatabaseUnavailable,
    NotFound,
    PortalUnusable,
    RefreshUnavailable,
    TokenKeeperError,
    decrypted,
)
from token_keeper.model import IssuedToken, check_ident, same_secret
from token_keeper.oauth import BitrixOAuthClient, NeedsReauth, OAuthError, OAuthRejected, OAuthUnavailable
from token_keeper.portals import update_gauges
from token_keeper.repository import (
    STATE_ACTIVE,
    STATE_NEEDS_REAUTH,
    STATE_UNINSTALLED,
    PortalRow,
    PortalSecrets,
)

log = get_logger(__name__)


class AccessTokens:
    def __init__(self, ctx: Context, oauth: BitrixOAuthClient) -> None:
        self.ctx = ctx
        self.oauth = oauth
        self.margin = timedelta(seconds=ctx.settings.refresh_margin_s)
        self._tokens: dict[str, IssuedToken] = {}
        self._inflight: dict[str, asyncio.Task[IssuedToken]] = {}
        self._lock_budget_ms = int((ctx.settings.oauth_budget_s + 5.0) * 1000)

    def forget(self, member_id: str) -> None:
        """Drop the cached token (the portal's credentials changed)."""
        self._tokens.pop(member_id, None)

    def _fresh(self, row: PortalRow, now: datetime) -> bool:
        return row.access_token_enc is not None and row.access_expires_at - now >= self.margin

    def _cached(self, member_id: str) -> IssuedToken | None:
        tok = self._tokens.get(member_id)
        if tok is not None and tok.expires_at - self.ctx.clock() >= self.margin:
            return tok
        return None

    def _issue(self, row: PortalRow) -> IssuedToken:
        token = decrypted(lambda: self.ctx.repo.access_token(row), row.member_id)
        if token is None:  # only when a caller decided no refresh is needed (idle sweep racing an upsert)
            raise RefreshUnavailable(f"portal {row.member_id} has no access token stored yet; retry")
        issued = IssuedToken(row.member_id, SecretStr(token), row.access_expires_at, row.client_endpoint)
        if row.access_expires_at - self.ctx.clock() >= self.margin:
            self._tokens[row.member_id] = issued
        return issued

    @staticmethod
    def _check_usable(row: PortalRow) -> None:
        if row.state == STATE_NEEDS_REAUTH:
            raise PortalUnusable(
                f"portal {row.member_id} needs re-authorisation: Bitrix24 refused its refresh token "
                f"({row.last_error or 'invalid_grant'}). Reinstall/reopen the app on the portal or run "
                "`zaptrix-admin portals add` with a new refresh token (`zaptrix-admin tokens reauth`)"
            )
        if row.state == STATE_UNINSTALLED:
            raise PortalUnusable(f"portal {row.member_id} is uninstalled")

    async def get_access_token(self, member_id: str) -> IssuedToken:
        cached = self._cached(member_id)
        if cached is not None:
            metrics.TOKEN_CACHE.labels("hit").inc()
            return cached
        metrics.TOKEN_CACHE.labels("miss").inc()
        check_ident(member_id, "member_id")
        async with self.ctx.db.connection() as conn:
            row = await self.ctx.repo.get_portal(conn, member_id)
        if row is None:
            raise NotFound(f"unknown portal {member_id}")
        self._check_usable(row)
        if self._fresh(row, self.ctx.clock()):
            return self._issue(row)
        return await self._refresh_shared(member_id, "on_use", lambda r, now: not self._fresh(r, now))

    async def report_token_rejected(self, member_id: str, rejected: str, error: str) -> IssuedToken:
        check_ident(member_id, "member_id")
        self._tokens.pop(member_id, None)
        rejected_s = SecretStr(rejected)
        async with self.ctx.db.connection() as conn:
            row = await self.ctx.repo.get_portal(conn, member_id)
        if row is None:
            raise NotFound(f"unknown portal {member_id}")
        self._check_usable(row)

        def needs_refresh(r: PortalRow, now: datetime) -> bool:
            stored = decrypted(lambda: self.ctx.repo.access_token(r), member_id)
            return (
                not self._fresh(r, now)
                or not rejected
                or stored is None
                or hmac.compare_digest(stored.encode(), rejected.encode())
            )

        if not needs_refresh(row, self.ctx.clock()):
            log.info("rejected token already replaced", member_id=member_id, error=error[:64])
            return self._issue(row)
        issued = await self._refresh_shared(member_id, "rejected", needs_refresh)
        if rejected and same_secret(issued.access_token, rejected_s):
            # We joined a refresh started before this report that ended without refreshing: refresh for it now.
            issued = await self._refresh_shared(member_id, "rejected", needs_refresh)
        return issued

    async def force_refresh(self, member_id: str) -> IssuedToken:
        """Operator-triggered refresh (zaptrix-admin tokens refresh / portals add --verify), same lock discipline."""
        check_ident(member_id, "member_id")
        self._tokens.pop(member_id, None)
        return await self._refresh_shared(member_id, "admin", lambda _r, _now: True)

    async def _refresh_shared(
        self, member_id: str, trigger: str, should_refresh: Callable[[PortalRow, datetime], bool]
    ) -> IssuedToken:
        """Single flight per portal in this process; the task survives its callers' cancellation."""
        task = self._inflight.get(member_id)
        if task is None:
            task = asyncio.create_task(self._refresh_locked(member_id, trigger, should_refresh))
            self._inflight[member_id] = task
            task.add_done_callback(lambda t: self._flight_done(member_id, t))
        return await asyncio.shield(task)

    def _flight_done(self, member_id: str, task: asyncio.Task[IssuedToken]) -> None:
        if self._inflight.get(member_id) is task:
            del self._inflight[member_id]
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have gone (deadline) before it ended

    async def drain(self, within_s: float) -> None:
        """On shutdown: let refreshes that already asked Bitrix24 store their answer."""
        tasks = list(self._inflight.values())
        if tasks:
            await asyncio.wait(tasks, timeout=within_s)

    async def _refresh_locked(
        self, member_id: str, trigger: str, should_refresh: Callable[[PortalRow, datetime], bool]
    ) -> IssuedToken:
        started = time.monotonic()
        failure: TokenKeeperError | None = None
        issued: IssuedToken | None = None
        async with self.ctx.db.connection() as conn:
            try:
                async with conn.transaction():
                    budget = self._lock_budget_ms
                    await conn.execute(
                        f"SET LOCAL lock_timeout = {budget}; SET LOCAL statement_timeout = {budget}; "
                        f"SET LOCAL idle_in_transaction_session_timeout = {budget}"
                    )
                    row = await self.ctx.repo.get_portal(conn, member_id, for_update=True)
                    if row is None:
                        raise NotFound(f"unknown portal {member_id}")
                    self._check_usable(row)
                    now = self.ctx.clock()
                    if not should_refresh(row, now):
                        log.debug("refreshed meanwhile by another caller", member_id=member_id)
                        return self._issue(row)
                    issued, failure = await self._do_refresh(conn, row, trigger, now)
            except (asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError):
                metrics.REFRESHES.labels(trigger, "lock_timeout").inc()
                raise RefreshUnavailable(
                    f"portal {member_id} is being refreshed by another replica for too long; retry"
                ) from None
            finally:
                metrics.REFRESH_SECONDS.observe(time.monotonic() - started)
        if failure is not None:
            if isinstance(failure, PortalUnusable):
                await update_gauges(self.ctx)
            if issued is None:
                raise failure
            log.warning(
                "refresh not possible now; serving the stored token while it lasts",
                member_id=member_id,
                expires_at=issued.expires_at.isoformat(),
                reason=str(failure),
            )
        assert issued is not None
        return issued

    async def _do_refresh(
        self, conn: asyncpg.Connection, row: PortalRow, trigger: str, now: datetime
    ) -> tuple[IssuedToken | None, TokenKeeperError | None]:
        """Inside the locked transaction. Returns (token, None) or (fallback-or-None, error) — errors are
        returned, not raised, so that the failure is committed with the transaction."""
        s = self.ctx.settings
        member_id = row.member_id
        if trigger == "rejected" and row.last_refresh_at is not None:
            since = (now - row.last_refresh_at).total_seconds()
            if since < s.forced_refresh_min_interval_s:
                metrics.REFRESHES.labels(trigger, "throttled").inc()
                return None, RefreshUnavailable(
                    f"portal {member_id}: Bitrix24 rejected a token obtained {since:.0f}s ago; not refreshing "
                    f"more often than every {s.forced_refresh_min_interval_s:.0f}s"
                )
        if row.last_refresh_failed_at is not None:
            since = (now - row.last_refresh_failed_at).total_seconds()
            if since < s.refresh_failure_cooldown_s:
                metrics.REFRESHES.labels(trigger, "cooldown").inc()
                return self._fallback(row, now, trigger), RefreshUnavailable(
                    f"portal {member_id}: last refresh failed {since:.0f}s ago ({row.last_error}); "
                    f"next attempt in {s.refresh_failure_cooldown_s - since:.0f}s"
                )
        secrets = decrypted(lambda: self.ctx.repo.portal_secrets(row), member_id)
        try:
            grant = await self.oauth.refresh(
                client_id=row.client_id,
                client_secret=secrets.client_secret,
                refresh_token=secrets.refresh_token,
            )
        except NeedsReauth as exc:
            await self.ctx.repo.record_refresh_failure(
                conn, member_id, error=_describe(exc), needs_reauth=True, now=self.ctx.clock()
            )
            metrics.REFRESHES.labels(trigger, exc.code).inc()
            log.error(
                "Bitrix24 refused the refresh token for good: portal needs re-authorisation",
                member_id=member_id,
                domain=row.domain,
                oauth_error=exc.code,
                description=exc.description,
                trigger=trigger,
            )
            self._tokens.pop(member_id, None)
            return None, PortalUnusable(
                f"portal {member_id} needs re-authorisation: Bitrix24 refused the refresh token "
                f"({_describe(exc)}). Reinstall/reopen the app on the portal or run "
                "`zaptrix-admin portals add` with a new refresh token (`zaptrix-admin tokens reauth`)"
            )
        except (OAuthUnavailable, OAuthRejected) as exc:
            await self.ctx.repo.record_refresh_failure(
                conn, member_id, error=_describe(exc), needs_reauth=False, now=self.ctx.clock()
            )
            outcome = "unavailable" if isinstance(exc, OAuthUnavailable) else "rejected"
            metrics.REFRESHES.labels(trigger, outcome).inc()
            log.warning(
                "refresh failed",
                member_id=member_id,
                oauth_error=exc.code,
                description=exc.description,
                trigger=trigger,
            )
            return self._fallback(row, now, trigger), RefreshUnavailable(
                f"portal {member_id}: refresh failed ({_describe(exc)}); retry later"
            )
        except OAuthError as exc:  # pragma: no cover - every subclass is handled above
            return None, RefreshUnavailable(f"portal {member_id}: refresh failed ({exc.code})")

        if grant.member_id and grant.member_id != member_id:
            log.warning("OAuth answer names another member_id", member_id=member_id, answered=grant.member_id)
        new_secrets = PortalSecrets(
            client_secret=secrets.client_secret,
            refresh_token=grant.refresh_token,
            access_token=grant.access_token,
            application_token=secrets.application_token,
        )
        stored = await self.ctx.repo.store_refresh(
            conn,
            row,
            secrets=new_secrets,
            access_expires_at=grant.expires_at,
            client_endpoint=grant.client_endpoint or row.client_endpoint,
            scope=grant.scope or row.scope,
            now=self.ctx.clock(),
        )
        metrics.REFRESHES.labels(trigger, "ok").inc()
        log.info(
            "access token refreshed",
            member_id=member_id,
            trigger=trigger,
            refresh_count=stored.refresh_count,
            expires_at=stored.access_expires_at.isoformat(),
        )
        issued = IssuedToken(member_id, grant.access_token, stored.access_expires_at, stored.client_endpoint)
        self._tokens[member_id] = issued
        return issued, None

    def _fallback(self, row: PortalRow, now: datetime, trigger: str) -> IssuedToken | None:
        """When a refresh cannot happen, a stored token that has not expired yet is better than nothing
        (not for ReportTokenRejected: Bitrix24 just refused that token)."""
        if trigger == "rejected":
            return None
        if row.access_token_enc is not None and row.access_expires_at - now > timedelta(seconds=30):
            return self._issue(row)
        return None

    async def refresh_idle_portals(self) -> int:
        """Refresh portals whose refresh token nears the end of its 180-day life; returns how many were due."""
        threshold = self.ctx.clock() - timedelta(days=self.ctx.settings.idle_refresh_after_days)
        async with self.ctx.db.connection() as conn:
            due = await self.ctx.repo.idle_portals(conn, threshold)
        for member_id in due:
            try:
                await self._refresh_shared(
                    member_id,
                    "idle",
                    lambda r, _now: r.state == STATE_ACTIVE and r.refresh_obtained_at < threshold,
                )
            except (TokenKeeperError, DatabaseUnavailable) as exc:
                log.warning("idle refresh failed", member_id=member_id, reason=str(exc))
        return len(due)


def _describe(exc: OAuthError) -> str:
    return f"{exc.code}: {exc.description}" if exc.description else exc.code
