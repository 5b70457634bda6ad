"""Signed, expiring URLs of the media proxy: ``/media/<phone_number_id>/<media_id>?exp=&fn=&sig=``.

``sig`` is the hex HMAC-SHA256, keyed with ``media_url_secret``, over the path, the expiry (epoch
seconds) and the file name offered to the downloader, one per line. Nothing else is needed to serve the
file: the proxy looks the media id up on the Graph API with the channel's token at request time, so no
token ever appears in a URL and no file is stored anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from urllib.parse import quote, urlencode

# Graph ids are digits; keep the path strictly to what can be a Graph id (no traversal, no encoding games).
_ID = re.compile(r"^[0-9A-Za-z_.\-]{1,128}$")
_UNSAFE_NAME = re.compile(r'[\x00-\x1f\x7f"\\/]')


def media_path(phone_number_id: str, media_id: str) -> str:
    if not _ID.match(phone_number_id) or not _ID.match(media_id):
        raise ValueError("phone_number_id and media_id must be plain ids")
    return f"/media/{phone_number_id}/{media_id}"


def safe_filename(name: str, fallback: str = "file") -> str:
    """A file name fit for Content-Disposition: no path, no control characters, at most 200 characters."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME.sub("_", name).strip().strip(".")
    return name[:200] or fallback


def _mac(secret: bytes, path: str, exp: int, filename: str) -> str:
    message = f"{path}\n{exp}\n{filename}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign_url(
    base_url: str,
    secret: bytes,
    phone_number_id: str,
    media_id: str,
    filename: str,
    ttl_s: int,
    now: float | None = None,
) -> str:
    path = media_path(phone_number_id, media_id)
    exp = int((time.time() if now is None else now) + ttl_s)
    filename = safe_filename(filename)
    query = urlencode({"exp": exp, "fn": filename, "sig": _mac(secret, path, exp, filename)}, quote_via=quote)
    return f"{base_url.rstrip('/')}{path}?{query}"


@dataclass(frozen=True)
class MediaGrant:
    phone_number_id: str
    media_id: str
    filename: str
    expires_at: int


class MediaUrlError(ValueError):
    """Why a media URL is refused (shown in the 403 body; never reveals the expected signature)."""


def check(
    secret: bytes,
    phone_number_id: str,
    media_id: str,
    exp: str | None,
    filename: str | None,
    sig: str | None,
    now: float | None = None,
) -> MediaGrant:
    """The grant of a valid, unexpired URL; raises MediaUrlError otherwise."""
    if not exp or not sig or filename is None:
        raise MediaUrlError("missing exp, fn or sig")
    try:
        path = media_path(phone_number_id, media_id)
    except ValueError:
        raise MediaUrlError("malformed media path") from None
    if not (exp.isascii() and exp.isdigit()) or len(exp) > 12:  # "²".isdigit() is True, int() refuses it
        raise MediaUrlError("malformed exp")
    expected = _mac(secret, path, int(exp), filename)
    if not hmac.compare_digest(expected.encode(), sig.strip().lower().encode("ascii", "replace")):
        raise MediaUrlError("bad signature")
    if int(exp) < (time.time() if now is None else now):
        raise MediaUrlError("expired")
    return MediaGrant(phone_number_id, media_id, filename, int(exp))
