"""Verification of the application_token Bitrix24 puts in every event (the proof an event is genuine)."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from token_keeper.context import Context
from token_keeper.errors import decrypted
from token_keeper.model import IDENT, Timed, matches
from token_keeper.repository import STATE_UNINSTALLED


class ApplicationTokens:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._app_tokens: dict[str, Timed] = {}
        self._known: set[str] = set()  # member_ids of stored portals (L6: no query per unknown id)
        self._known_at = float("-inf")
        self._known_lock = asyncio.Lock()

    def stored(self, member_id: str) -> None:
        """The portal was just written: forget its cached token, know its id."""
        self._app_tokens.pop(member_id, None)
        self._known.add(member_id)

    async def verify(self, member_id: str, token: str) -> tuple[bool, bool]:
        """(valid, known_portal). Constant-time compare; a mismatch re-reads the row at most once a second.

        Portals in `uninstalled` state are refused: Bitrix24 stops sending an uninstalled app's events, so
        one carrying its token is stale or forged (a reinstall makes the portal active again). Portals in
        `needs_reauth` are still accepted: their events are genuine and Bitrix24 never resends one, while
        relaying an operator's reply to WhatsApp needs no Bitrix24 token.

        Unknown member_ids are answered from the set of known ones, which is re-read at most
        once per `unknown_portal_recheck_s`: random member_ids cost no query each."""
        if not IDENT.match(member_id):
            return False, False
        entry = self._app_tokens.get(member_id)
        now = time.monotonic()
        if entry is not None and now - entry.at < self.ctx.settings.app_token_cache_ttl_s:
            cached, state = cast(tuple[object, str], entry.value)
            if state == STATE_UNINSTALLED:
                return False, True
            if matches(cached, token):
                return True, True
            if now - entry.at < 1.0:
                return False, True
        elif entry is None and not await self._maybe_known(member_id):
            return False, False
        async with self.ctx.db.connection() as conn:
            row = await self.ctx.repo.get_portal(conn, member_id)
        if row is None:
            self._app_tokens.pop(member_id, None)
            self._known.discard(member_id)
            return False, False
        stored = decrypted(lambda: self.ctx.repo.application_token(row), member_id)
        self._app_tokens[member_id] = Timed((stored, row.state), time.monotonic())
        self._known.add(member_id)
        if row.state == STATE_UNINSTALLED:
            return False, True
        return matches(stored, token), True

    async def _maybe_known(self, member_id: str) -> bool:
        """Whether `member_id` may be a portal: the in-memory set of known ids, reloaded (one query for
        all) when it is older than unknown_portal_recheck_s, so a portal another replica just stored is
        seen within that time."""
        if member_id in self._known:
            return True
        async with self._known_lock:
            if time.monotonic() - self._known_at >= self.ctx.settings.unknown_portal_recheck_s:
                async with self.ctx.db.connection() as conn:
                    self._known = await self.ctx.repo.portal_ids(conn)
                self._known_at = time.monotonic()
        return member_id in self._known
