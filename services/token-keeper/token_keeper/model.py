"""Values that cross token-keeper's layers (requests to the service, tokens it issues) and their checks."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import SecretStr

from token_keeper.errors import InvalidInput

IDENT = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


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
class Timed:
    value: object
    at: float


def nonempty(value: SecretStr | None) -> SecretStr | None:
    return value if value is not None and value.get_secret_value() else None


def same_secret(a: SecretStr | None, b: SecretStr | None) -> bool:
    if a is None or b is None:
        return a is b
    return hmac.compare_digest(a.get_secret_value().encode(), b.get_secret_value().encode())


def matches(stored: object, given: str) -> bool:
    """Constant-time: a stored secret equals a non-empty given one."""
    if not isinstance(stored, str) or not stored or not given:
        return False
    return hmac.compare_digest(stored.encode(), given.encode())


def check_ident(value: str, what: str) -> str:
    if not IDENT.match(value):
        raise InvalidInput(f"{what} must be 1-128 characters of [A-Za-z0-9._:-]")
    return value
