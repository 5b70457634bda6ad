"""AES-256-GCM encryption of every stored secret, with key ids for rotation and row/column binding.

A stored value (bytea) is ``0x01 | len(kid) | kid | nonce(12) | ciphertext+tag``. The associated data is
``zaptrix.token_keeper.v1 \\0 table \\0 column \\0 row_id \\0 kid``: a ciphertext copied to another row or column
(or relabelled with another key id) fails authentication instead of decrypting to someone else's secret.

Lookup hashes (the WhatsApp verify token) are HMAC-SHA256 under a key derived per key id with HKDF, so a
lookup needs no decryption scan and reveals nothing without the master key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT_VERSION = 1
NONCE_LEN = 12
KEY_LEN = 32
_AAD_PREFIX = b"zaptrix.token_keeper.v1"
_KID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# Published on purpose (docs/token-keeper.md): used only outside production when no key is configured.
DEV_KEY_ID = "dev-insecure"
DEV_KEY = hashlib.sha256(
    b"zaptrix token-keeper development key - NOT SECRET - never use in production"
).digest()


class KeyConfigError(ValueError):
    """The key configuration is unusable (message never contains key material)."""


class DecryptError(Exception):
    """A stored secret cannot be decrypted: unknown key id, tampering, or a value moved between rows."""


@dataclass(frozen=True, slots=True)
class Field:
    """Where a ciphertext lives: it is bound to exactly this table, column and row."""

    table: str
    column: str
    row_id: str


class Keyring:
    """The AES keys by id; `active_id` encrypts new values, every key decrypts. Never prints key material."""

    def __init__(self, keys: Mapping[str, bytes], active_id: str, *, is_dev: bool = False) -> None:
        if not keys:
            raise KeyConfigError("no encryption key configured")
        for kid, key in keys.items():
            if not _KID_RE.match(kid):
                raise KeyConfigError(f"invalid key id {kid!r}: use 1-64 of [A-Za-z0-9._-]")
            if len(key) != KEY_LEN:
                raise KeyConfigError(f"key {kid!r} must be {KEY_LEN} bytes (AES-256), got {len(key)}")
        if active_id not in keys:
            raise KeyConfigError(
                f"active key id {active_id!r} is not among the configured keys {sorted(keys)}"
            )
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self._lookup = {kid: _derive_lookup_key(key) for kid, key in keys.items()}
        self.active_id = active_id
        self.is_dev = is_dev

    def __repr__(self) -> str:
        return f"Keyring(key_ids={sorted(self._aead)}, active_id={self.active_id!r}, is_dev={self.is_dev})"

    __str__ = __repr__

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._aead)

    def encrypt(self, plaintext: str, where: Field) -> bytes:
        kid = self.active_id
        nonce = os.urandom(NONCE_LEN)
        kid_b = kid.encode()
        ciphertext = self._aead[kid].encrypt(nonce, plaintext.encode(), _aad(where, kid_b))
        return bytes([FORMAT_VERSION, len(kid_b)]) + kid_b + nonce + ciphertext

    def decrypt(self, blob: bytes, where: Field) -> str:
        kid_b, nonce, ciphertext = _split(blob, where)
        kid = kid_b.decode()
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptError(
                f"{where.table}.{where.column} of {where.row_id!r} is encrypted with key id {kid!r}, "
                f"which is not configured (configured: {self.key_ids})"
            )
        try:
            return aead.decrypt(nonce, ciphertext, _aad(where, kid_b)).decode()
        except InvalidTag:
            raise DecryptError(
                f"{where.table}.{where.column} of {where.row_id!r} failed authentication "
                "(tampered, or copied from another row/column)"
            ) from None

    @staticmethod
    def key_id_of(blob: bytes) -> str:
        return _split(blob, Field("?", "?", "?"))[0].decode()

    def lookup_hash(self, value: str, kid: str | None = None) -> bytes:
        """Keyed hash for equality lookups, under `kid` (default: the active key)."""
        return hmac.new(self._lookup[kid or self.active_id], value.encode(), hashlib.sha256).digest()

    def lookup_hashes(self, value: str) -> list[bytes]:
        """The value's hash under every configured key: rows not yet rotated are still found."""
        return [self.lookup_hash(value, kid) for kid in self.key_ids]


def _derive_lookup_key(key: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"zaptrix token-keeper lookup v1"
    ).derive(key)


def _aad(where: Field, kid: bytes) -> bytes:
    return b"\0".join((_AAD_PREFIX, where.table.encode(), where.column.encode(), where.row_id.encode(), kid))


def _split(blob: bytes, where: Field) -> tuple[bytes, bytes, bytes]:
    if len(blob) < 2 or blob[0] != FORMAT_VERSION:
        raise DecryptError(f"{where.table}.{where.column} of {where.row_id!r}: unknown ciphertext format")
    kid_len = blob[1]
    header = 2 + kid_len
    if len(blob) < header + NONCE_LEN + 16:
        raise DecryptError(f"{where.table}.{where.column} of {where.row_id!r}: truncated ciphertext")
    return blob[2:header], blob[header : header + NONCE_LEN], blob[header + NONCE_LEN :]


def parse_keys(raw: str) -> dict[str, bytes]:
    """Parse ``{"kid": "<base64>"}`` (JSON) or ``kid:<base64>,kid2:<base64>``. Errors never echo key material."""
    raw = raw.strip()
    pairs: Iterable[tuple[str, str]]
    if raw.startswith("{"):
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError:
            raise KeyConfigError("ZAPTRIX_TOKEN_KEEPER_KEYS is not valid JSON") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise KeyConfigError('ZAPTRIX_TOKEN_KEEPER_KEYS JSON must be an object {"kid": "<base64>"}')
        pairs = loaded.items()
    else:
        items = [p.strip() for p in raw.split(",") if p.strip()]
        if not all(":" in p for p in items):
            raise KeyConfigError('ZAPTRIX_TOKEN_KEEPER_KEYS entries must look like "kid:<base64 key>"')
        pairs = [tuple(p.split(":", 1)) for p in items]  # type: ignore[misc]
    keys: dict[str, bytes] = {}
    for kid, b64 in pairs:
        kid = kid.strip()
        if kid in keys:
            raise KeyConfigError(f"key id {kid!r} appears twice")
        try:
            keys[kid] = base64.b64decode(b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyConfigError(f"key {kid!r} is not valid base64") from None
    if not keys:
        raise KeyConfigError("ZAPTRIX_TOKEN_KEEPER_KEYS holds no key")
    return keys


def keyring_from_config(raw_keys: str | None, active_id: str | None, *, environment: str) -> Keyring:
    """Build the keyring from settings. Production without keys is refused; dev/test get the dev key."""
    if not raw_keys:
        if environment == "production":
            raise KeyConfigError(
                "ZAPTRIX_TOKEN_KEEPER_KEYS is required in production (refusing to store secrets with the dev key)"
            )
        return Keyring({DEV_KEY_ID: DEV_KEY}, DEV_KEY_ID, is_dev=True)
    keys = parse_keys(raw_keys)
    if active_id is None:
        if len(keys) != 1:
            raise KeyConfigError("several keys configured: set ZAPTRIX_TOKEN_KEEPER_ACTIVE_KEY_ID")
        active_id = next(iter(keys))
    if environment == "production" and (DEV_KEY_ID in keys or DEV_KEY in keys.values()):
        raise KeyConfigError("the published dev key must not be configured in production")
    return Keyring(keys, active_id)


def generate_key() -> str:
    """A fresh random AES-256 key, base64 (for `zaptrix-admin tokens generate-key`)."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()
