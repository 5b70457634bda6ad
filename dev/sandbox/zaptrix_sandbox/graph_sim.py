"""Simulator API of the Graph stand-in under /_sandbox/: play the customer, inspect what happened."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError
from sanic import Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from .graph_inbound import BatchSpec, IdentityChangeSpec, InboundSpec, build, build_identity_change
from .graph_settings import Channel, GraphOptions
from .graph_webhooks import envelope, value_of
from .web import App

if TYPE_CHECKING:
    from .graph_app import GraphSandbox


class CustomerWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wa_id: str
    phone_number_id: str | None = None
    last_inbound_ago_s: float | None  # null: the customer never wrote (window closed)


class NewNumber(Channel):
    model_config = ConfigDict(extra="forbid")


def _bad(message: str, status: int = 400) -> HTTPResponse:
    return json_response({"error": message}, status=status)


def _errors(exc: ValidationError) -> HTTPResponse:
    return json_response({"error": "invalid request", "details": exc.errors(include_url=False)}, status=400)


def register(app: App, sb: GraphSandbox) -> None:
    def channel_for(phone_number_id: str | None) -> Channel | None:
        if phone_number_id is None:
            return sb.state.options.channels[0]
        return sb.state.channel(phone_number_id)

    @app.get("/_sandbox/health")
    async def health(request: Request) -> HTTPResponse:
        return json_response({"status": "ok"})

    @app.post("/_sandbox/customers/<wa_id>/messages")
    async def customer_message(request: Request, wa_id: str) -> HTTPResponse:
        try:
            spec = InboundSpec.model_validate(request.json or {})
        except ValidationError as exc:
            return _errors(exc)
        channel = channel_for(spec.phone_number_id)
        if channel is None:
            return _bad(f"unknown phone_number_id {spec.phone_number_id}", 404)
        contact, message = build(spec, wa_id, channel, sb.state)
        payload = envelope(channel, value_of(channel, contacts=[contact], messages=[message]))
        delivery, status = await sb.sender.send("message", payload, spec.signature)
        return json_response(
            {
                "wamid": message["id"],
                "delivery_id": delivery.id,
                "status_code_from_gateway": status,
                "gateway_status": status,
                "payload": payload,
            }
        )

    @app.post("/_sandbox/customers/<wa_id>/identity-change")
    async def identity_change(request: Request, wa_id: str) -> HTTPResponse:
        try:
            spec = IdentityChangeSpec.model_validate(request.json or {})
        except ValidationError as exc:
            return _errors(exc)
        channel = channel_for(spec.phone_number_id)
        if channel is None:
            return _bad(f"unknown phone_number_id {spec.phone_number_id}", 404)
        message = build_identity_change(spec, wa_id, sb.state)
        payload = envelope(channel, value_of(channel, messages=[message]))  # system messages: no contacts
        delivery, status = await sb.sender.send("message", payload, spec.signature)
        return json_response(
            {"wamid": message["id"], "delivery_id": delivery.id, "gateway_status": status, "payload": payload}
        )

    @app.post("/_sandbox/webhooks")
    async def batch(request: Request) -> HTTPResponse:
        try:
            spec = BatchSpec.model_validate(request.json or {})
        except ValidationError as exc:
            return _errors(exc)
        built: list[tuple[Channel, dict[str, Any], dict[str, Any]]] = []
        for item in spec.messages:
            channel = channel_for(item.phone_number_id)
            if channel is None or not item.wa_id:
                return _bad("each message needs wa_id and a known phone_number_id")
            built.append((channel, *build(item, item.wa_id, channel, sb.state)))
        if spec.layout == "messages":
            channel = built[0][0]
            contacts = list({c["wa_id"]: c for _, c, _ in built}.values())
            payload = envelope(
                channel, value_of(channel, contacts=contacts, messages=[m for _, _, m in built])
            )
        else:
            entries = [
                envelope(ch, value_of(ch, contacts=[c], messages=[m]))["entry"][0] for ch, c, m in built
            ]
            if spec.layout == "changes":
                entries = [{"id": entries[0]["id"], "changes": [e["changes"][0] for e in entries]}]
            payload = {"object": "whatsapp_business_account", "entry": entries}
        delivery, status = await sb.sender.send("batch", payload, spec.signature)
        return json_response(
            {
                "wamids": [m["id"] for _, _, m in built],
                "delivery_id": delivery.id,
                "status_code_from_gateway": status,
                "gateway_status": status,
                "payload": payload,
            }
        )

    @app.post("/_sandbox/webhooks/<delivery_id>/replay")
    async def replay(request: Request, delivery_id: str) -> HTTPResponse:
        original = sb.state.deliveries.get(delivery_id)
        if original is None:
            return _bad(f"unknown delivery {delivery_id}", 404)
        copy = sb.sender.prepare(original.kind, {}, "missing")
        copy.body, copy.headers, copy.signature = original.body, dict(original.headers), original.signature
        copy.replay_of = delivery_id
        status = await sb.sender.deliver(copy)
        return json_response(
            {"delivery_id": copy.id, "status_code_from_gateway": status, "gateway_status": status}
        )

    @app.post("/_sandbox/statuses")
    async def inject_status(request: Request) -> HTTPResponse:
        body = request.json or {}
        sent = sb.state.sent_by_wamid.get(str(body.get("wamid")))
        status = body.get("status")
        if sent is None or status not in ("sent", "delivered", "read", "failed"):
            return _bad("need the wamid of an accepted send and status sent|delivered|read|failed")
        channel = sb.state.channel(sent.phone_number_id)
        assert channel is not None
        error = (
            (int(body.get("error_code", 131000)), str(body.get("details", "Something went wrong")))
            if status == "failed"
            else None
        )
        code = await sb.outbound.post_status(channel, sent, status, error=error)
        return json_response({"status_code_from_gateway": code, "gateway_status": code})

    @app.post("/_sandbox/customers/<wa_id>/read")
    async def customer_reads(request: Request, wa_id: str) -> HTTPResponse:
        return json_response({"read": await sb.outbound.customer_reads(wa_id)})

    @app.get("/_sandbox/sent")
    async def sent(request: Request) -> HTTPResponse:
        to = request.args.get("to")
        items = [s.view() for s in sb.state.sent if to is None or s.wa_id == to or s.to == to]
        return json_response({"sent": items})

    @app.get("/_sandbox/faults/record")
    async def fault_record(request: Request) -> HTTPResponse:
        """What the fault suite counts: every send whose text carries `marker`, and every customer-message
        webhook carrying it with the outcome of its delivery attempts."""
        marker = request.args.get("marker", "")
        if len(marker) < 4:
            return _bad("marker: at least 4 characters")
        sends = []
        for s in sb.state.sent:
            payload = s.payload if isinstance(s.payload, dict) else {}
            text = (
                str((payload.get("text") or {}).get("body") or "")
                if isinstance(payload.get("text"), dict)
                else ""
            )
            if marker not in text:
                continue
            sends.append(
                {
                    "wamid": s.wamid,
                    "phone_number_id": s.phone_number_id,
                    "wa_id": s.wa_id,
                    "text": text[:500],
                    "at": s.at,
                    "http_status": s.http_status,
                    "outcome": s.outcome,
                    "error_code": s.error_code,
                    "answer_delay_s": s.answer_delay_s,
                    "biz_opaque_callback_data": payload.get("biz_opaque_callback_data"),
                }
            )
        needle = marker.encode()
        webhooks = []
        for d in sb.state.deliveries.values():
            if d.kind != "message" or needle not in d.body:
                continue
            accepted = [a["at"] for a in d.attempts if a.get("status_code") == 200]
            webhooks.append(
                {
                    "id": d.id,
                    "body": d.body.decode(errors="replace")[:2000],
                    "attempts": len(d.attempts),
                    "first_at": d.attempts[0]["at"] if d.attempts else None,
                    "accepted_at": accepted[0] if accepted else None,
                    "statuses": [a.get("status_code") or a.get("error") for a in d.attempts],
                }
            )
        return json_response({"sends": sends, "webhooks": webhooks})

    @app.get("/_sandbox/reads")
    async def reads(request: Request) -> HTTPResponse:
        return json_response({"reads": sb.state.reads})

    @app.get("/_sandbox/webhooks")
    async def webhooks(request: Request) -> HTTPResponse:
        return json_response({"webhooks": [d.view() for d in sb.state.deliveries.values()]})

    @app.get("/_sandbox/media/<media_id>")
    async def media(request: Request, media_id: str) -> HTTPResponse:
        item = sb.state.media.get(media_id)
        if item is None:
            return _bad("unknown media", 404)
        return json_response(
            {
                "id": item.id,
                "mime_type": item.mime_type,
                "size": len(item.data),
                "sha256": item.sha256_hex,
                "filename": item.filename,
            }
        )

    @app.get("/_sandbox/numbers")
    async def numbers(request: Request) -> HTTPResponse:
        return json_response({"numbers": [c.model_dump() for c in sb.state.options.channels]})

    @app.post("/_sandbox/numbers")
    async def add_number(request: Request) -> HTTPResponse:
        """Another WhatsApp business number (phone_number_id, display_phone_number, access_token[, waba_id]);
        webhooks for it are signed with the app secret, like the others. Gone after /_sandbox/reset."""
        try:
            channel = NewNumber.model_validate(request.json or {})
        except ValidationError as exc:
            return _errors(exc)
        if sb.state.channel(channel.phone_number_id) is not None:
            return _bad(f"number {channel.phone_number_id} exists", 409)
        sb.state.options.channels.append(Channel.model_validate(channel.model_dump()))
        return json_response(channel.model_dump(), status=201)

    @app.post("/_sandbox/reset")
    async def reset(request: Request) -> HTTPResponse:
        await sb.background.cancel_all()
        sb.state.options = sb.initial_options()
        sb.state.reset()
        sb.faults.reset()
        return json_response({"reset": True})

    def config_view() -> dict[str, Any]:
        windows = [
            {
                "phone_number_id": p,
                "wa_id": w,
                "last_inbound_at": t,
                "window_open": sb.state.window_open(p, w),
            }
            for (p, w), t in sb.state.last_inbound.items()
        ]
        return {
            "options": sb.state.options.model_dump(),
            "customers": windows,
            "expired_tokens": sorted(sb.state.expired_tokens),
        }

    @app.get("/_sandbox/config")
    async def get_config(request: Request) -> HTTPResponse:
        return json_response(config_view())

    @app.post("/_sandbox/config")
    async def set_config(request: Request) -> HTTPResponse:
        body = dict(request.json or {})
        customers = body.pop("customers", [])
        expire = body.pop("expire_tokens", [])
        try:
            options = GraphOptions.model_validate({**sb.state.options.model_dump(), **body})
            windows = [CustomerWindow.model_validate(c) for c in customers]
        except ValidationError as exc:
            return _errors(exc)
        sb.state.options = options
        sb.state.reset_limits()
        now = time.time()
        for w in windows:
            pnid = w.phone_number_id or options.channels[0].phone_number_id
            sb.state.last_inbound[(pnid, w.wa_id)] = (
                None if w.last_inbound_ago_s is None else now - w.last_inbound_ago_s
            )
        sb.state.expired_tokens.update(str(t) for t in expire)
        return json_response(config_view())

    @app.post("/_sandbox/verify")
    async def verify(request: Request) -> HTTPResponse:
        """Performs Meta's GET verification handshake against the gateway."""
        body = request.json or {}
        challenge = secrets.token_hex(8)
        params = {
            "hub.mode": "subscribe",
            "hub.verify_token": str(body.get("verify_token", "")),
            "hub.challenge": challenge,
        }
        response = await sb.client.get(str(body.get("url") or sb.state.options.webhook_url), params=params)
        return json_response(
            {
                "status_code": response.status_code,
                "body": response.text[:500],
                "challenge_echoed": response.status_code == 200 and response.text == challenge,
            }
        )
