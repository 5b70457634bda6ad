"""What happens to a business send: limits, window, templates, then status webhooks (whatsapp.md A3, A5, A6)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import httpx

from .graph_errors import GraphError, webhook_error
from .graph_settings import Channel, Template
from .graph_state import GraphState, Sent, new_wamid
from .graph_templates import check_send
from .graph_validate import MEDIA_TYPES, ReadRequest, SendRequest
from .graph_webhooks import WebhookSender, envelope, value_of
from .tasks import Background

# whatsapp.md A4: accepted MIME types and size limits per media type (document: any type).
MEDIA_RULES: dict[str, tuple[set[str] | None, int]] = {
    "image": ({"image/jpeg", "image/png"}, 5 * 2**20),
    "video": ({"video/mp4", "video/3gpp"}, 16 * 2**20),
    "audio": ({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}, 16 * 2**20),
    "document": (None, 100 * 2**20),
    "sticker": ({"image/webp"}, 500 * 2**10),
}


def check_media(kind: str, mime_type: str, size: int) -> str | None:
    """Why Meta would refuse this media, or None."""
    allowed, limit = MEDIA_RULES[kind]
    base = mime_type.split(";")[0].strip().lower()
    if allowed is not None and base not in allowed:
        return f"Unsupported {kind} mime type {base}. Please use one of {', '.join(sorted(allowed))}."
    if size > limit:
        return f"Media file size {size} exceeds the {kind} limit of {limit} bytes."
    return None


class Outbound:
    def __init__(
        self, state: GraphState, sender: WebhookSender, client: httpx.AsyncClient, background: Background
    ) -> None:
        self.state = state
        self.sender = sender
        self.client = client
        self.background = background

    # --- POST /messages ---------------------------------------------------------------------------
    def _template(self, obj: dict[str, Any]) -> Template:
        return check_send(self.state.options.templates, obj)

    def send(self, channel: Channel, req: SendRequest, payload: Any) -> dict[str, Any]:
        """Admit or refuse a send; raises GraphError for synchronous refusals."""
        state, opts = self.state, self.state.options
        pnid = channel.phone_number_id
        if not state.throughput(pnid).try_take():
            raise GraphError(
                130429,
                status=opts.throughput_http_status,
                details=f"Throughput of {opts.throughput_mps:g} messages/s for this phone number "
                "was exceeded.",
            )
        if req.wa_id in opts.refuse_numbers:
            raise GraphError(
                opts.refuse_numbers[req.wa_id], details="Refused (sandbox fault injection: refuse_numbers)."
            )
        category = "service"
        if req.type == "template":
            category = self._template(req.obj).category
            if category.lower() == "authentication" and not req.wa_id.isdigit():
                raise GraphError(
                    131062,
                    details="Business-scoped user ID (BSUID) recipients are not supported for this message "
                    "(authentication templates).",
                )
        failure: tuple[int, str] | None = None
        if req.wa_id in opts.not_on_whatsapp:
            failure = (131026, "Message Undeliverable.")
        elif category.lower() == "marketing" and (pnid, req.wa_id) in state.marketing_stopped:
            # reported in the failed status, as for other undeliverable sends (user_preferences "stop")
            failure = (
                131050,
                "Unable to deliver the message. This recipient has chosen to stop receiving "
                "marketing messages on WhatsApp from your business.",
            )
        elif req.type != "template" and not state.window_open(pnid, req.wa_id):
            details = (
                "Message failed to send because more than 24 hours have passed since the customer "
                "last replied to this number."
            )
            if opts.window_error_mode == "sync":
                raise GraphError(131047, details=details)
            failure = (131047, details)
        # Only a send that would go out counts toward the pair limit (checked after synchronous refusals).
        if not state.pair(pnid, req.wa_id).try_take():
            raise GraphError(
                131056,
                details="Message failed to send because there were too many messages sent "
                "from this phone number to the same phone number in a short period.",
            )
        if req.type in MEDIA_TYPES and req.obj.get("id") and req.obj["id"] not in state.media:
            failure = failure or (131053, f"Media id {req.obj['id']} was not found.")
        wamid = new_wamid()
        pricing = state.pricing.price(
            pnid,
            req.wa_id,
            kind=str(req.type),
            template_category=category if req.type == "template" else None,
            window_open=state.window_open(pnid, req.wa_id),
        )
        response = {
            "messaging_product": "whatsapp",
            "contacts": [
                {"input": req.to, "wa_id": req.wa_id}
                if req.wa_id.isdigit()
                else {"input": req.to, "user_id": req.wa_id}
            ],
            "messages": [{"id": wamid, "message_status": "accepted"}],
        }
        sent = state.record_sent(
            Sent(
                phone_number_id=pnid,
                payload=payload,
                http_status=200,
                response=response,
                wamid=wamid,
                to=req.to,
                wa_id=req.wa_id,
                type=req.type,
                pricing=pricing,
            )
        )
        self.background.spawn(self._lifecycle(channel, sent, category, failure))
        return response

    def read(self, channel: Channel, req: ReadRequest) -> dict[str, Any]:
        known = self.state.inbound.get(req.message_id)
        if known is None or known["phone_number_id"] != channel.phone_number_id:
            raise GraphError(
                100,
                "(#100) Invalid parameter",
                details=f"message_id {req.message_id} is not a message received by this phone number.",
            )
        self.state.reads.append(
            {
                "phone_number_id": channel.phone_number_id,
                "message_id": req.message_id,
                "wa_id": known["wa_id"],
                "typing_indicator": req.typing_indicator,
                "at": time.time(),
            }
        )
        return {"success": True}

    # --- status webhooks ----------------------------------------------------------------------------
    def _conversation(self, sent: Sent, category: str) -> dict[str, Any]:
        day = int(time.time() // 86400)
        conv_id = hashlib.sha256(
            f"{sent.phone_number_id}:{sent.wa_id}:{category}:{day}".encode()
        ).hexdigest()[:32]
        return {"id": conv_id, "expiration_timestamp": str((day + 1) * 86400), "origin": {"type": category}}

    async def post_status(
        self,
        channel: Channel,
        sent: Sent,
        status: str,
        category: str = "service",
        error: tuple[int, str] | None = None,
    ) -> int | None:
        item: dict[str, Any] = {
            "id": sent.wamid,
            "status": status,
            "timestamp": str(int(time.time())),
        }
        # A send to a BSUID reports recipient_user_id (whatsapp-api-js ServerStatusPayload), not recipient_id.
        item["recipient_id" if (sent.wa_id or "").isdigit() else "recipient_user_id"] = sent.wa_id
        opaque = sent.payload.get("biz_opaque_callback_data") if isinstance(sent.payload, dict) else None
        if isinstance(opaque, str) and status in ("sent", "delivered", "read"):  # documented for these three
            item["biz_opaque_callback_data"] = opaque
        if status in ("sent", "delivered"):
            item["conversation"] = self._conversation(sent, category)
            if sent.pricing is not None:  # per-message pricing (graph_pricing.py)
                item["pricing"] = dict(sent.pricing)
        opaque = sent.payload.get("biz_opaque_callback_data") if isinstance(sent.payload, dict) else None
        if opaque:  # whatsapp.md: echoed in the status webhooks of that message
            item["biz_opaque_callback_data"] = opaque
        if error is not None:
            item["errors"] = [webhook_error(*error)]
            sent.error_code = error[0]
        sent.statuses.append(status)
        sent.outcome = status
        _, code = await self.sender.send("status", envelope(channel, value_of(channel, statuses=[item])))
        return code

    async def _fetch_link(self, sent: Sent) -> tuple[int, str] | None:
        kind = str(sent.type)
        link = str(sent.payload[kind]["link"])
        try:
            response = await self.client.get(link, timeout=10.0, follow_redirects=True)
        except httpx.HTTPError as exc:
            sent.media = {"link": link, "error": str(exc)}
            return 131053, f"Downloading media from weblink failed: {type(exc).__name__}."
        mime = response.headers.get("content-type", "")
        sent.media = {
            "link": link,
            "status_code": response.status_code,
            "content_type": mime,
            "size": len(response.content),
            "sha256": hashlib.sha256(response.content).hexdigest(),
        }
        if response.status_code != 200:
            return 131053, (
                f"Downloading media from weblink failed with http code {response.status_code}, "
                f"status message {response.reason_phrase}"
            )
        problem = check_media(kind, mime, len(response.content))
        return (131053, problem) if problem else None

    async def _lifecycle(
        self, channel: Channel, sent: Sent, category: str, failure: tuple[int, str] | None
    ) -> None:
        opts = self.state.options
        delays = [*opts.status_delays_s, 0.0, 0.0, 0.0][:3]
        if (
            failure is None
            and sent.type in MEDIA_TYPES
            and "link" in sent.payload[str(sent.type)]
            and opts.fetch_media_links
        ):
            failure = await self._fetch_link(sent)
        await asyncio.sleep(delays[0])
        if failure is not None:
            await self.post_status(channel, sent, "failed", category, failure)
            return
        await self.post_status(channel, sent, "sent", category)
        await asyncio.sleep(max(0.0, delays[1] - delays[0]))
        await self.post_status(channel, sent, "delivered", category)
        if opts.auto_read:
            await asyncio.sleep(max(0.0, delays[2] - delays[1]))
            await self.post_status(channel, sent, "read", category)

    async def customer_reads(self, wa_id: str) -> list[str]:
        """The customer opens the chat: every delivered message to them becomes read."""
        read: list[str] = []
        for sent in self.state.sent:
            channel = self.state.channel(sent.phone_number_id)
            if sent.wa_id == wa_id and sent.outcome == "delivered" and channel is not None and sent.wamid:
                await self.post_status(channel, sent, "read")
                read.append(sent.wamid)
        return read
