"""Simulator API for coexistence and consent webhooks (research-2026-12.md 1.6, 1.11), signed like every
other delivery: the business writes from the WhatsApp Business app (smb_message_echoes), the customer
edits or revokes a message, the app's contact sync (smb_app_state_sync), a history chunk, and the
customer stopping or resuming marketing messages (user_preferences)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sanic import Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from .graph_settings import Channel
from .graph_state import new_wamid
from .graph_webhooks import envelope, value_of
from .web import App

if TYPE_CHECKING:
    from .graph_app import GraphSandbox


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    phone_number_id: str | None = None
    signature: Literal["valid", "invalid", "missing"] = "valid"
    timestamp: int | None = None


class EchoSpec(_Spec):
    text: str = Field(min_length=1, max_length=4096)


class EditSpec(_Spec):
    original_message_id: str
    text: str = Field("", max_length=4096)  # revoke: unused
    name: str = "Sandbox Customer"


class PreferenceSpec(_Spec):
    value: Literal["stop", "resume"]
    name: str = "Sandbox Customer"


class ContactSyncSpec(_Spec):
    full_name: str = Field(min_length=1, max_length=256)
    first_name: str = ""
    action: Literal["add", "remove"] = "add"


class HistorySpec(_Spec):
    texts: list[str] = Field(
        default_factory=list, max_length=1000
    )  # oldest first; even: customer, odd: business
    phase: int = Field(1, ge=0, le=2)
    chunk_order: int = Field(1, ge=1)  # of the first chunk
    # Messages per chunk: each chunk is its own webhook (chunk_order counting up, progress rising to
    # ``progress`` with the last); 0: all in one chunk.
    chunk_size: int = Field(0, ge=0, le=1000)
    progress: int = Field(100, ge=0, le=100)
    declined: bool = False  # the business declined sharing: one chunk with errors[] (code 2593109)


def _now(spec: _Spec) -> str:
    return str(spec.timestamp or int(time.time()))


def echo_value(channel: Channel, wa_id: str, spec: EchoSpec) -> dict[str, Any]:
    echo = {
        "from": channel.display_phone_number,
        "to": wa_id,
        "id": new_wamid(),
        "timestamp": _now(spec),
        "type": "text",
        "text": {"body": spec.text},
    }
    return value_of(channel, message_echoes=[echo])


def edit_value(channel: Channel, wa_id: str, spec: EditSpec, kind: str) -> dict[str, Any]:
    message: dict[str, Any] = {"from": wa_id, "id": new_wamid(), "timestamp": _now(spec), "type": kind}
    if kind == "edit":
        message["edit"] = {
            "original_message_id": spec.original_message_id,
            "message": {"type": "text", "text": {"body": spec.text}},
        }
    else:
        message["revoke"] = {"original_message_id": spec.original_message_id}
    contact = {"profile": {"name": spec.name}, "wa_id": wa_id}
    return value_of(channel, contacts=[contact], messages=[message])


def preference_value(channel: Channel, wa_id: str, spec: PreferenceSpec) -> dict[str, Any]:
    detail = "User requested to stop marketing messages" if spec.value == "stop" else "User resumed marketing"
    pref = {
        "wa_id": wa_id,
        "detail": detail,
        "category": "marketing_messages",
        "value": spec.value,
        "timestamp": int(_now(spec)),
    }
    contact = {"profile": {"name": spec.name}, "wa_id": wa_id}
    return value_of(channel, contacts=[contact], user_preferences=[pref])


def contact_sync_value(channel: Channel, wa_id: str, spec: ContactSyncSpec) -> dict[str, Any]:
    item = {
        "type": "contact",
        "contact": {"full_name": spec.full_name, "first_name": spec.first_name, "phone_number": wa_id},
        "action": spec.action,
        "metadata": {"timestamp": _now(spec)},
    }
    return value_of(channel, state_sync=[item])


def history_values(channel: Channel, wa_id: str, spec: HistorySpec) -> list[dict[str, Any]]:
    """The documented shape (history webhook reference): value.history[] chunks of {metadata: {phase,
    chunk_order, progress}, threads: [{id: <customer>, messages: [...]}]}, each message with
    history_context.status; the business's messages come from its number, with ``to``."""
    if spec.declined:
        error = {
            "code": 2593109,
            "title": "History sharing is turned off by the business",
            "message": "History sharing is turned off by the business",
            "error_data": {"details": "History sharing is turned off by the business"},
        }
        return [value_of(channel, history=[{"errors": [error]}])]
    start = int(_now(spec)) - 86400 * 30
    messages = []
    for i, text in enumerate(spec.texts):
        business = i % 2 == 1
        messages.append(
            {
                "from": channel.display_phone_number if business else wa_id,
                **({"to": wa_id} if business else {}),
                "id": new_wamid(),
                "timestamp": str(start + i * 60),
                "type": "text",
                "text": {"body": text},
                "history_context": {"status": "READ" if business else "DELIVERED"},
            }
        )
    size = spec.chunk_size or max(1, len(messages))
    parts = [messages[i : i + size] for i in range(0, len(messages), size)] or [[]]
    values = []
    for n, part in enumerate(parts):
        progress = spec.progress * (n + 1) // len(parts)
        chunk = {
            "metadata": {"phase": spec.phase, "chunk_order": spec.chunk_order + n, "progress": progress},
            "threads": [{"id": wa_id, "messages": part}] if part else [],
        }
        values.append(value_of(channel, history=[chunk]))
    return values


def register(app: App, sb: GraphSandbox) -> None:
    def channel_for(phone_number_id: str | None) -> Channel | None:
        if phone_number_id is None:
            return sb.state.options.channels[0]
        return sb.state.channel(phone_number_id)

    async def deliver(
        kind: str, field: str, channel: Channel, value: dict[str, Any], signature: str
    ) -> HTTPResponse:
        payload = envelope(channel, value, field)
        delivery, status = await sb.sender.send(kind, payload, signature)
        return json_response(
            {
                "delivery_id": delivery.id,
                "gateway_status": status,
                "status_code_from_gateway": status,
                "payload": payload,
            }
        )

    def parse(model: type[_Spec], request: Request) -> _Spec | HTTPResponse:
        try:
            return model.model_validate(request.json or {})
        except ValidationError as exc:
            return json_response({"error": "invalid request", "details": exc.errors(include_url=False)}, 400)

    async def run(request: Request, wa_id: str, model: type[_Spec], kind: str) -> HTTPResponse:
        spec = parse(model, request)
        if isinstance(spec, HTTPResponse):
            return spec
        channel = channel_for(spec.phone_number_id)
        if channel is None:
            return json_response({"error": f"unknown phone_number_id {spec.phone_number_id}"}, 404)
        if isinstance(spec, EchoSpec):
            return await deliver(
                kind, "smb_message_echoes", channel, echo_value(channel, wa_id, spec), spec.signature
            )
        if isinstance(spec, EditSpec):
            return await deliver(
                kind, "messages", channel, edit_value(channel, wa_id, spec, kind), spec.signature
            )
        if isinstance(spec, PreferenceSpec):
            value = preference_value(channel, wa_id, spec)
            stopped = sb.state.marketing_stopped
            (stopped.add if spec.value == "stop" else stopped.discard)((channel.phone_number_id, wa_id))
            return await deliver(kind, "user_preferences", channel, value, spec.signature)
        if isinstance(spec, ContactSyncSpec):
            value = contact_sync_value(channel, wa_id, spec)
            return await deliver(kind, "smb_app_state_sync", channel, value, spec.signature)
        assert isinstance(spec, HistorySpec)
        if not spec.texts and not spec.declined:
            return json_response({"error": "texts (one per message) or declined is required"}, 400)
        answers = [
            await deliver(kind, "history", channel, v, spec.signature)
            for v in history_values(channel, wa_id, spec)
        ]
        chunks = [json.loads(a.body or b"{}") for a in answers]
        return json_response(
            {
                "delivery_id": chunks[-1]["delivery_id"],
                "gateway_status": max(c["gateway_status"] for c in chunks),
                "chunks": chunks,
            }
        )

    @app.post("/_sandbox/customers/<wa_id>/echo")
    async def echo(request: Request, wa_id: str) -> HTTPResponse:
        return await run(request, wa_id, EchoSpec, "echo")

    @app.post("/_sandbox/customers/<wa_id>/edit")
    async def edit(request: Request, wa_id: str) -> HTTPResponse:
        return await run(request, wa_id, EditSpec, "edit")

    @app.post("/_sandbox/customers/<wa_id>/revoke")
    async def revoke(request: Request, wa_id: str) -> HTTPResponse:
        return await run(request, wa_id, EditSpec, "revoke")

    @app.post("/_sandbox/customers/<wa_id>/preferences")
    async def preferences(request: Request, wa_id: str) -> HTTPResponse:
        return await run(request, wa_id, PreferenceSpec, "user_preferences")

    @app.post("/_sandbox/customers/<wa_id>/contact-sync")
    async def contact_sync(request: Request, wa_id: str) -> HTTPResponse:
        return await run(request, wa_id, ContactSyncSpec, "smb_app_state_sync")

    @app.post("/_sandbox/customers/<wa_id>/history")
    async def history(request: Request, wa_id: str) -> HTTPResponse:
        return await run(request, wa_id, HistorySpec, "history")
