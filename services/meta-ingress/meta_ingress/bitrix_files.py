"""An operator's file on its way to WhatsApp: its Bitrix24 link passed on (``link`` mode), or downloaded
from Bitrix24 and uploaded to the Graph API (``upload`` mode, the default; see docs/meta-ingress.md)."""

from __future__ import annotations

import httpx
from zaptrix.kafka import TransientError

from meta_ingress.graph import GraphClient
from meta_ingress.outbound import FileRejected, Part, choose_kind, normalize_mime
from meta_ingress.sender import Sender
from meta_ingress.settings import DispatcherSettings, url_allowed


class PartFailed(Exception):
    """One file of a message cannot be sent (shown to the operator; the other parts go on)."""


class BitrixFiles:
    def __init__(
        self,
        settings: DispatcherSettings,
        graph: GraphClient,
        sender: Sender,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.graph = graph
        self.sender = sender
        # Bitrix24 file downloads: a client of its own, so no Graph token can ever reach Bitrix24.
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.file_fetch_timeout_s, connect=5.0),
            follow_redirects=True,
            headers={"User-Agent": "zaptrix-meta-dispatcher"},
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def media_ref(self, phone_number_id: str, part: Part, token: str) -> dict[str, str]:
        """The media object's reference: {"link": ...} or {"id": <uploaded media id>}; the upload may
        change the part's kind and MIME type to what the real file calls for."""
        file = part.file
        assert file is not None
        name = part.filename
        if not file.link:
            raise PartFailed(f"The file “{name}” was not sent: Bitrix24 gave no download link.")
        if not url_allowed(file.link, self.settings):
            raise PartFailed(f"The file “{name}” was not sent: its link is not https.")
        if self.settings.media_send_mode == "link":
            return {"link": file.link}
        data, mime = await self._fetch(file.link, part)
        try:
            part.kind = choose_kind(mime, len(data))  # the real size may call for a document
        except FileRejected as exc:
            raise PartFailed(f"The file “{name}” was not sent: {exc}.") from None
        part.mime = mime
        media_id = await self.sender.with_retries(
            lambda: self.graph.upload_media(phone_number_id, token, data, mime, name)
        )
        return {"id": media_id}

    async def _fetch(self, link: str, part: Part) -> tuple[bytes, str]:
        """Download a Bitrix24 file (bounded by upload_max_bytes)."""
        name = part.filename
        cap = self.settings.upload_max_bytes
        too_large = f"The file “{name}” was not sent: it is larger than {cap // 2**20} MB."
        try:
            async with self.http.stream("GET", link) as resp:
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise TransientError(f"Bitrix24 file download answered HTTP {resp.status_code}")
                if resp.status_code >= 400:
                    raise PartFailed(
                        f"The file “{name}” was not sent: Bitrix24 refused the download (HTTP {resp.status_code})."
                    )
                ctype = resp.headers.get("content-type", "")
                if ctype.lower().startswith("text/html") and not part.mime.startswith("text/html"):
                    raise PartFailed(
                        f"The file “{name}” was not sent: Bitrix24 returned a web page instead of the file "
                        "(the link may need a login)."
                    )
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise PartFailed(too_large)
                buf = bytearray()
                async for chunk in resp.aiter_bytes():
                    buf += chunk
                    if len(buf) > cap:
                        raise PartFailed(too_large)
        except httpx.HTTPError as exc:
            raise TransientError(f"Bitrix24 file download failed: {type(exc).__name__}") from exc
        mime = part.mime if part.mime != "application/octet-stream" else normalize_mime(ctype, name)
        return bytes(buf), mime
