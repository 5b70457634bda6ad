"""Meta's webhook signature: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``.

The digest is computed over the exact bytes received (never a re-serialization: Meta escapes non-ASCII
as \\uXXXX, json.dumps would not reproduce it) and compared in constant time (whatsapp.md A1).
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(secret: str | bytes, body: bytes) -> str:
    """The header value Meta would send for this body."""
    key = secret.encode() if isinstance(secret, str) else secret
    return PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def parse_header(value: str | None) -> bytes | None:
    """The lowercase hex digest of a header value, or None when it is missing or not a sha256 signature."""
    if not value:
        return None
    value = value.strip()
    if not value[: len(PREFIX)].lower() == PREFIX:
        return None
    digest = value[len(PREFIX) :].strip().lower()
    if len(digest) != 64:
        return None
    try:
        return digest.encode("ascii")
    except UnicodeEncodeError:
        return None


def verify(secret: str | bytes, body: bytes, digest: bytes) -> bool:
    """Constant-time check of a parsed digest (see parse_header) against the body."""
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        return False  # an unset app secret must never accept the empty-key HMAC
    expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode("ascii")
    return hmac.compare_digest(expected, digest)
