"""Simulator API of the Bitrix24 stand-in under /_sandbox/: play the operator, inspect what happened."""

from __future__ import annotations

import base64
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError
from sanic import Request
from sanic.response import HTTPResponse, raw
from sanic.response import json as json_response

from . import media_samples
from .bitrix_events import auth_block, post_event
from .bitrix_settings import BitrixOptions, PortalSpec
from .bitrix_state import ChatMessage, PortalState
from .web import App

if TYPE_CHECKING:
    from .bitrix_app import BitrixSandbox


class FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "image.png"
    content_b64: str | None = None  # otherwise a tiny sample matching the extension


class OperatorMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chat_id: str  # the external chat id (what the gateway sent as chat.id)
    text: str = ""
    files: list[FileSpec] = []
    reply_to: int | None = None  # internal id of the quoted message (sent as message.params.REPLY_ID)
    operator: str = "Sandbox Operator"
    use_data_key: bool = False  # legacy data[DATA] instead of data[MESSAGES]
    omit_tokens: bool = False  # as when an automation rule sends (no access token in auth[])
    wrong_application_token: bool = False


class EventOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = ""
    operator: str = "Sandbox Operator"
    scalar_id: bool = False  # legacy: message.id as a single value instead of an array
    use_data_key: bool = False
    omit_tokens: bool = False
    wrong_application_token: bool = False


class NewPortal(PortalSpec):
    """POST /_sandbox/portals: a portal that is not set up yet (install it with .../install)."""

    model_config = ConfigDict(extra="forbid")
    member_id: str
    domain: str
    preregistered: bool = False


class TokenRequest(BaseModel):
    """POST /_sandbox/portals/{member_id}/tokens: tokens as another user or another app would hold them."""

    model_config = ConfigDict(extra="forbid")
    user_id: int = 1  # 1 is the administrator; others are ordinary users (see admin_user_ids)
    client_id: str | None = None  # default: the portal's app; anything else is "another app"
    refresh: bool = True


def _bad(message: str, status: int = 400) -> HTTPResponse:
    return json_response({"error": message}, status=status)


def chat_view(portal: PortalState) -> list[dict[str, Any]]:
    return [
        {
            "chat_id": c.id,
            "external_chat_id": c.external_id,
            "connector": c.connector,
            "line": c.line,
            "session_id": c.session_id,
            "user_id": c.user_id,
            "user": c.user,
            "name": c.name,
            "messages": [asdict(m) for m in c.messages],
        }
        for c in portal.chats.values()
    ]


def register(app: App, sb: BitrixSandbox) -> None:
    def portal_or_none(member_id: str) -> PortalState | None:
        return sb.portals.get(member_id)

    def auth(
        portal: PortalState, user_id: int, omit: bool, wrong: bool, refresh: bool = False
    ) -> dict[str, Any]:
        return auth_block(
            portal,
            sb.options,
            sb.base_url,
            user_id=user_id,
            with_tokens=not omit,
            refresh=refresh,
            app_token=("wrong-" + portal.spec.application_token) if wrong else None,
        )

    def host_file(portal: PortalState, spec: FileSpec) -> dict[str, Any]:
        mime = media_samples.mime_from_filename(spec.name)
        data = base64.b64decode(spec.content_b64) if spec.content_b64 else media_samples.for_mime(mime).data
        file_id = str(portal.next_id("file"))
        portal.files[file_id] = (data, mime, spec.name)
        entry: dict[str, Any] = {
            "name": spec.name,
            "type": "image" if mime.startswith("image/") else "file",
            "link": f"{sb.base_url}/upload/files/{file_id}/{spec.name}",
            "size": len(data),
        }
        if entry["type"] == "image":
            entry.update(width=1, height=1)
        return entry

    @app.get("/_sandbox/health")
    async def health(request: Request) -> HTTPResponse:
        return json_response({"status": "ok"})

    @app.get("/_sandbox/portals")
    async def portals(request: Request) -> HTTPResponse:
        return json_response({"portals": [sb.portal_view(p) for p in sb.portals.values()]})

    @app.post("/_sandbox/portals")
    async def add_portal(request: Request) -> HTTPResponse:
        try:
            spec = NewPortal.model_validate(request.json or {})
        except ValidationError as exc:
            return json_response(
                {"error": "invalid request", "details": exc.errors(include_url=False)}, status=400
            )
        if spec.member_id in sb.portals:
            return _bad(f"portal {spec.member_id} exists", 409)
        portal = sb.add_portal(PortalSpec.model_validate(spec.model_dump()))
        return json_response(sb.portal_view(portal), status=201)

    @app.post("/_sandbox/portals/<member_id>/tokens")
    async def issue_tokens(request: Request, member_id: str) -> HTTPResponse:
        p = portal_or_none(member_id)
        if p is None:
            return _bad("unknown portal", 404)
        try:
            spec = TokenRequest.model_validate(request.json or {})
        except ValidationError as exc:
            return json_response(
                {"error": "invalid request", "details": exc.errors(include_url=False)}, status=400
            )
        access, refresh = p.issue(
            sb.options,
            user_id=spec.user_id,
            with_refresh=spec.refresh,
            client_id=spec.client_id,
            current=False,
        )
        return json_response(
            {
                "access_token": access,
                "refresh_token": refresh,
                "expires": int(p.access[access].expires_at),
                "client_id": p.access[access].client_id,
                "user_id": spec.user_id,
                "admin": p.is_admin(spec.user_id),
                "member_id": p.spec.member_id,
                "client_endpoint": f"{sb.base_url}/rest/",
            }
        )

    @app.get("/_sandbox/portals/<member_id>")
    async def portal(request: Request, member_id: str) -> HTTPResponse:
        p = portal_or_none(member_id)
        return json_response(sb.portal_view(p)) if p else _bad("unknown portal", 404)

    @app.get("/_sandbox/portals/<member_id>/<what:chats|requests|contacts|stats|events|status-calls>")
    async def listing(request: Request, member_id: str, what: str) -> HTTPResponse:
        p = portal_or_none(member_id)
        if p is None:
            return _bad("unknown portal", 404)
        views: dict[str, Any] = {
            "chats": lambda: chat_view(p),
            "requests": lambda: p.requests,
            "contacts": lambda: list(p.contacts.values()),
            "events": lambda: p.events,
            "status-calls": lambda: p.status_calls,
            "stats": lambda: {
                "refresh_count": p.refresh_count,
                "rate_limited_count": p.rate_limited,
                "max_requests_in_any_second": p.peak.peak,
                "requests_total": len(p.requests),
                "expired_token_hits": p.expired_token_hits,
                "events_posted": len(p.events),
                "unmatched_statuses": p.unmatched_statuses,
                "duplicate_messages": sum(
                    1 for c in p.chats.values() for m in c.messages if m.duplicate_of is not None
                ),
            },
        }
        return json_response({what: views[what]()})

    @app.get("/_sandbox/faults/record")
    async def fault_record(request: Request) -> HTTPResponse:
        """What the fault suite counts: every chat message whose text carries `marker`, and every other
        message stored since `since` (notices, system messages), across all portals."""
        marker = request.args.get("marker", "")
        try:
            since = float(request.args.get("since", "0"))
        except ValueError:
            return _bad("since must be a number")
        if len(marker) < 4:
            return _bad("marker: at least 4 characters")
        marked: list[dict[str, Any]] = []
        other: list[dict[str, Any]] = []
        for p in sb.portals.values():
            for c in p.chats.values():
                for m in c.messages:
                    if marker in m.text:
                        target = marked
                    elif m.received_at >= since:
                        target = other
                    else:
                        continue
                    target.append(
                        {
                            "member_id": p.spec.member_id,
                            "chat_id": c.external_id,
                            "id": m.id,
                            "direction": m.direction,
                            "text": m.text[:500],
                            "external_ids": m.external_ids,
                            "delivered": m.delivered,
                            "received_at": m.received_at,
                        }
                    )
        return json_response({"marked": marked, "other": other[-5000:]})

    @app.post("/_sandbox/portals/<member_id>/operator-messages")
    async def operator_message(request: Request, member_id: str) -> HTTPResponse:
        p = portal_or_none(member_id)
        if p is None:
            return _bad("unknown portal", 404)
        try:
            spec = OperatorMessage.model_validate(request.json or {})
        except ValidationError as exc:
            return json_response(
                {"error": "invalid request", "details": exc.errors(include_url=False)}, status=400
            )
        if not spec.text.strip() and not spec.files:
            return _bad("an operator message needs text or files")
        chat = p.chat_by_external(spec.chat_id)
        if chat is None:
            return _bad(
                f"no Open Lines chat for external chat id {spec.chat_id} (the customer must write first)", 404
            )
        user_id = p.operator(spec.operator)
        connector = p.connectors.get(chat.connector)
        if connector is None or chat.connector not in p.active.get(chat.line, set()):
            # Bitrix24 refuses to dispatch and posts a system message into the chat (bitrix24.md §8).
            chat.messages.append(
                ChatMessage(
                    id=p.next_id("message"),
                    direction="system",
                    date=time.time(),
                    text="IMOL_CHAT_ERROR_CONNECTOR_SEND",
                    author="system",
                )
            )
            return _bad("the connector is not active on this line; nothing was sent", 409)
        text = spec.text
        if connector.flags.get("NEED_SIGNATURE", True) and text:
            text = f"[b]{spec.operator}:[/b][br] {text}"
        files = [host_file(p, f) for f in spec.files]
        message = ChatMessage(
            id=p.next_id("message"),
            direction="operator",
            text=text,
            date=time.time(),
            author=spec.operator,
            files=files,
            reply_to=spec.reply_to,
        )
        chat.messages.append(message)
        body: dict[str, Any] = {"user_id": str(user_id), "text": text}
        if files:
            body["files"] = files
        if spec.reply_to is not None:
            body["params"] = {"REPLY_ID": str(spec.reply_to)}  # UNCONFIRMED field, see docs/sandbox.md
        item = {
            "im": {"chat_id": str(chat.id), "message_id": str(message.id)},
            "message": body,
            "chat": {"id": chat.external_id},
        }
        data = {
            "CONNECTOR": chat.connector,
            "LINE": str(chat.line),
            "DATA" if spec.use_data_key else "MESSAGES": [item],
        }
        record = await post_event(
            sb.client,
            p,
            sb.options,
            "ONIMCONNECTORMESSAGEADD",
            data,
            auth(p, user_id, spec.omit_tokens, spec.wrong_application_token),
        )
        return json_response(
            {
                "gateway_status": record["status_code"],
                "status_code": record["status_code"],
                "error": record["error"],
                "im": item["im"],
                "text": text,
                "form": record["form"],
            }
        )

    @app.post("/_sandbox/portals/<member_id>/operator-messages/<message_id:int>/<action:update|delete>")
    async def operator_change(request: Request, member_id: str, message_id: int, action: str) -> HTTPResponse:
        p = portal_or_none(member_id)
        if p is None:
            return _bad("unknown portal", 404)
        try:
            spec = EventOptions.model_validate(request.json or {})
        except ValidationError as exc:
            return json_response(
                {"error": "invalid request", "details": exc.errors(include_url=False)}, status=400
            )
        found = next(
            (
                (c, m)
                for c in p.chats.values()
                for m in c.messages
                if m.id == message_id and m.direction == "operator"
            ),
            None,
        )
        if found is None:
            return _bad("unknown operator message", 404)
        chat, message = found
        flag = "EDIT_INTERNAL_MESSAGES" if action == "update" else "DEL_INTERNAL_MESSAGES"
        connector = p.connectors.get(chat.connector)
        if connector is not None and not connector.flags.get(flag, True):
            # Registered without it: Bitrix24 does not offer the operator this action (bitrix24.md §1).
            return _bad(f"the connector is registered with {flag}=N: operators cannot {action} messages", 409)
        if not message.external_ids:
            return _bad("no external id yet: the gateway never reported delivery (CONNECTOR_MID)", 409)
        if action == "update":
            message.text, message.edited = spec.text, True
        else:
            message.deleted = True
        ids: Any = message.external_ids[0] if spec.scalar_id else list(message.external_ids)
        body: dict[str, Any] = {"user_id": str(p.operator(spec.operator)), "id": ids}
        if action == "update":
            body["text"] = spec.text
        item = {
            "im": {"chat_id": str(chat.id), "message_id": str(message.id)},
            "message": body,
            "chat": {"id": chat.external_id},
        }
        data = {
            "CONNECTOR": chat.connector,
            "LINE": str(chat.line),
            "DATA" if spec.use_data_key else "MESSAGES": [item],
        }
        event = "ONIMCONNECTORMESSAGEUPDATE" if action == "update" else "ONIMCONNECTORMESSAGEDELETE"
        record = await post_event(
            sb.client,
            p,
            sb.options,
            event,
            data,
            auth(p, p.operator(spec.operator), spec.omit_tokens, spec.wrong_application_token),
        )
        return json_response(
            {
                "gateway_status": record["status_code"],
                "status_code": record["status_code"],
                "error": record["error"],
                "form": record["form"],
            }
        )

    @app.post("/_sandbox/portals/<member_id>/<what:line-delete|status-delete>")
    async def line_events(request: Request, member_id: str, what: str) -> HTTPResponse:
        p = portal_or_none(member_id)
        if p is None:
            return _bad("unknown portal", 404)
        line = int((request.json or {}).get("line", p.spec.line_id))
        connector = p.spec.connector_id
        p.active.setdefault(line, set()).discard(connector)
        data: Any
        if what == "line-delete":
            event, data = "ONIMCONNECTORLINEDELETE", str(line)  # data is the line id itself
        else:
            event, data = "ONIMCONNECTORSTATUSDELETE", {"connector": connector, "line": str(line)}
        record = await post_event(sb.client, p, sb.options, event, data, auth(p, 1, False, False))
        return json_response(
            {
                "gateway_status": record["status_code"],
                "status_code": record["status_code"],
                "error": record["error"],
            }
        )

    @app.post("/_sandbox/portals/<member_id>/<what:install|uninstall>")
    async def install(request: Request, member_id: str, what: str) -> HTTPResponse:
        p = portal_or_none(member_id)
        if p is None:
            return _bad("unknown portal", 404)
        if what == "install":
            data = {"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"}
            record = await post_event(
                sb.client, p, sb.options, "ONAPPINSTALL", data, auth(p, 1, False, False, refresh=True)
            )
        else:
            data = {"LANGUAGE_ID": "en", "CLEAN": "0"}
            record = await post_event(
                sb.client, p, sb.options, "ONAPPUNINSTALL", data, auth(p, 1, True, False)
            )
            p.bindings.clear()
            p.connectors.clear()
            for active in p.active.values():
                active.clear()
        return json_response(
            {
                "gateway_status": record["status_code"],
                "status_code": record["status_code"],
                "error": record["error"],
                "form": record["form"],
            }
        )

    @app.post("/_sandbox/portals/<member_id>/<what:expire-token|expire-refresh-token>")
    async def expire(request: Request, member_id: str, what: str) -> HTTPResponse:
        p = portal_or_none(member_id)
        if p is None:
            return _bad("unknown portal", 404)
        now = time.time()
        tokens: Any = p.access.values() if what == "expire-token" else p.refresh.values()
        count = 0
        for token in tokens:
            if token.expires_at > now:
                token.expires_at = now - 1
                count += 1
        return json_response({"expired": count})

    @app.get("/upload/files/<file_id>/<name>")
    async def file_download(request: Request, file_id: str, name: str) -> HTTPResponse:
        for p in sb.portals.values():
            if file_id in p.files:
                data, mime, _ = p.files[file_id]
                return raw(data, content_type=mime)
        return raw(b"Not Found", status=404)

    @app.post("/_sandbox/reset")
    async def reset(request: Request) -> HTTPResponse:
        await sb.background.cancel_all()
        sb.reset()
        sb.faults.reset()
        return json_response({"reset": True})

    @app.post("/_sandbox/config")
    async def config(request: Request) -> HTTPResponse:
        patch = dict(request.json or {})
        if "portals" in patch:
            return _bad("portals are fixed at start-up (SANDBOX_BITRIX_PORTALS)")
        try:
            sb.options = BitrixOptions.model_validate({**sb.options.model_dump(), **patch})
        except ValidationError as exc:
            return json_response(
                {"error": "invalid request", "details": exc.errors(include_url=False)}, status=400
            )
        for p in sb.portals.values():
            p.apply_limits(sb.options)
        return json_response(sb.options.model_dump())
