"""Token-keeper's rules, independent of gRPC: when to refresh, the cross-replica lock, caches, upserts.

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
import contextlib
import hmac
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar, cast

import asyncpg
from pydantic import SecretStr
from zaptrix.egress import InsecureUrlError, require_https
from zaptrix.logging import get_logger
from zaptrix.ttlcache import TtlCache

from token_keeper import metrics
from token_keeper.crypto import DecryptError
from token_keeper.oauth import BitrixOAuthClient, NeedsReauth, OAuthError, OAuthRejected, OAuthUnavailable
from token_keeper.repository import (
    STATE_ACTIVE,
    STATE_NEEDS_REAUTH,
    STATE_UNINSTALLED,
    ChannelRow,
    ChannelSecrets,
    PortalRow,
    PortalSecrets,
    Repository,
)
from token_keeper.settings import TokenKeeperSettings

log = get_logger(__name__)

_IDENT = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---- errors (messages are shown to callers: never put a secret in them) ----------------------------------------


class TokenKeeperError(Exception):
    pass


class NotFound(TokenKeeperError):
    pass


class InvalidInput(TokenKeeperError):
    pass


class PortalUnusable(TokenKeeperError):
    """The portal needs re-authorisation or is uninstalled: retrying cannot help (FAILED_PRECONDITION)."""


class RefreshUnavailable(TokenKeeperError):
    """A refresh could not be done now (Bitrix24 unreachable, lock busy, cooldown): retry later (UNAVAILABLE)."""


class DatabaseUnavailable(TokenKeeperError):
    """No database connection could be had (down, refusing connections, pool exhausted): retry (UNAVAILABLE)."""


class CredentialsUnreadable(TokenKeeperError):
    """Stored secrets cannot be decrypted (key id not configured, tampered row)."""


# ---- values ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedToken:
    member_id: str
    access_token: SecretStr
    expires_at: datetime
    client_endpoint: str


@dataclass(frozen=True, slots=True)
class PortalUpsert:
    member_id: str
    domain: str = ""
    client_endpoint: str = ""
    server_endpoint: str = ""
    client_id: str = ""
    client_secret: SecretStr | None = None
    access_token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    access_expires_at: datetime | None = None
    application_token: SecretStr | None = None
    scope: str = ""


@dataclass(frozen=True, slots=True)
class ChannelUpsert:
    phone_number_id: str
    waba_id: str = ""
    access_token: SecretStr | None = None
    app_secret: SecretStr | None = None
    verify_token: SecretStr | None = None


@dataclass(slots=True)
class _Timed:
    value: object
    at: float


def _nonempty(value: SecretStr | None) -> SecretStr | None:
    return value if value is not None and value.get_secret_value() else None


def _same(a: SecretStr | None, b: SecretStr | None) -> bool:
    if a is None or b is None:
        return a is b
    return hmac.compare_digest(a.get_secret_value().encode(), b.get_secret_value().encode())


def check_ident(value: str, what: str) -> str:
    if not _IDENT.match(value):
        raise InvalidInput(f"{what} must be 1-128 characters of [A-Za-z0-9._:-]")
    return value


class TokenService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        repo: Repository,
        oauth: BitrixOAuthClient,
        settings: TokenKeeperSettings,
        *,
        acquire_timeout_s: float = 2.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.pool = pool
        self.acquire_timeout_s = acquire_timeout_s
        self.repo = repo
        self.oauth = oauth
        self.settings = settings
        self.clock = clock
        self.margin = timedelta(seconds=settings.refresh_margin_s)
        self._tokens: dict[str, IssuedToken] = {}
        self._app_tokens: dict[str, _Timed] = {}
        self._known: set[str] = set()  # member_ids of stored portals (L6: no query per unknown id)
        self._known_at = float("-inf")
        self._known_lock = asyncio.Lock()
        self._channels: TtlCache[str, tuple[ChannelRow, ChannelSecrets]] = TtlCache(
            100_000, settings.channel_cache_ttl_s
        )
        self._inflight: dict[str, asyncio.Task[IssuedToken]] = {}
        self._lock_budget_ms = int((settings.oauth_budget_s + 5.0) * 1000)

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; failing to get one is DatabaseUnavailable whatever the driver raised."""
        try:
            conn = await self.pool.acquire(timeout=self.acquire_timeout_s)
        except Exception as exc:
            raise DatabaseUnavailable(
                f"token-keeper's database is unavailable ({type(exc).__name__}); retry"
            ) from None
        try:
            yield conn
        finally:
            await self.pool.release(conn)

    # ---- access tokens -----------------------------------------------------------------------------------------

    def _fresh(self, row: PortalRow, now: datetime) -> bool:
        return row.access_token_enc is not None and row.access_expires_at - now >= self.margin

    def _cached(self, member_id: str) -> IssuedToken | None:
        tok = self._tokens.get(member_id)
        if tok is not None and tok.expires_at - self.clock() >= self.margin:
            return tok
        return None

    def _issue(self, row: PortalRow) -> IssuedToken:
        token = self._decrypt(lambda: self.repo.access_token(row), row.member_id)
        if token is None:  # only when a caller decided no refresh is needed (idle sweep racing an upsert)
            raise RefreshUnavailable(f"portal {row.member_id} has no access token stored yet; retry")
        issued = IssuedToken(row.member_id, SecretStr(token), row.access_expires_at, row.client_endpoint)
        if row.access_expires_at - self.clock() >= self.margin:
            self._tokens[row.member_id] = issued
        return issued

    def _decrypt(self, fn: Callable[[], T], ident: str, table: str = "portal_config") -> T:
        try:
            return fn()
        except DecryptError as exc:
            metrics.DECRYPT_FAILURES.labels(table).inc()
            log.error("stored credentials cannot be decrypted", ident=ident, table=table, reason=str(exc))
            raise CredentialsUnreadable(str(exc)) from None

    @staticmethod
    def _check_usable(row: PortalRow) -> None:
        if row.state == STATE_NEEDS_REAUTH:
            raise PortalUnusable(
                f"portal {row.member_id} needs re-authorisation: Bitrix24 refused its refresh token "
                f"({row.last_error or 'invalid_grant'}). Reinstall/reopen the app on the portal or run "
                "`token-keeper-admin add-portal` with a new refresh token"
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
        async with self._conn() as conn:
            row = await self.repo.get_portal(conn, member_id)
        if row is None:
            raise NotFound(f"unknown portal {member_id}")
        self._check_usable(row)
        if self._fresh(row, self.clock()):
            return self._issue(row)
        return await self._refresh_shared(member_id, "on_use", lambda r, now: not self._fresh(r, now))

    async def report_token_rejected(self, member_id: str, rejected: str, error: str) -> IssuedToken:
        check_ident(member_id, "member_id")
        self._tokens.pop(member_id, None)
        rejected_s = SecretStr(rejected)
        async with self._conn() as conn:
            row = await self.repo.get_portal(conn, member_id)
        if row is None:
            raise NotFound(f"unknown portal {member_id}")
        self._check_usable(row)

        def needs_refresh(r: PortalRow, now: datetime) -> bool:
            stored = self._decrypt(lambda: self.repo.access_token(r), member_id)
            return (
                not self._fresh(r, now)
                or not rejected
                or stored is None
                or hmac.compare_digest(stored.encode(), rejected.encode())
            )

        if not needs_refresh(row, self.clock()):
            log.info("rejected token already replaced", member_id=member_id, error=error[:64])
            return self._issue(row)
        issued = await self._refresh_shared(member_id, "rejected", needs_refresh)
        if rejected and _same(issued.access_token, rejected_s):
            # We joined a refresh started before this report that ended without refreshing: refresh for it now.
            issued = await self._refresh_shared(member_id, "rejected", needs_refresh)
        return issued

    async def force_refresh(self, member_id: str) -> IssuedToken:
        """Operator-triggered refresh (token-keeper-admin refresh / add-portal --verify), same lock discipline."""
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
        async with self._conn() as conn:
            try:
                async with conn.transaction():
                    budget = self._lock_budget_ms
                    await conn.execute(
                        f"SET LOCAL lock_timeout = {budget}; SET LOCAL statement_timeout = {budget}; "
                        f"SET LOCAL idle_in_transaction_session_timeout = {budget}"
                    )
                    row = await self.repo.get_portal(conn, member_id, for_update=True)
                    if row is None:
                        raise NotFound(f"unknown portal {member_id}")
                    self._check_usable(row)
                    now = self.clock()
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
                await self.update_gauges()
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
        s = self.settings
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
        secrets = self._decrypt(lambda: self.repo.portal_secrets(row), member_id)
        try:
            grant = await self.oauth.refresh(
                client_id=row.client_id,
                client_secret=secrets.client_secret,
                refresh_token=secrets.refresh_token,
            )
        except NeedsReauth as exc:
            await self.repo.record_refresh_failure(
                conn, member_id, error=_describe(exc), needs_reauth=True, now=self.clock()
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
                "`token-keeper-admin add-portal` with a new refresh token"
            )
        except (OAuthUnavailable, OAuthRejected) as exc:
            await self.repo.record_refresh_failure(
                conn, member_id, error=_describe(exc), needs_reauth=False, now=self.clock()
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
        stored = await self.repo.store_refresh(
            conn,
            row,
            secrets=new_secrets,
            access_expires_at=grant.expires_at,
            client_endpoint=grant.client_endpoint or row.client_endpoint,
            scope=grant.scope or row.scope,
            now=self.clock(),
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
        threshold = self.clock() - timedelta(days=self.settings.idle_refresh_after_days)
        async with self._conn() as conn:
            due = await self.repo.idle_portals(conn, threshold)
        for member_id in due:
            try:
                await self._refresh_shared(
                    member_id,
                    "idle",
                    lambda r, _now: r.state == STATE_ACTIVE and r.refresh_obtained_at < threshold,
                )
            except TokenKeeperError as exc:
                log.warning("idle refresh failed", member_id=member_id, reason=str(exc))
        return len(due)

    # ---- portals -----------------------------------------------------------------------------------------------

    def _endpoint(self, url: str, what: str) -> str:
        try:
            require_https(url, self.settings, what=what)
        except InsecureUrlError as exc:
            raise InvalidInput(str(exc)) from None
        return url

    async def upsert_portal(self, req: PortalUpsert) -> PortalRow:
        member_id = check_ident(req.member_id, "member_id")
        now = self.clock()
        async with self._conn() as conn, conn.transaction():
            await self.repo.lock_portal_ident(conn, member_id)
            old = await self.repo.get_portal(conn, member_id, for_update=True)
            old_secrets = (
                None if old is None else self._decrypt(lambda: self.repo.portal_secrets(old), member_id)
            )
            domain = req.domain or (old.domain if old else "")
            client_endpoint = req.client_endpoint or (old.client_endpoint if old else "")
            server_endpoint = req.server_endpoint or (old.server_endpoint if old else "")
            client_id = req.client_id or (old.client_id if old else "")
            client_secret = _nonempty(req.client_secret) or (
                old_secrets.client_secret if old_secrets else None
            )
            refresh_token = _nonempty(req.refresh_token) or (
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

            new_access = _nonempty(req.access_token)
            if new_access is not None:
                access_token: SecretStr | None = new_access
                # Unknown expiry: treat as expired, the first use refreshes (never serve a dead token).
                access_expires_at = req.access_expires_at or now
            else:
                access_token = old_secrets.access_token if old_secrets else None
                access_expires_at = old.access_expires_at if old else EPOCH
            new_refresh = old_secrets is None or not _same(refresh_token, old_secrets.refresh_token)
            new_secret = old_secrets is not None and not _same(client_secret, old_secrets.client_secret)
            reauthorised = new_refresh or new_secret
            state = STATE_ACTIVE if (old is None or reauthorised) else old.state
            if old is not None and old.state == STATE_UNINSTALLED and new_refresh:
                state = STATE_ACTIVE
            row = await self.repo.write_portal(
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
                    application_token=_nonempty(req.application_token)
                    or (old_secrets.application_token if old_secrets else None),
                ),
                access_expires_at=access_expires_at,
                refresh_obtained_at=now if new_refresh or old is None else old.refresh_obtained_at,
                state=state,
                clear_error=reauthorised,
                now=now,
            )
        self._tokens.pop(member_id, None)
        self._app_tokens.pop(member_id, None)
        self._known.add(member_id)
        log.info(
            "portal upserted",
            member_id=member_id,
            domain=domain,
            created=old is None,
            new_refresh=new_refresh,
            state=row.state,
        )
        if old is not None and old.state != row.state:
            await self.update_gauges()
        return row

    async def get_portal(self, member_id: str) -> PortalRow:
        check_ident(member_id, "member_id")
        async with self._conn() as conn:
            row = await self.repo.get_portal(conn, member_id)
        if row is None:
            raise NotFound(f"unknown portal {member_id}")
        return row

    async def list_portals(self) -> list[PortalRow]:
        async with self._conn() as conn:
            return await self.repo.list_portals(conn)

    async def verify_application_token(self, member_id: str, token: str) -> tuple[bool, bool]:
        """(valid, known_portal). Constant-time compare; a mismatch re-reads the row at most once a second.

        Portals in `uninstalled` state are refused: Bitrix24 stops sending an uninstalled app's events, so
        one carrying its token is stale or forged (a reinstall makes the portal active again). Portals in
        `needs_reauth` are still accepted: their events are genuine and Bitrix24 never resends one, while
        relaying an operator's reply to WhatsApp needs no Bitrix24 token.

        Unknown member_ids are answered from the set of known ones (review L6), which is re-read at most
        once per `unknown_portal_recheck_s`: random member_ids cost no query each."""
        if not _IDENT.match(member_id):
            return False, False
        entry = self._app_tokens.get(member_id)
        now = time.monotonic()
        if entry is not None and now - entry.at < self.settings.app_token_cache_s:
            cached, state = cast(tuple[object, str], entry.value)
            if state == STATE_UNINSTALLED:
                return False, True
            if _compare(cached, token):
                return True, True
            if now - entry.at < 1.0:
                return False, True
        elif entry is None and not await self._maybe_known(member_id):
            return False, False
        async with self._conn() as conn:
            row = await self.repo.get_portal(conn, member_id)
        if row is None:
            self._app_tokens.pop(member_id, None)
            self._known.discard(member_id)
            return False, False
        stored = self._decrypt(lambda: self.repo.application_token(row), member_id)
        self._app_tokens[member_id] = _Timed((stored, row.state), time.monotonic())
        self._known.add(member_id)
        if row.state == STATE_UNINSTALLED:
            return False, True
        return _compare(stored, token), True

    async def _maybe_known(self, member_id: str) -> bool:
        """Whether `member_id` may be a portal: the in-memory set of known ids, reloaded (one query for
        all) when it is older than unknown_portal_recheck_s, so a portal another replica just stored is
        seen within that time."""
        if member_id in self._known:
            return True
        async with self._known_lock:
            if time.monotonic() - self._known_at >= self.settings.unknown_portal_recheck_s:
                async with self._conn() as conn:
                    self._known = await self.repo.portal_ids(conn)
                self._known_at = time.monotonic()
        return member_id in self._known

    # ---- channels ----------------------------------------------------------------------------------------------

    async def upsert_channel(self, req: ChannelUpsert) -> ChannelRow:
        pid = check_ident(req.phone_number_id, "phone_number_id")
        async with self._conn() as conn, conn.transaction():
            await self.repo.lock_channel_ident(conn, pid)
            old = await self.repo.get_channel(conn, pid, for_update=True)
            old_s = (
                None
                if old is None
                else self._decrypt(lambda: self.repo.channel_secrets(old), pid, "channel_credentials")
            )
            row = await self.repo.write_channel(
                conn,
                phone_number_id=pid,
                waba_id=req.waba_id or (old.waba_id if old else ""),
                secrets=ChannelSecrets(
                    access_token=_nonempty(req.access_token) or (old_s.access_token if old_s else None),
                    app_secret=_nonempty(req.app_secret) or (old_s.app_secret if old_s else None),
                    verify_token=_nonempty(req.verify_token) or (old_s.verify_token if old_s else None),
                ),
                now=self.clock(),
            )
        self._channels.invalidate(pid)
        log.info("channel credentials upserted", phone_number_id=pid, created=old is None)
        return row

    async def get_channel(self, phone_number_id: str) -> tuple[ChannelRow, ChannelSecrets]:
        """Cached for channel_cache_ttl_s: Meta's webhooks need the app secret on every request."""
        pid = check_ident(phone_number_id, "phone_number_id")
        cached = self._channels.get(pid)
        if cached is not None:
            return cached
        async with self._conn() as conn:
            row = await self.repo.get_channel(conn, pid)
        if row is None:
            raise NotFound(f"unknown channel {pid}")
        value = (row, self._decrypt(lambda: self.repo.channel_secrets(row), pid, "channel_credentials"))
        self._channels.put(pid, value)
        return value

    async def check_verify_token(self, verify_token: str) -> bool:
        if not verify_token:
            return False
        async with self._conn() as conn:
            rows = await self.repo.channels_by_verify_hash(
                conn, self.repo.keyring.lookup_hashes(verify_token)
            )
        for row in rows:  # the hash found it; confirm against the decrypted value (defence in depth)
            secrets = self._channel_secrets(row)
            if secrets.verify_token is not None and _compare(
                secrets.verify_token.get_secret_value(), verify_token
            ):
                return True
        return False

    def _channel_secrets(self, row: ChannelRow) -> ChannelSecrets:
        return self._decrypt(
            lambda: self.repo.channel_secrets(row), row.phone_number_id, "channel_credentials"
        )

    # ---- background --------------------------------------------------------------------------------------------

    async def update_gauges(self) -> None:
        async with self._conn() as conn:
            counts = await self.repo.count_portals_by_state(conn)
        for state in (STATE_ACTIVE, STATE_NEEDS_REAUTH, STATE_UNINSTALLED):
            metrics.PORTALS_BY_STATE.labels(state).set(counts.get(state, 0))
        metrics.PORTALS_NEEDING_REAUTH.set(counts.get(STATE_NEEDS_REAUTH, 0))

    async def run_background(self, stop: asyncio.Event) -> None:
        """Gauges every gauge_interval_s; the idle sweep every idle_check_interval_s (jittered, first one soon)."""
        s = self.settings
        next_idle = time.monotonic() + random.uniform(5.0, 60.0)
        while not stop.is_set():
            try:
                await self.update_gauges()
                if time.monotonic() >= next_idle:
                    due = await self.refresh_idle_portals()
                    log.info("idle portal sweep done", due=due)
                    next_idle = time.monotonic() + s.idle_check_interval_s * random.uniform(0.9, 1.1)
            except Exception as exc:
                log.warning("background task failed", error_type=type(exc).__name__, error=str(exc)[:200])
            try:
                await asyncio.wait_for(stop.wait(), timeout=s.gauge_interval_s)
            except TimeoutError:
                pass


def _compare(stored: object, given: str) -> bool:
    if not isinstance(stored, str) or not stored or not given:
        return False
    return hmac.compare_digest(stored.encode(), given.encode())


def _describe(exc: OAuthError) -> str:
    return f"{exc.code}: {exc.description}" if exc.description else exc.code
