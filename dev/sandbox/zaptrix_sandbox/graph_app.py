"""Graph API stand-in: the documented Cloud API endpoints (messages, media) on Sanic."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from sanic import Request
from sanic.request import RequestParameters
from sanic.response import HTTPResponse, raw
from sanic.response import json as json_response

from . import faults as fault_injection
from . import graph_coexist, graph_sim
from .graph_errors import GraphError, no_object, param_error
from .graph_outbound import Outbound, check_media
from .graph_settings import Channel, GraphOptions, GraphSettings
from .graph_state import GraphState, Media, Sent
from .graph_validate import SendRequest, validate
from .graph_webhooks import WebhookLane, WebhookSender
from .tasks import Background
from .web import App, new_app

_VERSION = re.compile(r"^v\d+\.\d+$")
_UPLOAD_KINDS = {
    "image/jpeg": "image",
    "image/png": "image",
    "image/webp": "sticker",
    "video/mp4": "video",
    "video/3gpp": "video",
    "audio/aac": "audio",
    "audio/amr": "audio",
    "audio/mpeg": "audio",
    "audio/mp4": "audio",
    "audio/ogg": "audio",
}


def _client() -> httpx.AsyncClient:
    """Media downloads (``link`` sends, GET /_sandbox helpers); webhooks have their own lane."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16), timeout=10.0
    )


@dataclass
class GraphSandbox:
    settings: GraphSettings
    state: GraphState
    background: Background = field(default_factory=Background)
    client: httpx.AsyncClient = field(default_factory=_client)
    faults: fault_injection.Faults = field(
        default_factory=lambda: fault_injection.Faults(frozenset({"slow"}))
    )
    lane: WebhookLane = field(init=False)

    def __post_init__(self) -> None:
        self.lane = WebhookLane(self.settings.webhook_concurrency)

    @property
    def sender(self) -> WebhookSender:
        return WebhookSender(self.state, self.lane, self.background)

    @property
    def outbound(self) -> Outbound:
        return Outbound(self.state, self.sender, self.client, self.background)

    def initial_options(self) -> GraphOptions:
        return GraphOptions.model_validate(self.settings.model_dump(include=set(GraphOptions.model_fields)))

    # --- auth ------------------------------------------------------------------------------------
    def token(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            raise GraphError(
                190,
                "An active access token must be used to query information about the current user.",
                status=401,
            )
        token = header[7:].strip()
        if token in self.state.expired_tokens:
            raise GraphError(
                190, "Error validating access token: Session has expired.", status=401, subcode=463
            )
        if not any(c.access_token == token for c in self.state.options.channels):
            raise GraphError(190, "Invalid OAuth access token - Cannot parse access token", status=401)
        return token

    def channel(self, request: Request, version: str, phone_number_id: str, method: str) -> Channel:
        check_version(version)
        token = self.token(request)
        channel = self.state.channel(phone_number_id)
        if channel is None or channel.access_token != token:
            raise no_object(phone_number_id, method)
        return channel

    # --- media URLs --------------------------------------------------------------------------------
    def media_url(self, media: Media) -> str:
        expires = int(time.time() + self.state.options.media_url_ttl_s)
        digest = hmac.new(
            self.state.options.app_secret.encode(), f"{media.id}:{expires}".encode(), hashlib.sha256
        ).hexdigest()[:32]
        query = urlencode({"mid": media.id, "ext": expires, "hash": digest})
        return f"{self.settings.base_url()}/whatsapp_business/attachments/?{query}"


# GET /<phone_number_id> answers these unless ?fields= names others (Graph's default field set).
_DEFAULT_NUMBER_FIELDS = (
    "verified_name",
    "code_verification_status",
    "display_phone_number",
    "quality_rating",
)


def phone_number_view(channel: Channel, fields: str) -> dict[str, Any]:
    """A number as Graph's WhatsAppBusinessPhoneNumber node: the asked-for fields that exist, and the id."""
    every: dict[str, Any] = {
        "verified_name": channel.verified_name,
        "code_verification_status": channel.code_verification_status,
        "display_phone_number": channel.display_phone_number,
        "quality_rating": channel.quality_rating,
        "messaging_limit_tier": channel.messaging_limit_tier,
        "whatsapp_business_manager_messaging_limit": channel.whatsapp_business_manager_messaging_limit,
        "throughput": {"level": channel.throughput_level},
        "platform_type": "CLOUD_API",
        "name_status": "APPROVED",
        "status": "CONNECTED",
    }
    wanted = [f.strip() for f in fields.split(",") if f.strip()] or list(_DEFAULT_NUMBER_FIELDS)
    unknown = [f for f in wanted if f not in every and f != "id"]
    if unknown:
        raise GraphError(
            100,
            f"(#100) Tried accessing nonexisting field ({unknown[0][:60]}) on node type (WhatsAppBusinessPhoneNumber)",
        )
    view = {f: every[f] for f in wanted if f in every}
    view["id"] = channel.phone_number_id
    return view


def check_version(version: str) -> None:
    if not _VERSION.match(version):
        raise GraphError(2500, f"Unknown path components: /{version}", status=400)


def _json_body(request: Request) -> Any:
    try:
        return json.loads(request.body or b"null")
    except ValueError:
        raise param_error("Invalid parameter", details="The request body is not valid JSON.") from None


def _register_api(app: App, sb: GraphSandbox) -> None:
    @app.post("/<version>/<phone_number_id>/messages")
    async def messages(request: Request, version: str, phone_number_id: str) -> HTTPResponse:
        payload: Any = None
        try:
            channel = sb.channel(request, version, phone_number_id, "post")
            payload = _json_body(request)
            req = validate(payload)
            if isinstance(req, SendRequest):
                answer = sb.outbound.send(channel, req, payload)
                if sb.faults.mode() == "slow":  # done and recorded; the answer comes late (ambiguous outcome)
                    sb.faults.hit("slow")
                    sent = sb.state.sent_by_wamid.get(answer["messages"][0]["id"])
                    if sent is not None:
                        sent.answer_delay_s = sb.faults.spec.delay_s
                    await asyncio.sleep(sb.faults.spec.delay_s)
                return json_response(answer)
            return json_response(sb.outbound.read(channel, req))
        except GraphError as err:
            body = err.body()
            if payload is not None and not (isinstance(payload, dict) and "status" in payload):
                sb.state.record_sent(
                    Sent(
                        phone_number_id=phone_number_id,
                        payload=payload,
                        http_status=err.status,
                        response=body,
                        outcome="rejected",
                        error_code=err.code,
                        to=payload.get("to") if isinstance(payload, dict) else None,
                        type=payload.get("type") if isinstance(payload, dict) else None,
                    )
                )
            return json_response(body, status=err.status)

    @app.post("/<version>/<phone_number_id>/media")
    async def upload(request: Request, version: str, phone_number_id: str) -> HTTPResponse:
        channel = sb.channel(request, version, phone_number_id, "post")
        form = request.form or RequestParameters()
        if form.get("messaging_product") != "whatsapp":
            raise param_error("The parameter messaging_product is required.")
        upload = request.files.get("file") if request.files else None
        if upload is None:
            raise param_error("The parameter file is required.")
        mime = (form.get("type") or upload.type or "").split(";")[0].strip().lower()
        kind = _UPLOAD_KINDS.get(mime, "document")
        problem = check_media(kind, mime, len(upload.body)) if mime else "The parameter type is required."
        if mime.split("/")[0] in ("image", "video", "audio") and mime not in _UPLOAD_KINDS:
            problem = f"Unsupported media type {mime} (whatsapp.md A4)."
        if problem:
            raise param_error("Param file must be a file with a supported type and size.", details=problem)
        media = Media(
            id=sb.state.new_media_id(),
            phone_number_id=channel.phone_number_id,
            data=upload.body,
            mime_type=mime,
            filename=upload.name,
        )
        sb.state.media[media.id] = media
        return json_response({"id": media.id})

    @app.get("/<version>/<object_id>")
    async def object_info(request: Request, version: str, object_id: str) -> HTTPResponse:
        """GET /<media_id> (media URL) or GET /<phone_number_id> (the number's state), as Graph serves both
        object kinds under one path."""
        check_version(version)
        token = sb.token(request)
        number = sb.state.channel(object_id)
        if number is not None:
            if number.access_token != token:
                raise no_object(object_id)
            return json_response(phone_number_view(number, request.args.get("fields", "")))
        media = sb.state.media.get(object_id)
        channel = sb.state.channel(media.phone_number_id) if media else None
        if media is None or channel is None or channel.access_token != token:
            raise no_object(object_id)
        return json_response(
            {
                "messaging_product": "whatsapp",
                "url": sb.media_url(media),
                "mime_type": media.mime_type,
                "sha256": media.sha256_hex,
                "file_size": len(media.data),
                "id": media.id,
            }
        )

    @app.get("/<version>/<waba_id>/subscribed_apps")
    async def subscribed_apps(request: Request, version: str, waba_id: str) -> HTTPResponse:
        """The apps subscribed to a WABA's webhooks; only a token of one of the WABA's numbers may read it."""
        check_version(version)
        token = sb.token(request)
        numbers = [c for c in sb.state.options.channels if c.waba_id == waba_id]
        if not any(c.access_token == token for c in numbers):
            raise no_object(waba_id)
        apps = []
        if any(c.app_subscribed for c in numbers):
            options = sb.state.options
            app_data = {
                "id": options.app_id,
                "name": options.app_name,
                "link": f"https://www.facebook.com/games/?app_id={options.app_id}",
            }
            apps.append({"whatsapp_business_api_data": app_data})
        return json_response({"data": apps})

    @app.delete("/<version>/<media_id>")
    async def media_delete(request: Request, version: str, media_id: str) -> HTTPResponse:
        check_version(version)
        token = sb.token(request)
        media = sb.state.media.get(media_id)
        channel = sb.state.channel(media.phone_number_id) if media else None
        if media is None or channel is None or channel.access_token != token:
            raise no_object(media_id, "delete")
        del sb.state.media[media_id]
        return json_response({"success": True})

    @app.get("/whatsapp_business/attachments/")
    async def download(request: Request) -> HTTPResponse:
        token = sb.token(request)  # the download needs the same Bearer token (whatsapp.md A4)
        mid, ext, digest = (request.args.get(k, "") for k in ("mid", "ext", "hash"))
        media = sb.state.media.get(mid)
        expected = hmac.new(
            sb.state.options.app_secret.encode(), f"{mid}:{ext}".encode(), hashlib.sha256
        ).hexdigest()[:32]
        if media is None or not hmac.compare_digest(expected, digest):
            return raw(b"Not Found", status=404, content_type="text/plain")
        channel = sb.state.channel(media.phone_number_id)
        if channel is None or channel.access_token != token:
            return raw(b"Forbidden", status=403, content_type="text/plain")
        if not ext.isdigit() or time.time() > int(ext):
            return raw(b"URL signature expired", status=403, content_type="text/plain")
        return raw(media.data, content_type=media.mime_type.split(";")[0].strip())


def create_app(settings: GraphSettings | None = None, name: str = "sandbox_graph") -> App:
    settings = settings or GraphSettings()
    app = new_app(name)
    sb = GraphSandbox(settings=settings, state=GraphState(GraphOptions()))
    sb.state.options = sb.initial_options()

    @app.exception(GraphError)
    async def graph_error(request: Request, err: GraphError) -> HTTPResponse:
        return err.response()

    @app.after_server_stop
    async def close(app: App) -> None:
        await sb.background.cancel_all()
        await sb.client.aclose()
        await sb.lane.aclose()

    _register_api(app, sb)
    graph_sim.register(app, sb)
    graph_coexist.register(app, sb)
    fault_injection.register(app, sb.faults)
    return app
