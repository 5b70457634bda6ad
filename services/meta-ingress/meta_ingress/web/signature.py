"""Meta's webhook signature: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``.

The digest is computed over the exact bytes received (never a re-serialization: Meta escapes non-ASCII
as \\uXXXX, json.dumps would not reproduce it) and compared in constant time (whatsapp.md A1).

Which app secret? It depends on the channel the body names, so before anything is parsed a cheap scan
(one bounded regex search over the raw bytes, no JSON tree) finds the first ``"phone_number_id"`` and the
first entry's ``"id"`` (the WhatsApp Business Account). Only that channel's secret is tried: one
token-keeper lookup and one HMAC per webhook at most. The scan needs no accuracy for safety: after the body
is verified and parsed, every channel it routes to must have this same secret (webhooks.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re

PREFIX = "sha256="
_PHONE_NUMBER_ID = re.compile(rb'"phone_number_id"\s*:\s*"([0-9]{1,32})"')
_FIRST_ENTRY_ID = re.compile(rb'"entry"\s*:\s*\[\s*\{\s*"id"\s*:\s*"([0-9]{1,32})"')


def signer_ids(body: bytes) -> tuple[str | None, str | None]:
    """(first phone_number_id, first entry id = WABA id) named in the raw body, without parsing it."""
    pnid = _PHONE_NUMBER_ID.search(body)
    waba = _FIRST_ENTRY_ID.search(body)
    return (pnid.group(1).decode() if pnid else None, waba.group(1).decode() if waba else None)


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
