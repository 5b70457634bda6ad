"""The template picker (issue 16): an IM_TEXTAREA placement in Open Lines chats (bound at install with
placement.bind, OPTIONS.context LINES), served by bitrix-ingress-web.

POST /webhooks/bitrix24/templates        Bitrix24 opens it: member_id, AUTH_ID, REFRESH_ID, PLACEMENT_OPTIONS
                                         {"dialogId": "chat<N>"}. Lists the approved templates of the chat's
                                         WhatsApp number (mapper ListTemplates) and, for media headers, the
                                         operator's Bitrix24 Drive files (disk.* with the operator's token).
POST /webhooks/bitrix24/templates/send   A template form: checked with the same rules as the /template
                                         command (zaptrix.template_command), then produced to Kafka as an
                                         OperatorMessage carrying that command (meta-dispatcher sends it).

Authentication is the settings page's: AUTH_ID must be a token of our app on member_id, as Bitrix24's OAuth
server confirms; the chat must be a conversation of that portal (mapper FindConversation by portal and chat,
another portal's chat is NOT_FOUND like an unknown one). Nothing is shown or sent otherwise.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sanic import HTTPResponse, Request
from sanic import html as html_response
from zaptrix.kafka import PublishError
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcFailed, RpcNotFound
from zaptrix.template_command import (
    CommandError,
    build,
    check_header_file,
    choose,
    command_text,
    parse,
    shape,
)
from zaptrix.v1 import events_pb2, mapper_pb2

from bitrix_ingress.bitrix_rest.client import BitrixError, TokenError
from bitrix_ingress.bitrix_rest.portal import PortalClient, Token
from bitrix_ingress.formparse import FormError, get_str
from bitrix_ingress.metrics import TEMPLATE_PICKER
from bitrix_ingress.settings import WebSettings
from bitrix_ingress.web.http import problem, query, read_body
from bitrix_ingress.web.oauth_check import Refused, VerifiedAuth
from bitrix_ingress.web.resources import WebResources
from bitrix_ingress.web.template_page import DiskFile, PageContext, page

log = get_logger(__name__)

TEMPLATES_PATH = "/webhooks/bitrix24/templates"
SEND_PATH = "/webhooks/bitrix24/templates/send"
PLACEMENT = "IM_TEXTAREA"
_DIALOG = re.compile(r"chat(\d{1,18})")
_NONCE = re.compile(r"[0-9a-f]{16,64}")
_VALUE_MAX = 2000
MAX_DISK_FILES = 200
# A Drive file's kind by its name (Drive lists no MIME type); the header rules are Meta's (HEADER_MEDIA).
_DISK_KINDS = {
    ".jpg": ("IMAGE", "image/jpeg"),
    ".jpeg": ("IMAGE", "image/jpeg"),
    ".png": ("IMAGE", "image/png"),
    ".mp4": ("VIDEO", "video/mp4"),
    ".3gp": ("VIDEO", "video/3gpp"),
    ".pdf": ("DOCUMENT", "application/pdf"),
}


def placement_params(settings: WebSettings) -> dict[str, Any]:
    """placement.bind of the picker: the panel above the message box of Open Lines chats only
    (research-2026-12.md 2.6: IM_TEXTAREA, OPTIONS.context LINES)."""
    return {
        "PLACEMENT": PLACEMENT,
        "HANDLER": settings.url(TEMPLATES_PATH),
        "TITLE": "WhatsApp templates",
        "DESCRIPTION": "Send an approved WhatsApp template to this customer",
        "OPTIONS": {
            "context": "LINES",
            "role": "USER",
            "iconName": "fa-whatsapp",
            "width": 480,
            "height": 560,
        },
    }


async def ensure_placement(
    member_id: str, token: Token, portals: PortalClient, settings: WebSettings
) -> list[str]:
    """Bind the picker once (idempotent: a binding to another handler is replaced). A portal that refuses it
    (no placement scope) keeps working: the /template command needs no placement."""
    want = settings.url(TEMPLATES_PATH)
    try:
        bound = await portals.call_with_token(member_id, token, "placement.get", {})
        ours = (
            [b for b in bound if isinstance(b, dict) and str(b.get("placement", "")).upper() == PLACEMENT]
            if isinstance(bound, list)
            else []
        )
        if any(str(b.get("handler")) == want for b in ours):
            return []
        changes = []
        for b in ours:
            await portals.call_with_token(
                member_id,
                token,
                "placement.unbind",
                {"PLACEMENT": PLACEMENT, "HANDLER": str(b.get("handler"))},
            )
            changes.append(f"unbound stale {PLACEMENT} -> {b.get('handler')}")
        await portals.call_with_token(member_id, token, "placement.bind", placement_params(settings))
        return [*changes, f"bound {PLACEMENT} (template picker)"]
    except BitrixError as exc:
        if "already" in exc.description.lower() or "already" in exc.code.lower():
            return []
        if not exc.permanent:
            raise
        log.warning(
            "template picker not bound: the /template command still works",
            member_id=member_id,
            error=exc.reason,
        )
        return [f"skipped {PLACEMENT}: {exc.code}"]


async def request_syncs(
    resources: WebResources, member_id: str, reason: str, phone_number_ids: list[str]
) -> None:
    """Ask meta-dispatcher to read these channels' templates from the Graph API (TemplateSyncRequest)."""
    producer = resources.producer.producer
    if producer is None or not phone_number_ids:
        return
    now = int(time.time())
    envelopes = []
    for pnid in phone_number_ids:
        env = events_pb2.Envelope(
            event_id=f"tpl-sync:{pnid}:{reason}:{now}",
            conversation_key=f"{pnid}:templates",
            source=events_pb2.PLATFORM_BITRIX24,
            template_sync_request=events_pb2.TemplateSyncRequest(
                member_id=member_id, phone_number_id=pnid, reason=reason
            ),
        )
        env.occurred_at.seconds = now
        envelopes.append(env)
    try:
        await asyncio.wait_for(
            producer.publish(resources.topic, envelopes), timeout=resources.settings.publish_timeout_s
        )
    except (PublishError, TimeoutError) as exc:  # the next picker opening or /template asks again
        log.warning("template sync request not produced", member_id=member_id, error=repr(exc))


@dataclass
class Opened:
    """A verified picker request: the operator's tokens, the chat's conversation and channel."""

    member_id: str
    auth: VerifiedAuth
    dialog: str
    conversation: mapper_pb2.Conversation
    channel: mapper_pb2.Channel

    @property
    def token(self) -> Token:
        return Token(self.member_id, self.auth.access_token, self.auth.client_endpoint, self.auth.expires_at)


class Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _dialog(form: dict[str, Any]) -> str:
    dialog = get_str(form, "dialog")
    if not dialog:
        raw = get_str(form, "PLACEMENT_OPTIONS")
        try:
            options = json.loads(raw) if raw else {}
        except ValueError:
            raise Refusal(400, "PLACEMENT_OPTIONS is not JSON") from None
        dialog = str(options.get("dialogId") or "") if isinstance(options, dict) else ""
    if not _DIALOG.fullmatch(dialog):
        raise Refusal(400, "the picker opens in an Open Lines chat (dialogId chat<N>)")
    return dialog


class TemplatePicker:
    def __init__(self, resources: WebResources) -> None:
        self.resources = resources

    async def open(self, request: Request, form: dict[str, Any]) -> Opened | HTTPResponse:
        """Verify the operator's token with the OAuth server and find the chat's conversation and channel."""
        r, guard = self.resources, self.resources.guard
        placement = get_str(form, "PLACEMENT")
        if placement and placement != PLACEMENT:
            raise Refusal(400, f"unexpected PLACEMENT {placement[:40]!r}")
        member_id, auth_id = get_str(form, "member_id"), get_str(form, "AUTH_ID")
        if not member_id or not auth_id:
            raise Refusal(401, "picker request without member_id/AUTH_ID")
        dialog = _dialog(form)
        try:
            auth = await guard.oauth.verify(
                member_id=member_id,
                access_token=auth_id,
                refresh_token=get_str(form, "REFRESH_ID"),
                claimed_expires_at=time.time() + 600,
            )
        except Refused as exc:
            return await guard.refuse(request, "templates", exc, member_id)
        try:
            conversation = await r.deps.find_chat_conversation(member_id, dialog[4:])
            channels = (await r.deps.list_channels(member_id)).channels
        except RpcNotFound:
            raise Refusal(404, "this chat is not a WhatsApp conversation of this portal") from None
        channel = next((c for c in channels if c.phone_number_id == conversation.phone_number_id), None)
        if channel is None or conversation.member_id != member_id:
            raise Refusal(404, "this chat is not a WhatsApp conversation of this portal")
        return Opened(member_id, auth, dialog, conversation, channel)

    async def _guarded(self, request: Request, route: str, send: bool) -> HTTPResponse:
        limited = self.resources.guard.rate_limited(request, "templates")
        if limited is not None:
            return limited
        try:
            form = {**query(request), **read_body(request)}
            opened = await self.open(request, form)
            if isinstance(opened, HTTPResponse):
                TEMPLATE_PICKER.labels(route, "refused").inc()
                return opened
            answer = await (self._send(opened, form) if send else self._page(opened))
        except FormError as exc:
            TEMPLATE_PICKER.labels(route, "malformed").inc()
            return problem(400, str(exc))
        except Refusal as exc:
            TEMPLATE_PICKER.labels(route, "refused").inc()
            return problem(exc.status, exc.reason)
        except RpcFailed as exc:
            TEMPLATE_PICKER.labels(route, "unavailable").inc()
            log.error("template picker: dependency failed", reason=exc.reason)
            return problem(503, "temporarily unavailable, reopen the panel")
        except TokenError:
            TEMPLATE_PICKER.labels(route, "refused").inc()
            return problem(401, "AUTH_ID is not valid on this portal")
        return answer

    async def page_route(self, request: Request) -> HTTPResponse:
        return await self._guarded(request, "page", send=False)

    async def send_route(self, request: Request) -> HTTPResponse:
        return await self._guarded(request, "send", send=True)

    # --- the page ------------------------------------------------------------------------------------

    async def _context(self, opened: Opened, need_disk: bool) -> PageContext:
        ctx = PageContext(
            member_id=opened.member_id,
            auth_id=opened.auth.access_token,
            refresh_id=opened.auth.refresh_token,
            dialog=opened.dialog,
            send_url=self.resources.settings.url(SEND_PATH),
            nonce=secrets.token_hex(12),
            number=opened.channel.display_phone_number or opened.channel.phone_number_id,
            customer=opened.conversation.contact_name or "this customer",
        )
        if need_disk:
            try:
                ctx.disk = await self._disk_files(opened)
            except BitrixError as exc:
                ctx.disk_note = (
                    f"Your Bitrix24 Drive could not be read ({exc.code}); media headers need a Drive file."
                )
        return ctx

    async def _disk_files(self, opened: Opened) -> list[DiskFile]:
        """The media files at the root of the operator's own Drive (profile → disk.storage.getlist →
        disk.storage.getchildren), with the operator's token: they see only what they may."""
        portals, token, member = self.resources.portals, opened.token, opened.member_id
        profile = await portals.call_with_token(member, token, "profile", {})
        user = str(profile.get("ID", "")) if isinstance(profile, dict) else ""
        storages = await portals.call_with_token(
            member, token, "disk.storage.getlist", {"filter": {"ENTITY_TYPE": "user", "ENTITY_ID": user}}
        )
        storage = (
            next((s for s in storages if isinstance(s, dict)), None) if isinstance(storages, list) else None
        )
        if storage is None:
            return []
        children = await portals.call_with_token(
            member, token, "disk.storage.getchildren", {"id": storage.get("ID")}
        )
        out: list[DiskFile] = []
        for item in children if isinstance(children, list) else []:
            if not isinstance(item, dict) or str(item.get("TYPE")) != "file":
                continue
            name = str(item.get("NAME", ""))[:200]
            kind = _DISK_KINDS.get(_ext(name))
            if kind is not None:
                out.append(DiskFile(str(item.get("ID", ""))[:40], name, kind[0]))
        return out[:MAX_DISK_FILES]

    async def _page(self, opened: Opened, error: str = "", done: str = "", status: int = 200) -> HTTPResponse:
        r = self.resources
        templates = await r.deps.list_templates(opened.member_id, opened.conversation.phone_number_id)
        if not templates and not await r.deps.list_templates(
            opened.member_id, opened.conversation.phone_number_id, False
        ):
            await request_syncs(r, opened.member_id, "picker", [opened.conversation.phone_number_id])
        need_disk = any(shape(t).media for t in templates)
        ctx = await self._context(opened, need_disk)
        TEMPLATE_PICKER.labels("page", "shown").inc()
        return html_response(page(ctx, templates, error, done), status=status)

    # --- a submitted template --------------------------------------------------------------------------

    async def _send(self, opened: Opened, form: dict[str, Any]) -> HTTPResponse:
        r = self.resources
        name, language, nonce = get_str(form, "template"), get_str(form, "language"), get_str(form, "nonce")
        if not _NONCE.fullmatch(nonce):
            raise Refusal(400, "the form has no valid nonce; reopen the panel")
        pnid = opened.conversation.phone_number_id
        try:
            cmd = parse(command_text(name, language, []))
            template = choose(await r.deps.list_templates(opened.member_id, pnid, name=name), cmd, "")
            cmd.values = _values(template, form)
            text = command_text(template.name, template.language, cmd.values)
            file = await self._header_file(opened, template, get_str(form, "disk_file"))
            build(template, parse(text), {"id": "checked"} if file is not None else None)
        except CommandError as exc:
            TEMPLATE_PICKER.labels("send", "invalid").inc()
            return await self._page(opened, error=f"Not sent: {exc}", status=400)
        om = events_pb2.OperatorMessage(
            member_id=opened.member_id,
            domain=opened.auth.domain,
            connector_id=opened.channel.connector_id or r.settings.connector_id,
            line_id=opened.channel.line_id,
            bitrix_chat_id=opened.dialog[4:],
            bitrix_message_id="",  # no message in the chat: meta-dispatcher posts a notice once it is sent
            external_chat_id=opened.conversation.external_chat_id,
            text_bbcode=text,
            files=[file] if file is not None else [],
        )
        env = events_pb2.Envelope(
            event_id=f"b24-picker:{opened.member_id}:{nonce}",  # a double submit is one send (dedupe)
            conversation_key=f"{pnid}:{opened.conversation.wa_id}",
            source=events_pb2.PLATFORM_BITRIX24,
            operator_message=om,
        )
        env.occurred_at.GetCurrentTime()
        producer = r.producer.producer
        try:
            if producer is None:
                raise PublishError("producer not started")
            await asyncio.wait_for(producer.publish(r.topic, [env]), timeout=r.settings.publish_timeout_s)
        except (PublishError, TimeoutError) as exc:
            TEMPLATE_PICKER.labels("send", "unavailable").inc()
            log.error("template picker send not produced", member_id=opened.member_id, error=repr(exc))
            return await self._page(
                opened, error="Not sent: the gateway cannot take it now, try again.", status=503
            )
        TEMPLATE_PICKER.labels("send", "accepted").inc()
        log.info("template picker send accepted", event_id=env.event_id, template=template.name)
        return await self._page(
            opened, done=f"“{template.name}” ({template.language}) is on its way; the chat shows the result."
        )

    async def _header_file(
        self, opened: Opened, template: mapper_pb2.MessageTemplate, file_id: str
    ) -> events_pb2.BitrixFile | None:
        """The Drive file chosen for a media header (disk.file.get with the operator's token), type-checked."""
        media = shape(template).media
        if not media:
            return None
        if not file_id:
            raise CommandError(f"Choose the header {media} from your Bitrix24 Drive.")
        if not file_id.isdigit() or len(file_id) > 20:
            raise CommandError("The chosen Drive file is not valid.")
        try:
            info = await self.resources.portals.call_with_token(
                opened.member_id, opened.token, "disk.file.get", {"id": file_id}
            )
        except BitrixError as exc:
            if not exc.permanent:
                raise RpcFailed("bitrix24 disk.file.get", exc.reason) from exc
            raise CommandError(f"The Drive file could not be read ({exc.code}).") from exc
        if not isinstance(info, dict) or not isinstance(info.get("DOWNLOAD_URL"), str):
            raise CommandError("The Drive file has no download link.")
        name = str(info.get("NAME", "file"))[:200]
        kind = _DISK_KINDS.get(_ext(name))
        mime = kind[1] if kind else "application/octet-stream"
        check_header_file(media, mime, name)
        size = str(info.get("SIZE", "0"))
        return events_pb2.BitrixFile(
            name=name,
            type="image" if media == "image" else "file",
            link=info["DOWNLOAD_URL"],
            size=int(size) if size.isdigit() else 0,
            mime_type=mime,
        )


def _ext(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot >= 0 else ""


def _values(template: mapper_pb2.MessageTemplate, form: dict[str, Any]) -> list[str]:
    """The form's values as the command's: body variables in order (named: name=value), then header= and
    buttonN=. Values are bounded; "|" is refused by command_text."""
    s = shape(template)

    def value(key: str) -> str:
        v = get_str(form, key).strip()
        if len(v) > _VALUE_MAX:
            raise CommandError(f"A value is longer than {_VALUE_MAX} characters.")
        return v

    out = [f"{v}={value(f'var_{v}')}" if s.named else value(f"var_{v}") for v in s.body_vars]
    if s.header_vars:
        out.append(f"header={value('header')}")
    out += [f"button{i}={value(f'button{i}')}" for i, n in sorted(s.url_buttons.items()) if n]
    return out
