"""The settings page's session: a signed, short-lived token bound to one portal, line and user.

The SETTING_CONNECTOR placement POST is verified once (Bitrix24's OAuth server, an administrator's token:
handler.py). The page it renders carries a session token in each of its forms; every follow-up action
must bring it back. It is a form field, never a cookie, so a page on another site cannot make the
browser send it (CSRF), and Bitrix24's third-party iframe needs no cookie. The token names its portal:
an action can only ever touch that portal's numbers and dead letters.

Format: ``base64url(json claims) "." base64url(HMAC-SHA256(key, claims part))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass

MAX_TOKEN_CHARS = 1024


class BadSession(Exception):
    """Missing, forged, expired or malformed (the caller answers 401 without saying which)."""


@dataclass(frozen=True)
class Session:
    member_id: str
    line: int
    lang: str
    user: str  # the administrator's Bitrix24 user id (audit entries name it)
    expires_at: int
    active: bool = True  # the line's connector state as this page last set it
    origin: str = ""  # the portal's origin: the only page allowed to frame this one (CSP frame-ancestors)
    nonce: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    def __init__(self, secret: str, ttl_s: int) -> None:
        # Outside production an unset secret gets a random key per process (sessions end with the process).
        self.key = (secret or secrets.token_hex(32)).encode()
        self.ttl_s = ttl_s

    def issue(
        self,
        member_id: str,
        line: int,
        lang: str,
        user: str,
        *,
        active: bool = True,
        origin: str = "",
        now: float | None = None,
    ) -> str:
        return self.sign(
            Session(
                member_id=member_id,
                line=line,
                lang=lang,
                user=user,
                expires_at=int((now or time.time()) + self.ttl_s),
                active=active,
                origin=origin,
                nonce=secrets.token_hex(6),
            )
        )

    def sign(self, claims: Session) -> str:
        """The token of these claims (a changed line state keeps the session's expiry: never extended)."""
        body = _b64(json.dumps(asdict(claims), separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())

    def check(self, token: str, now: float | None = None) -> Session:
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise BadSession("malformed")
        body, mac = token.split(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            raise BadSession("bad signature")
        try:
            raw = json.loads(_unb64(body))
            session = Session(**raw)
        except (ValueError, TypeError) as exc:
            raise BadSession("bad claims") from exc
        if not isinstance(session.expires_at, int) or session.expires_at < (now or time.time()):
            raise BadSession("expired")
        if not isinstance(session.member_id, str) or not isinstance(session.line, int):
            raise BadSession("bad claims")
        return session
