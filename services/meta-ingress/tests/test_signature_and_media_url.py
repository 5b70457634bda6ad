"""X-Hub-Signature-256 checks and the signed media URLs (pure functions)."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs, urlsplit

import pytest
from meta_ingress.web import media_url, signature

BODY = b'{"object":"whatsapp_business_account","entry":[{"x":"\\u00e9"}]}'


def meta_header(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_valid_signature_over_the_raw_bytes() -> None:
    digest = signature.parse_header(meta_header("s3cret", BODY))
    assert digest is not None
    assert signature.verify("s3cret", BODY, digest)
    # the same JSON re-serialized (Meta escapes non-ASCII; json.dumps here would not) does not verify
    assert not signature.verify("s3cret", BODY.replace(b"\\u00e9", "é".encode()), digest)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha1=" + "a" * 40,
        "sha256=" + "z" * 64,
        "sha256=" + "a" * 63,
        "md5=abc",
        "sha256=é" * 3,
    ],
)
def test_malformed_headers(header: str | None) -> None:
    digest = signature.parse_header(header)
    assert digest is None or not signature.verify("s3cret", BODY, digest)


def test_wrong_secret_tampered_body_and_empty_secret() -> None:
    digest = signature.parse_header(meta_header("s3cret", BODY))
    assert digest is not None
    assert not signature.verify("other", BODY, digest)
    assert not signature.verify("s3cret", BODY + b" ", digest)
    empty = signature.parse_header(meta_header("", BODY))
    assert empty is not None and not signature.verify("", BODY, empty)


def test_uppercase_hex_and_prefix_are_accepted() -> None:
    header = meta_header("s3cret", BODY)
    digest = signature.parse_header("SHA256=" + header[7:].upper())
    assert digest is not None and signature.verify("s3cret", BODY, digest)
    assert signature.sign("s3cret", BODY) == header


SECRET = b"media-secret"


def grant_args(url: str) -> tuple[str, str, dict[str, str]]:
    parts = urlsplit(url)
    _, _, pnid, media_id = parts.path.split("/")
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return pnid, media_id, query


def test_signed_url_round_trip() -> None:
    url = media_url.sign_url("https://mi.example.com/", SECRET, "1001", "777", "photo é.jpg", 3600, now=1000)
    assert url.startswith("https://mi.example.com/media/1001/777?exp=4600&")
    pnid, media_id, q = grant_args(url)
    grant = media_url.check(SECRET, pnid, media_id, q["exp"], q["fn"], q["sig"], now=4599)
    assert (grant.phone_number_id, grant.media_id, grant.filename, grant.expires_at) == (
        "1001",
        "777",
        "photo é.jpg",
        4600,
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"media_id": "778"}, "bad signature"),
        ({"pnid": "1002"}, "bad signature"),
        ({"exp": "9999"}, "bad signature"),
        ({"fn": "other.exe"}, "bad signature"),
        ({"sig": "0" * 64}, "bad signature"),
        ({"sig": None}, "missing exp, fn or sig"),
        ({"exp": "-5"}, "malformed exp"),
        ({"media_id": "../../etc"}, "malformed media path"),
        ({"now": 4601}, "expired"),
    ],
)
def test_tampered_or_expired_urls_are_refused(change: dict[str, object], reason: str) -> None:
    url = media_url.sign_url("https://mi.example.com", SECRET, "1001", "777", "a.jpg", 3600, now=1000)
    pnid, media_id, q = grant_args(url)
    args: dict[str, object] = {"pnid": pnid, "media_id": media_id, **q, "now": 2000}
    args.update(change)
    with pytest.raises(media_url.MediaUrlError, match=reason):
        media_url.check(
            SECRET,
            str(args["pnid"]),
            str(args["media_id"]),
            args["exp"],
            args["fn"],
            args["sig"],
            now=args["now"],  # type: ignore[arg-type]
        )


def test_other_secret_is_refused_and_filenames_are_sanitized() -> None:
    url = media_url.sign_url("https://m", SECRET, "1", "2", "x.pdf", 60, now=0)
    pnid, media_id, q = grant_args(url)
    with pytest.raises(media_url.MediaUrlError):
        media_url.check(b"other", pnid, media_id, q["exp"], q["fn"], q["sig"], now=1)
    assert media_url.safe_filename('../../etc/pa"ss\nwd') == "pa_ss_wd"
    assert media_url.safe_filename("") == "file"
    assert len(media_url.safe_filename("a" * 500)) == 200


def test_signer_ids_come_from_a_bounded_scan_of_the_raw_body() -> None:
    body = (
        b'{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":'
        b'{"metadata":{"display_phone_number":"1","phone_number_id":"106540352242922"}},"field":"messages"}]}]}'
    )
    assert signature.signer_ids(body) == ("106540352242922", "102290129340398")
    # inside a JSON string the quotes are escaped: a message text cannot name the signer
    text = b'{"entry":[{"changes":[{"value":{"messages":[{"text":{"body":"\\"phone_number_id\\":\\"1\\""}}]}}]}]}'
    assert signature.signer_ids(text) == (None, None)
    assert signature.signer_ids(b"[" * 100_000) == (None, None)
    assert signature.signer_ids(b'{"phone_number_id":"12ab"}') == (None, None)  # not a Meta id


def test_metric_labels_from_outside_are_bounded() -> None:
    from meta_ingress.metrics import KNOWN_FIELDS, bounded

    assert bounded("account_update", KNOWN_FIELDS) == "account_update"
    assert bounded("f" * 40, KNOWN_FIELDS) == "other"
