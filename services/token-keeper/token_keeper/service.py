"""Token-keeper's rules, independent of gRPC: one TokenService over its concerns, each in its own module.

- refresh.py: access tokens (cache, the cross-replica refresh lock, single flight, the idle sweep);
- portals.py: portal upserts and reads, the by-state gauges;
- app_tokens.py: verification of Bitrix24's application_token;
- channels.py: WhatsApp channels' credentials.

servicer.py (the gRPC face) and admin.py (the operator CLI) call this; the SQL is repository.py's and the
pool zaptrix.database's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import datetime

from pydantic import SecretStr
from zaptrix.database import Database
from zaptrix.logging import get_logger

from token_keeper.app_tokens import ApplicationTokens
from token_keeper.channels import Channels
from token_keeper.context import Context
from token_keeper.model import ChannelUpsert, IssuedToken, PortalUpsert, utcnow
from token_keeper.oauth import BitrixOAuthClient
from token_keeper.portals import Portals, update_gauges
from token_keeper.refresh import AccessTokens
from token_keeper.repository import ChannelRow, ChannelSecrets, PortalRow, Repository
from token_keeper.settings import TokenKeeperSettings

log = get_logger(__name__)


class TokenService:
    def __init__(
        self,
        db: Database,
        repo: Repository,
        oauth: BitrixOAuthClient,
        settings: TokenKeeperSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.repo = repo
        self.oauth = oauth
        self.settings = settings
        self.clock = clock
        self.ctx = Context(db, repo, settings, clock)
        self.tokens = AccessTokens(self.ctx, oauth)
        self.app_tokens = ApplicationTokens(self.ctx)
        self.portals = Portals(self.ctx, self._stored)
        self.channels = Channels(self.ctx)

    def _stored(self, member_id: str) -> None:
        """A portal was written: forget its cached access and application tokens."""
        self.tokens.forget(member_id)
        self.app_tokens.stored(member_id)

    # ---- access tokens -----------------------------------------------------------------------------------------

    async def get_access_token(self, member_id: str) -> IssuedToken:
        return await self.tokens.get_access_token(member_id)

    async def report_token_rejected(self, member_id: str, rejected: str, error: str) -> IssuedToken:
        return await self.tokens.report_token_rejected(member_id, rejected, error)

    async def force_refresh(self, member_id: str) -> IssuedToken:
        return await self.tokens.force_refresh(member_id)

    async def refresh_idle_portals(self) -> int:
        return await self.tokens.refresh_idle_portals()

    async def drain(self, within_s: float) -> None:
        await self.tokens.drain(within_s)

    # ---- portals -----------------------------------------------------------------------------------------------

    async def upsert_portal(self, req: PortalUpsert) -> PortalRow:
        return await self.portals.upsert(req)

    async def get_portal(self, member_id: str) -> PortalRow:
        return await self.portals.get(member_id)

    async def list_portals(self) -> list[PortalRow]:
        return await self.portals.list_all()

    async def verify_application_token(self, member_id: str, token: str) -> tuple[bool, bool]:
        return await self.app_tokens.verify(member_id, token)

    # ---- channels ----------------------------------------------------------------------------------------------

    async def upsert_channel(self, req: ChannelUpsert) -> ChannelRow:
        return await self.channels.upsert(req)

    async def get_channel(self, phone_number_id: str) -> tuple[ChannelRow, ChannelSecrets]:
        return await self.channels.get(phone_number_id)

    async def waba_app_secret(self, waba_id: str) -> tuple[ChannelRow, SecretStr]:
        return await self.channels.waba_app_secret(waba_id)

    async def check_verify_token(self, verify_token: str) -> bool:
        return await self.channels.check_verify_token(verify_token)

    # ---- background --------------------------------------------------------------------------------------------

    async def update_gauges(self) -> None:
        await update_gauges(self.ctx)

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
