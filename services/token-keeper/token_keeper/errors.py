"""Token-keeper's errors; the servicer maps each to a status code. Messages are shown to callers: never put a
secret in them. A database outage is zaptrix.database.DatabaseUnavailable (UNAVAILABLE), raised by the pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from zaptrix.database import DatabaseUnavailable
from zaptrix.logging import get_logger

from token_keeper import metrics
from token_keeper.crypto import DecryptError

__all__ = [
    "CredentialsUnreadable",
    "DatabaseUnavailable",
    "InvalidInput",
    "NotFound",
    "PortalUnusable",
    "RefreshUnavailable",
    "TokenKeeperError",
    "decrypted",
]

log = get_logger(__name__)
T = TypeVar("T")


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


class CredentialsUnreadable(TokenKeeperError):
    """Stored secrets cannot be decrypted (key id not configured, tampered row)."""


def decrypted(fn: Callable[[], T], ident: str, table: str = "portal_config") -> T:
    """`fn()` (a repository decryption); a row that cannot be decrypted is counted, logged, and refused."""
    try:
        return fn()
    except DecryptError as exc:
        metrics.DECRYPT_FAILURES.labels(table).inc()
        log.error("stored credentials cannot be decrypted", ident=ident, table=table, reason=str(exc))
        raise CredentialsUnreadable(str(exc)) from None
