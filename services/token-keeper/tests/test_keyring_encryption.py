"""Keyring: AES-GCM round trip, AAD binding to row/column, key ids and rotation, key configuration."""

from __future__ import annotations

import base64
import json
import os

import pytest
from token_keeper.crypto import (
    DEV_KEY,
    DEV_KEY_ID,
    DecryptError,
    Field,
    KeyConfigError,
    Keyring,
    keyring_from_config,
    parse_keys,
)

WHERE = Field("portal_config", "refresh_token", "member-1")


def test_round_trip_and_random_nonce() -> None:
    k = Keyring({"k1": os.urandom(32)}, "k1")
    a = k.encrypt("s3cret-value", WHERE)
    b = k.encrypt("s3cret-value", WHERE)
    assert a != b  # fresh nonce each time
    assert b"s3cret-value" not in a
    assert k.decrypt(a, WHERE) == "s3cret-value"
    assert Keyring.key_id_of(a) == "k1"


@pytest.mark.parametrize(
    "other",
    [
        Field("portal_config", "refresh_token", "member-2"),  # copied to another row
        Field("portal_config", "access_token", "member-1"),  # copied to another column
        Field("channel_credentials", "refresh_token", "member-1"),  # another table
    ],
)
def test_ciphertext_is_bound_to_its_row_and_column(other: Field) -> None:
    k = Keyring({"k1": os.urandom(32)}, "k1")
    blob = k.encrypt("s3cret-value", WHERE)
    with pytest.raises(DecryptError) as err:
        k.decrypt(blob, other)
    assert "s3cret" not in str(err.value)


def test_tampering_and_relabelling_fail() -> None:
    k = Keyring({"k1": os.urandom(32), "k2": os.urandom(32)}, "k1")
    blob = bytearray(k.encrypt("s3cret-value", WHERE))
    blob[-1] ^= 1
    with pytest.raises(DecryptError):
        k.decrypt(bytes(blob), WHERE)
    # Relabel the key id k1 -> k2 (same length): the key id is authenticated too.
    relabelled = k.encrypt("s3cret-value", WHERE).replace(b"k1", b"k2", 1)
    with pytest.raises(DecryptError):
        k.decrypt(relabelled, WHERE)
    with pytest.raises(DecryptError):
        k.decrypt(b"\x02garbage", WHERE)


def test_rotation_old_values_decrypt_new_values_use_active_key() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    old = Keyring({"k1": k1}, "k1")
    blob_old = old.encrypt("value", WHERE)
    both = Keyring({"k1": k1, "k2": k2}, "k2")
    assert both.decrypt(blob_old, WHERE) == "value"
    blob_new = both.encrypt("value", WHERE)
    assert Keyring.key_id_of(blob_new) == "k2"
    only_new = Keyring({"k2": k2}, "k2")
    assert only_new.decrypt(blob_new, WHERE) == "value"
    with pytest.raises(DecryptError, match=r"k1.*not configured"):
        only_new.decrypt(blob_old, WHERE)


def test_lookup_hashes_cover_every_key() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    both = Keyring({"k1": k1, "k2": k2}, "k2")
    h_old = Keyring({"k1": k1}, "k1").lookup_hash("verify-me")
    assert h_old in both.lookup_hashes("verify-me")
    assert both.lookup_hash("verify-me") != h_old
    assert both.lookup_hash("verify-me") != both.lookup_hash("verify-mf")


def test_repr_and_errors_never_show_key_material() -> None:
    key = os.urandom(32)
    b64 = base64.b64encode(key).decode()
    k = Keyring({"k1": key}, "k1")
    assert b64 not in repr(k) and key.hex() not in repr(k)
    for bad in (f"k1:{b64[:-4]}!!!!", '{"k1": 5}', f"k1:{base64.b64encode(key[:16]).decode()}"):
        with pytest.raises(KeyConfigError) as err:
            keyring_from_config(bad, None, environment="test")
        assert b64[:10] not in str(err.value)


def test_parse_both_formats_and_active_key() -> None:
    a, b = base64.b64encode(os.urandom(32)).decode(), base64.b64encode(os.urandom(32)).decode()
    assert parse_keys(f"k1:{a}, k2:{b}").keys() == {"k1", "k2"}
    assert parse_keys(json.dumps({"k1": a, "k2": b})).keys() == {"k1", "k2"}
    with pytest.raises(KeyConfigError, match="ACTIVE_KEY_ID"):
        keyring_from_config(f"k1:{a},k2:{b}", None, environment="production")
    assert keyring_from_config(f"k1:{a},k2:{b}", "k1", environment="production").active_id == "k1"
    assert keyring_from_config(f"k1:{a}", None, environment="production").active_id == "k1"
    with pytest.raises(KeyConfigError, match="not among"):
        keyring_from_config(f"k1:{a}", "k9", environment="test")


def test_production_refuses_missing_or_dev_key() -> None:
    with pytest.raises(KeyConfigError, match="required in production"):
        keyring_from_config(None, None, environment="production")
    dev_b64 = base64.b64encode(DEV_KEY).decode()
    with pytest.raises(KeyConfigError, match="dev key"):
        keyring_from_config(f"prod:{dev_b64}", None, environment="production")
    dev = keyring_from_config(None, None, environment="dev")
    assert dev.is_dev and dev.active_id == DEV_KEY_ID
