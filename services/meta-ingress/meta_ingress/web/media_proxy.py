"""The signed media proxy: GET|HEAD /media/<phone_number_id>/<media_id>?exp=&fn=&sig= — what Bitrix24
downloads. Signature and expiry checked (media_url.py), the Graph media lookup with the channel's token,
then the file streamed chunk by chunk; no token in any URL, nothing written to disk."""

from __future__ import annotations

from urllib.parse import quote

from sanic import HTTPResponse, Request
from sanic.response import empty
from zaptrix.kafka import TransientError
from zaptrix.logging import get_logger

from meta_ingress.credentials import CredentialsCache, UnknownChannel
from meta_ingress.graph.errors import GraphApiError, GraphTransportError
from meta_ingress.metrics import MEDIA_PROXY, MEDIA_PROXY_BYTES
from meta_ingress.settings import WebSettings
from meta_ingress.web import media_url
from meta_ingress.web.resources import Lifetime
from meta_ingress.web.webhooks import error_response

log = get_logger(__name__)


class MediaProxy:
    def __init__(self, settings: WebSettings, lifetime: Lifetime) -> None:
        self.settings = settings
        self.lifetime = lifetime
        self.media_secret = settings.media_secret_bytes()

    async def media(self, request: Request, phone_number_id: str, media_id: str) -> HTTPResponse | None:
        args = request.args
        try:
            grant = media_url.check(
                self.media_secret, phone_number_id, media_id, args.get("exp"), args.get("fn"), args.get("sig")
            )
        except media_url.MediaUrlError as exc:
            MEDIA_PROXY.labels("expired" if str(exc) == "expired" else "forbidden").inc()
            return error_response(403, f"media URL refused: {exc}")
        credentials, graph = self.lifetime.resources.credentials, self.lifetime.resources.graph
        try:
            creds = await credentials.get(phone_number_id)
            info = await graph.media_info(media_id, creds.access_token, phone_number_id)
        except UnknownChannel:
            MEDIA_PROXY.labels("not_found").inc()
            return error_response(404, "unknown channel")
        except GraphApiError as exc:
            return self._media_error(exc, credentials, phone_number_id)
        except (GraphTransportError, TransientError) as exc:
            MEDIA_PROXY.labels("upstream_error").inc()
            log.warning("media lookup failed", media_id=media_id, error=str(exc))
            return error_response(502, "the Graph API did not answer the media lookup")
        headers = {
            "Content-Disposition": _disposition(grant.filename),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
        }
        content_type = info.mime_type or "application/octet-stream"
        if request.method == "HEAD":
            if info.file_size:
                headers["Content-Length"] = str(info.file_size)
            MEDIA_PROXY.labels("ok").inc()
            return empty(status=200, headers={**headers, "Content-Type": content_type})
        try:
            async with graph.download(
                info.url, creds.access_token, self.settings.media_download_timeout_s
            ) as upstream:
                content_type = upstream.headers.get("content-type") or content_type
                length = upstream.headers.get("content-length")
                if length and length.isdigit():
                    headers["Content-Length"] = length
                response = await request.respond(status=200, headers=headers, content_type=content_type)
                if response is None:  # pragma: no cover - only when another response was already sent
                    return None
                sent = 0
                try:
                    async for chunk in upstream.aiter_bytes(self.settings.media_chunk_bytes):
                        await response.send(chunk)
                        sent += len(chunk)
                except Exception as exc:
                    # Headers are out: the only honest signal left is an incomplete body (closed early).
                    MEDIA_PROXY.labels("upstream_error").inc()
                    log.warning("media stream broke off", media_id=media_id, sent=sent, error=repr(exc))
                    raise
                finally:
                    MEDIA_PROXY_BYTES.inc(sent)
                await response.eof()
        except GraphApiError as exc:
            return self._media_error(exc, credentials, phone_number_id)
        except GraphTransportError as exc:
            MEDIA_PROXY.labels("upstream_error").inc()
            log.warning("media download failed", media_id=media_id, error=str(exc))
            return error_response(502, "the media download from Meta failed")
        MEDIA_PROXY.labels("ok").inc()
        return None

    def _media_error(
        self, exc: GraphApiError, credentials: CredentialsCache, phone_number_id: str
    ) -> HTTPResponse:
        if exc.http_status == 404 or exc.subcode == 33 or (exc.code == 100 and exc.http_status == 400):
            MEDIA_PROXY.labels("not_found").inc()
            return error_response(404, "media not found (media ids from webhooks expire after 7 days)")
        if exc.code in (0, 190) or exc.http_status == 401:
            credentials.invalidate(phone_number_id)
            log.error(
                "Graph API rejected the channel's token for a media lookup", phone_number_id=phone_number_id
            )
        MEDIA_PROXY.labels("upstream_error").inc()
        log.warning(
            "media lookup refused", code=exc.code, http_status=exc.http_status, detail=exc.message[:200]
        )
        return error_response(502, f"the Graph API refused the media request ({exc.label})")


def _disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
