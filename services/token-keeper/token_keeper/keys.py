"""Loading the keyring from settings (shared by the server and the admin CLI, without importing gRPC)."""

from __future__ import annotations

from zaptrix.logging import get_logger

from token_keeper.crypto import Keyring, keyring_from_config
from token_keeper.settings import TokenKeeperSettings

log = get_logger(__name__)


def load_keyring(settings: TokenKeeperSettings) -> Keyring:
    raw = settings.token_keeper_keys.get_secret_value() if settings.token_keeper_keys else None
    keyring = keyring_from_config(raw, settings.token_keeper_active_key_id, environment=settings.environment)
    if keyring.is_dev:
        log.warning(
            "!!! USING THE PUBLISHED DEV ENCRYPTION KEY: stored secrets are NOT protected. "
            "Set ZAPTRIX_TOKEN_KEEPER_KEYS (refused in production) !!!",
            environment=settings.environment,
        )
    return keyring
