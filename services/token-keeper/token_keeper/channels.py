"""WhatsApp channels' credentials: upsert, the cached read Meta's webhooks need, the verify-token check."""

from __future__ import annotations

from pydantic import SecretStr
from zaptrix.logging import get_logger
from zaptrix.ttlcache import TtlCache

from token_keeper.context import Context
from token_keeper.errors import NotFound, decrypted
from token_keeper.model import ChannelUpsert, check_ident, matches, nonempty
from token_keeper.repository import ChannelRow, ChannelSecrets

log = get_logger(__name__)


class Channels:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._channels: TtlCache[str, tuple[ChannelRow, ChannelSecrets]] = TtlCache(
            100_000, ctx.settings.channel_cache_ttl_s
        )

    async def upsert(self, req: ChannelUpsert) -> ChannelRow:
        pid = check_ident(req.phone_number_id, "phone_number_id")
        async with self.ctx.db.connection() as conn, conn.transaction():
            await self.ctx.repo.lock_channel_ident(conn, pid)
            old = await self.ctx.repo.get_channel(conn, pid, for_update=True)
            old_s = (
                None
                if old is None
                else decrypted(lambda: self.ctx.repo.channel_secrets(old), pid, "channel_credentials")
            )
            row = await self.ctx.repo.write_channel(
                conn,
                phone_number_id=pid,
                waba_id=req.waba_id or (old.waba_id if old else ""),
                secrets=ChannelSecrets(
                    access_token=nonempty(req.access_token) or (old_s.access_token if old_s else None),
                    app_secret=nonempty(req.app_secret) or (old_s.app_secret if old_s else None),
                    verify_token=nonempty(req.verify_token) or (old_s.verify_token if old_s else None),
                ),
                now=self.ctx.clock(),
            )
        self._channels.invalidate(pid)
        log.info("channel credentials upserted", phone_number_id=pid, created=old is None)
        return row

    async def get(self, phone_number_id: str) -> tuple[ChannelRow, ChannelSecrets]:
        """Cached for channel_cache_ttl_s: Meta's webhooks need the app secret on every request."""
        pid = check_ident(phone_number_id, "phone_number_id")
        cached = self._channels.get(pid)
        if cached is not None:
            return cached
        async with self.ctx.db.connection() as conn:
            row = await self.ctx.repo.get_channel(conn, pid)
        if row is None:
            raise NotFound(f"unknown channel {pid}")
        value = (row, decrypted(lambda: self.ctx.repo.channel_secrets(row), pid, "channel_credentials"))
        self._channels.put(pid, value)
        return value

    async def waba_app_secret(self, waba_id: str) -> tuple[ChannelRow, SecretStr]:
        """The app secret of one channel of the WABA (repository.channel_of_waba). Not cached here: meta-ingress
        caches the answer, and it is asked only for a WABA that none of its cached channels belongs to."""
        wid = check_ident(waba_id, "waba_id")
        async with self.ctx.db.connection() as conn:
            row = await self.ctx.repo.channel_of_waba(conn, wid)
        secret = None if row is None else self._channel_secrets(row).app_secret
        if row is None or secret is None:
            raise NotFound(f"no channel with an app secret in WABA {wid}")
        return row, secret

    async def check_verify_token(self, verify_token: str) -> bool:
        if not verify_token:
            return False
        async with self.ctx.db.connection() as conn:
            rows = await self.ctx.repo.channels_by_verify_hash(
                conn, self.ctx.repo.keyring.lookup_hashes(verify_token)
            )
        for row in rows:  # the hash found it; confirm against the decrypted value (defence in depth)
            secrets = self._channel_secrets(row)
            if secrets.verify_token is not None and matches(
                secrets.verify_token.get_secret_value(), verify_token
            ):
                return True
        return False

    def _channel_secrets(self, row: ChannelRow) -> ChannelSecrets:
        return decrypted(
            lambda: self.ctx.repo.channel_secrets(row), row.phone_number_id, "channel_credentials"
        )
