"""An operator's file on its way to WhatsApp: its Bitrix24 link passed on (``link`` mode), or downloaded
from Bitrix24 and uploaded to the Graph API (``upload`` mode, the default; see docs/meta-ingress.md).

The link is named by a Bitrix24 event, so it is untrusted (review findings H2, H7, L4):
- it is fetched only from the conversation's own portal or ZAPTRIX_FILE_HOST_ALLOWLIST, over the egress
  guard (zaptrix.egress: public addresses only, the connection pinned to the checked address, every
  redirect hop checked again, at most ``file_max_redirects``);
- the body is spooled to a temporary file and streamed to the Graph API, never held in memory, under a
  process-wide concurrency limit and byte budget (spool.py), a total deadline and a minimum rate;
- whatever is wrong with one file (refused, malformed, too large, too slow, 4xx) is PartFailed: that
  part's "file not sent" notice, the other parts go on. Only what a retry can fix (5xx, 429, network
  errors, a busy budget) is a TransientError.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import IO

import httpx
from zaptrix.egress import (
    EGRESS_REFUSED,
    EgressRefused,
    GuardedTransport,
    HostAllowlist,
    check_url,
    guarded_client,
    open_stream,
)
from zaptrix.kafka import TransientError
from zaptrix.logging import get_logger

from meta_ingress.dispatcher.portal_hosts import PortalHosts
from meta_ingress.dispatcher.send_plan import FileRejected, Part, choose_kind, normalize_mime
from meta_ingress.dispatcher.sender import Sender
from meta_ingress.dispatcher.spool import ByteBudget
from meta_ingress.graph.client import GraphClient
from meta_ingress.metrics import FILE_FETCHES
from meta_ingress.settings import DispatcherSettings

log = get_logger(__name__)

# What the operator reads for each refusal: fixed texts, never the remote server's words.
_REFUSED = {
    "malformed": "its link is not a valid address",
    "scheme": "its link does not use https",
    "host": "its link does not point to this Bitrix24 portal",
    "redirects": "its link redirects too many times",
}
_REFUSED_ELSE = "its link leads to an address that is not allowed"


class PartFailed(Exception):
    """One file of a message cannot be sent (shown to the operator; the other parts go on)."""


@dataclass
class Spooled:
    file: IO[bytes]
    size: int
    mime: str


class BitrixFiles:
    def __init__(
        self,
        settings: DispatcherSettings,
        graph: GraphClient,
        sender: Sender,
        http: httpx.AsyncClient | None = None,
        portals: PortalHosts | None = None,
    ) -> None:
        self.settings = settings
        self.graph = graph
        self.sender = sender
        self.portals = portals or PortalHosts(None, settings.file_host_allowlist)
        # Bitrix24 file downloads: a client of its own, so no Graph token can ever reach Bitrix24. The
        # transport checks every request; each request names its tenant's hosts (open_stream's allow).
        self.http = http or guarded_client(
            GuardedTransport(settings.egress_policy(), HostAllowlist(), "file"),
            timeout=httpx.Timeout(settings.file_fetch_timeout_s, connect=5.0),
            headers={"User-Agent": "zaptrix-meta-dispatcher"},
        )
        self.slots = asyncio.Semaphore(settings.file_fetch_concurrency)
        self.budget = ByteBudget(settings.file_spool_budget_bytes)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def media_ref(
        self, phone_number_id: str, part: Part, token: str, member_id: str = ""
    ) -> dict[str, str]:
        """The media object's reference: {"link": ...} or {"id": <uploaded media id>}; the upload may
        change the part's kind and MIME type to what the real file calls for. ``member_id`` is the portal
        of the conversation (its hosts are where the file may come from)."""
        file = part.file
        assert file is not None
        name = part.filename
        if not file.link:
            raise PartFailed(f"The file “{name}” was not sent: Bitrix24 gave no download link.")
        allow = await self.portals.allowlist(member_id)
        if self.settings.media_send_mode == "link":
            # Meta fetches it (from its own network), but only a link to the tenant's portal is passed on.
            try:
                await check_url(file.link, allow, self.settings.egress_policy(), resolver=None)
            except EgressRefused as exc:
                EGRESS_REFUSED.labels("file", exc.reason).inc()
                raise self._refused(name, exc) from None
            return {"link": file.link}
        async with self.budget_and_spool(file.link, part, allow) as spooled:
            try:
                part.kind = choose_kind(spooled.mime, spooled.size)  # the real size may call for a document
            except FileRejected as exc:
                raise PartFailed(f"The file “{name}” was not sent: {exc}.") from None
            part.mime = spooled.mime
            media_id = await self.sender.with_retries(
                lambda: self.graph.upload_media(phone_number_id, token, spooled.file, spooled.mime, name)
            )
        return {"id": media_id}

    def _refused(self, name: str, exc: EgressRefused) -> PartFailed:
        FILE_FETCHES.labels("refused").inc()
        log.warning("file link refused by the egress guard", reason=exc.reason, detail=str(exc)[:300])
        return PartFailed(f"The file “{name}” was not sent: {_REFUSED.get(exc.reason, _REFUSED_ELSE)}.")

    @asynccontextmanager
    async def budget_and_spool(self, link: str, part: Part, allow: HostAllowlist) -> AsyncIterator[Spooled]:
        """Download ``link`` into a temporary file under the budget; the file and its reservation live
        until the block ends (the upload reads it from there)."""
        name = part.filename
        deadline_s = self.settings.file_fetch_deadline_s
        waiting_for_budget = False
        async with contextlib.AsyncExitStack() as held:
            spool = held.enter_context(tempfile.TemporaryFile(dir=self.settings.file_spool_dir or None))
            # A queue of files in this process is not the file's fault: waiting for a download slot is
            # bounded apart from the file's own deadline, and ends in a retry, not in "not sent".
            try:
                async with asyncio.timeout(self.settings.file_spool_wait_s):
                    await self.slots.acquire()
            except TimeoutError:
                FILE_FETCHES.labels("retried").inc()
                raise TransientError("all file download slots busy: retry later") from None
            try:
                try:
                    async with asyncio.timeout(deadline_s):
                        async with open_stream(
                            self.http,
                            link,
                            allow=allow,
                            max_redirects=self.settings.file_max_redirects,
                            headers={"Accept-Encoding": "identity"},
                        ) as resp:
                            declared = self._check_response(resp, part)
                            waiting_for_budget = True
                            async with asyncio.timeout(self.settings.file_spool_wait_s):
                                limit = await held.enter_async_context(
                                    self.budget.reserve(declared or self.settings.upload_max_bytes)
                                )
                            waiting_for_budget = False
                            size = await self._copy(resp, spool, limit, name)
                            ctype = resp.headers.get("content-type", "")
                finally:
                    self.slots.release()  # downloaded (or failed): the upload needs no download slot
            except EgressRefused as exc:
                raise self._refused(name, exc) from None
            except TimeoutError:
                if waiting_for_budget:
                    FILE_FETCHES.labels("retried").inc()
                    raise TransientError("file spool budget busy: retry later") from None
                FILE_FETCHES.labels("too_slow").inc()
                raise PartFailed(
                    f"The file “{name}” was not sent: the download from Bitrix24 took longer than "
                    f"{deadline_s:g} s."
                ) from None
            except httpx.HTTPError as exc:
                FILE_FETCHES.labels("retried").inc()
                raise TransientError(f"Bitrix24 file download failed: {type(exc).__name__}") from exc
            FILE_FETCHES.labels("ok").inc()
            mime = part.mime if part.mime != "application/octet-stream" else normalize_mime(ctype, name)
            yield Spooled(spool, size, mime)

    def _check_response(self, resp: httpx.Response, part: Part) -> int:
        """Status and headers; returns the declared length (0: not declared)."""
        name = part.filename
        if resp.status_code >= 500 or resp.status_code == 429:
            FILE_FETCHES.labels("retried").inc()
            raise TransientError(f"Bitrix24 file download answered HTTP {resp.status_code}")
        if resp.status_code >= 300:
            FILE_FETCHES.labels("http_4xx").inc()
            raise PartFailed(
                f"The file “{name}” was not sent: Bitrix24 refused the download (HTTP {resp.status_code})."
            )
        ctype = resp.headers.get("content-type", "")
        if ctype.lower().startswith("text/html") and not part.mime.startswith("text/html"):
            FILE_FETCHES.labels("web_page").inc()
            raise PartFailed(
                f"The file “{name}” was not sent: Bitrix24 returned a web page instead of the file "
                "(the link may need a login)."
            )
        declared = resp.headers.get("content-length", "")
        length = int(declared) if declared.isdigit() else 0
        if length > self.settings.upload_max_bytes:
            raise self._too_large(name)
        return length

    def _too_large(self, name: str) -> PartFailed:
        FILE_FETCHES.labels("too_large").inc()
        cap = self.settings.upload_max_bytes
        return PartFailed(f"The file “{name}” was not sent: it is larger than {cap // 2**20} MB.")

    async def _copy(self, resp: httpx.Response, spool: IO[bytes], limit: int, name: str) -> int:
        """Stream the body into ``spool``: at most ``limit`` bytes (the reservation), at least the
        minimum rate once the grace period is over."""
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):  # we asked for identity; a compressed body could be a bomb
            FILE_FETCHES.labels("refused").inc()
            raise PartFailed(
                f"The file “{name}” was not sent: Bitrix24 sent it compressed ({encoding[:20]})."
            )
        min_rate = self.settings.file_min_rate_bytes_per_s
        grace = self.settings.file_min_rate_grace_s
        started = time.monotonic()
        size = 0
        async for chunk in resp.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise self._too_large(name)
            spool.write(chunk)  # a local disk write: short, not worth a thread hop
            elapsed = time.monotonic() - started
            if min_rate and elapsed > grace and size < min_rate * elapsed:
                FILE_FETCHES.labels("too_slow").inc()
                raise PartFailed(f"The file “{name}” was not sent: the download from Bitrix24 was too slow.")
        spool.flush()
        return size
