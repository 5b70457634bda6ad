"""Graph API client: send, mark as read, media lookup/download/upload (whatsapp.md A3, A4).

One httpx.AsyncClient per process (connection pool, HTTP keep-alive; the official httpx instrumentation
adds the CLIENT spans). Errors come back as GraphApiError (Meta's error envelope, or an HTTP status
without one) or GraphTransportError (no usable answer); graph/errors.py decides what each means.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import IO, Any

import httpx
from zaptrix import delays
from zaptrix.egress import url_allowed
from zaptrix.metrics import EXTERNAL_CALLS, EXTERNAL_LATENCY

from meta_ingress.graph.errors import GraphApiError, GraphTransportError
from meta_ingress.settings import MetaSettings

PLATFORM = "meta"
_TITLE_PREFIX = re.compile(r"^\(#\d+\)\s*")  # "(#131047) Re-engagement message" -> the title


@dataclass(frozen=True)
class MediaInfo:
    url: str
    mime_type: str
    file_size: int
    sha256: str


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), finite and bounded (zaptrix.delays)."""
    return delays.parse_retry_after(value, now=now)


def error_from_response(response: httpx.Response, body: bytes | None = None) -> GraphApiError:
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    data: Any = None
    try:
        data = httpx.Response(200, content=body).json() if body is not None else response.json()
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        text = (body if body is not None else response.content)[:200].decode(errors="replace")
        return GraphApiError(
            response.status_code, None, text or response.reason_phrase, retry_after=retry_after
        )
    code = err.get("code")
    subcode = err.get("error_subcode")
    error_data = err.get("error_data") if isinstance(err.get("error_data"), dict) else {}
    assert isinstance(error_data, dict)
    return GraphApiError(
        response.status_code,
        int(code)
        if isinstance(code, int) or (isinstance(code, str) and code.isascii() and code.isdigit())
        else None,
        str(err.get("message") or ""),
        subcode=int(subcode) if isinstance(subcode, int) else None,
        details=str(error_data.get("details") or ""),
        title=str(err.get("error_user_title") or _TITLE_PREFIX.sub("", str(err.get("message") or ""))),
        fbtrace_id=str(err.get("fbtrace_id") or ""),
        retry_after=retry_after,
    )


# What the template catalogue needs of each template (GET /<waba_id>/message_templates).
TEMPLATE_FIELDS = "id,name,language,status,category,components,quality_score,parameter_format"


class GraphClient:
    def __init__(self, settings: MetaSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.root = settings.graph_root
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.graph_timeout_s, connect=settings.graph_connect_timeout_s),
            limits=httpx.Limits(
                max_connections=settings.graph_max_connections,
                max_keepalive_connections=settings.graph_max_connections,
            ),
            headers={"User-Agent": "zaptrix-meta-ingress"},
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    @staticmethod
    def _auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def _request(self, method: str, label: str, url: str, token: str, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            response = await self._http.request(method, url, headers=self._auth(token), **kwargs)
        except httpx.HTTPError as exc:
            EXTERNAL_CALLS.labels(PLATFORM, label, "transport_error").inc()
            # Not connected at all: the request cannot have reached Meta. Anything later is ambiguous.
            unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            raise GraphTransportError(
                f"{label}: {type(exc).__name__}: {exc}", maybe_delivered=not unsent
            ) from exc
        finally:
            EXTERNAL_LATENCY.labels(PLATFORM, label).observe(time.perf_counter() - started)
        if response.status_code >= 400:
            err = error_from_response(response)
            EXTERNAL_CALLS.labels(PLATFORM, label, err.label).inc()
            raise err
        try:
            data = response.json()
        except (ValueError, RecursionError) as exc:
            EXTERNAL_CALLS.labels(PLATFORM, label, "bad_response").inc()
            raise GraphTransportError(f"{label}: answer is not JSON", maybe_delivered=True) from exc
        EXTERNAL_CALLS.labels(PLATFORM, label, "ok").inc()
        return data

    async def send_message(self, phone_number_id: str, token: str, payload: dict[str, Any]) -> str:
        """POST /<phone_number_id>/messages; returns the wamid (messages[0].id)."""
        data = await self._request(
            "POST", "messages", f"{self.root}/{phone_number_id}/messages", token, json=payload
        )
        try:
            wamid = data["messages"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise GraphTransportError(
                "messages: answer without messages[0].id", maybe_delivered=True
            ) from None
        if not isinstance(wamid, str) or not wamid:
            raise GraphTransportError("messages: empty wamid", maybe_delivered=True)
        return wamid

    async def message_templates(
        self, waba_id: str, token: str, after: str = "", limit: int = 100
    ) -> tuple[list[Any], str]:
        """One page of GET /<waba_id>/message_templates: (templates, the cursor of the next page or "" on
        the last one; Meta leaves ``paging.next`` out there)."""
        params = {"fields": TEMPLATE_FIELDS, "limit": str(limit)}
        if after:
            params["after"] = after
        data = await self._request(
            "GET", "message_templates", f"{self.root}/{waba_id}/message_templates", token, params=params
        )
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise GraphTransportError("message_templates: answer without a data array", maybe_delivered=False)
        paging = data.get("paging")
        paging = paging if isinstance(paging, dict) else {}
        cursors = paging.get("cursors")
        cursors = cursors if isinstance(cursors, dict) else {}
        cursor = cursors.get("after") if paging.get("next") else ""
        return items, cursor if isinstance(cursor, str) else ""

    async def mark_read(self, phone_number_id: str, token: str, wamid: str, typing: bool = False) -> None:
        payload: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
        if typing:
            payload["typing_indicator"] = {"type": "text"}
        await self._request(
            "POST", "mark_read", f"{self.root}/{phone_number_id}/messages", token, json=payload
        )

    async def media_info(self, media_id: str, token: str, phone_number_id: str) -> MediaInfo:
        """GET /<media_id>: the short-lived (about 5 min) download URL and the file's metadata."""
        data = await self._request(
            "GET",
            "media_info",
            f"{self.root}/{media_id}",
            token,
            params={"phone_number_id": phone_number_id},
        )
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            raise GraphTransportError("media_info: answer without url", maybe_delivered=False)
        size = data.get("file_size")
        return MediaInfo(
            url=data["url"],
            mime_type=str(data.get("mime_type") or ""),
            file_size=int(size)
            if isinstance(size, int) or (isinstance(size, str) and size.isascii() and size.isdigit())
            else 0,
            sha256=str(data.get("sha256") or ""),
        )

    @asynccontextmanager
    async def download(self, url: str, token: str, read_timeout_s: float) -> AsyncIterator[httpx.Response]:
        """Stream Meta's media URL with the channel's token. The token is only ever sent over https
        (plain http only where the sandbox is allowed)."""
        if not url_allowed(url, self.settings):
            raise GraphTransportError("media download: refusing a non-https media URL", maybe_delivered=False)
        started = time.perf_counter()
        timeout = httpx.Timeout(read_timeout_s, connect=self.settings.graph_connect_timeout_s)
        request = self._http.build_request("GET", url, headers=self._auth(token), timeout=timeout)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            EXTERNAL_CALLS.labels(PLATFORM, "media_download", "transport_error").inc()
            raise GraphTransportError(f"media download: {type(exc).__name__}", maybe_delivered=False) from exc
        try:
            if response.status_code >= 400:
                body = await response.aread()
                err = error_from_response(response, body)
                EXTERNAL_CALLS.labels(PLATFORM, "media_download", err.label).inc()
                raise err
            EXTERNAL_CALLS.labels(PLATFORM, "media_download", "ok").inc()
            yield response
        finally:
            await response.aclose()
            EXTERNAL_LATENCY.labels(PLATFORM, "media_download").observe(time.perf_counter() - started)

    async def upload_media(
        self, phone_number_id: str, token: str, data: bytes | IO[bytes], mime_type: str, filename: str
    ) -> str:
        """POST /<phone_number_id>/media (multipart: file, type, messaging_product); returns the media id.
        A file object is streamed from its start (httpx rewinds it, so a retry sends it whole again)."""
        result = await self._request(
            "POST",
            "media_upload",
            f"{self.root}/{phone_number_id}/media",
            token,
            data={"messaging_product": "whatsapp", "type": mime_type},
            files={"file": (filename, data, mime_type)},
        )
        media_id = result.get("id") if isinstance(result, dict) else None
        if not isinstance(media_id, str) or not media_id:
            raise GraphTransportError("media upload: answer without id", maybe_delivered=True)
        return media_id
