"""POST /webhooks/bitrix24/settings (the SETTING_CONNECTOR placement opens the page) and
POST /webhooks/bitrix24/settings/action (everything the page does afterwards).

Opening: the placement's AUTH_ID must be a token of our app on the named portal (Bitrix24's OAuth server
says so, as for installs: oauth_check.py) held by an administrator of that portal (`profile`); then the
connector is activated on the line (as every connector's settings handler does) and the page is rendered
with a session token (session.py). Actions: the session token alone says which portal and line; a line
switch also re-checks a fresh BX24 token. A forged or expired session, another portal's number or dead
letter: 401/403/404 pages that say nothing about anyone else. Never a 500.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from sanic import HTTPResponse, Request
from sanic import html as html_response
from zaptrix.binding import ChannelBinder, InvalidBinding, NotThisPortals, NumberCredentials, NumberInUse
from zaptrix.dead_letters import AuditUnavailable, DeadLetterNotFound, DeadLetters, mapper_portals
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcError, RpcNotFound
from zaptrix.v1 import token_keeper_pb2

from bitrix_ingress.bitrix_rest.client import BitrixError, TokenError
from bitrix_ingress.bitrix_rest.portal import Token
from bitrix_ingress.formparse import FormError, get_str
from bitrix_ingress.metrics import INSTALLS
from bitrix_ingress.web.http import query, read_body
from bitrix_ingress.web.install import require_admin, verified_token
from bitrix_ingress.web.install_guard import REFUSALS
from bitrix_ingress.web.oauth_check import BAD_SESSION, MALFORMED, MEMBER_MISMATCH, Refused
from bitrix_ingress.web.resources import WebResources
from bitrix_ingress.web.settings_page.i18n import language_of
from bitrix_ingress.web.settings_page.line import set_line
from bitrix_ingress.web.settings_page.placement import PlacementRefused, parse_placement
from bitrix_ingress.web.settings_page.render import csp, message_page, page
from bitrix_ingress.web.settings_page.session import BadSession, Session, SessionSigner
from bitrix_ingress.web.settings_page.view import Notice, PageView, line_numbers, portal_dead_letters

log = get_logger(__name__)

_REFUSAL_TEXT = {
    400: ("refused.title", "refused.malformed"),
    401: ("refused.title", "refused.auth"),
    403: ("refused.title", "refused.forbidden"),
    404: ("refused.title", "refused.not_found"),
    429: ("refused.title", "refused.busy"),
    503: ("unavailable.title", "unavailable.text"),
}
ACTIONS = frozenset(
    {
        "show",
        "bind",
        "check",
        "pause",
        "resume",
        "unbind",
        "replay",
        "replay_confirmed",
        "line_on",
        "line_off",
    }
)


def _portal_origin(client_endpoint: str) -> str:
    parts = urlsplit(client_endpoint)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


class SettingsPage:
    def __init__(self, resources: WebResources) -> None:
        self.resources = resources
        settings = resources.settings
        self.signer = SessionSigner(
            settings.settings_session_secret.get_secret_value(), settings.settings_session_ttl_s
        )
        clients = resources.clients
        self.binder = ChannelBinder(clients.mapper, clients.token_keeper, settings, timeout=clients.timeout)
        self.dead_letters = DeadLetters(
            resources.kafka, portals=mapper_portals(clients.mapper, clients.timeout)
        )

    async def aclose(self) -> None:
        await self.binder.aclose()

    # --- answers ----------------------------------------------------------------------------------------

    def refusal(self, status: int, lang: str = "en") -> HTTPResponse:
        title, text = _REFUSAL_TEXT.get(status, _REFUSAL_TEXT[403])
        return html_response(message_page(lang, title, text), status=status)

    async def refuse(self, request: Request, exc: Refused, member_id: str, lang: str) -> HTTPResponse:
        """Counted, logged and rate-limited like every refused install/settings request (install_guard)."""
        answered = await self.resources.guard.refuse(request, "settings", exc, member_id)
        return self.refusal(answered.status, lang)

    async def render(self, view: PageView, status: int = 200) -> HTTPResponse:
        s = view.session
        ctx = self.resources
        view.sdk_url = ctx.settings.bitrix_js_sdk_url
        view.numbers = await line_numbers(self.binder, ctx.clients.mapper, s, ctx.clients.timeout)
        if view.confirm is None:
            view.dead_letters = await portal_dead_letters(self.dead_letters, s.member_id)
        body, nonce = page(view, ctx.settings.connector_name)
        response = html_response(body, status=status)
        response.headers["Content-Security-Policy"] = csp(nonce, view.sdk_url, s.origin)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    # --- POST /webhooks/bitrix24/settings --------------------------------------------------------------

    async def open(self, request: Request) -> HTTPResponse:
        try:
            return await self._open(request)
        except Exception:
            log.exception("settings page failed to open")
            return self.refusal(503)

    async def _open(self, request: Request) -> HTTPResponse:
        ctx, settings, guard = self.resources, self.resources.settings, self.resources.guard
        limited = guard.rate_limited(request, "settings")
        if limited is not None:
            return self.refusal(429)
        try:
            req = parse_placement(read_body(request), query(request), settings)
        except (FormError, PlacementRefused) as exc:
            REFUSALS.labels("settings", MALFORMED).inc()
            status = exc.status if isinstance(exc, PlacementRefused) else 400
            return self.refusal(status)
        lang = language_of(req.lang)
        try:
            auth = await guard.oauth.verify(
                member_id=req.member_id,
                access_token=req.auth_id,
                refresh_token=req.refresh_id,
                claimed_expires_at=time.time() + 600,
            )
            user = await require_admin(req.member_id, verified_token(auth), ctx.portals)
        except Refused as exc:
            return await self.refuse(request, exc, req.member_id, lang)
        try:
            stored = await ctx.deps.get_portal_status(req.member_id)
            if req.application_token:
                verdict = await ctx.deps.verify_application_token(req.member_id, req.application_token)
                if not verdict.valid:
                    return self.refusal(401, lang)
            token = Token(req.member_id, auth.access_token, stored.client_endpoint, auth.expires_at)
            activate = req.action != "deactivate"
            await set_line(ctx.portals, settings, token, req.line, activate)
        except RpcNotFound:
            return self.refusal(401, lang)  # not installed: install the app first
        except TokenError:
            return self.refusal(401, lang)
        except (RpcError, BitrixError) as exc:
            log.error("settings page: dependency failed", reason=str(exc)[:300], member_id=req.member_id)
            return self.refusal(503, lang)
        INSTALLS.labels("settings", "activated" if activate else "deactivated").inc()
        log.info("settings page opened", member_id=req.member_id, line=req.line, user=user, active=activate)
        session = Session(
            member_id=req.member_id,
            line=req.line,
            lang=lang,
            user=user,
            expires_at=0,
            active=activate,
            origin=_portal_origin(stored.client_endpoint),
        )
        session_token = self.signer.issue(
            session.member_id, session.line, lang, user, active=activate, origin=session.origin
        )
        session = self.signer.check(session_token)
        return await self.render(PageView(session=session, token=session_token, auth_id=req.auth_id))

    # --- POST /webhooks/bitrix24/settings/action -------------------------------------------------------

    async def act(self, request: Request) -> HTTPResponse:
        try:
            return await self._act(request)
        except Exception:
            log.exception("settings page action failed")
            return self.refusal(503)

    async def _act(self, request: Request) -> HTTPResponse:
        ctx, guard = self.resources, self.resources.guard
        limited = guard.rate_limited(request, "settings")
        if limited is not None:
            return self.refusal(429)
        try:
            form = read_body(request)
        except FormError:
            REFUSALS.labels("settings", MALFORMED).inc()
            return self.refusal(400)
        try:
            session = self.signer.check(get_str(form, "session"))
        except BadSession as exc:
            return await self.refuse(request, Refused(BAD_SESSION, str(exc), 401), "", "en")
        action = get_str(form, "action")
        if action not in ACTIONS:
            return self.refusal(400, session.lang)
        try:
            status = await ctx.deps.get_portal_status(session.member_id)
        except RpcNotFound:
            return self.refusal(401, session.lang)
        if status.state != token_keeper_pb2.PORTAL_STATE_ACTIVE:
            return self.refusal(401, session.lang)
        view = PageView(session=session, token=get_str(form, "session"), auth_id=get_str(form, "auth"))
        handled = await self._dispatch(request, action, form, view)
        if isinstance(handled, HTTPResponse):
            return handled
        log.info("settings page action", member_id=session.member_id, line=session.line, action=action)
        return await self.render(view, handled)

    async def _dispatch(
        self, request: Request, action: str, form: dict[str, Any], view: PageView
    ) -> int | HTTPResponse:
        """Carry out one action on the view; returns the page's HTTP status (or a whole response)."""
        s = view.session
        pid = get_str(form, "phone_number_id")
        if action == "bind":
            return await self._bind(form, view)
        if action == "check":
            view.notice = Notice("ok", "notice.checked")
        elif action in ("pause", "resume"):
            try:
                await self.binder.set_active(s.member_id, pid, action == "resume")
            except NotThisPortals:
                view.notice = Notice("error", "notice.not_yours")
                return 404
            view.notice = Notice("ok", f"notice.{action}d", {"number": pid})
        elif action == "unbind":
            try:
                await self.binder.unbind(s.member_id, pid)
            except NotThisPortals:
                view.notice = Notice("error", "notice.not_yours")
                return 404
            except NumberInUse:
                view.notice = Notice("error", "notice.in_use", {"number": pid})
                return 409
            view.notice = Notice("ok", "notice.unbound", {"number": pid})
        elif action in ("replay", "replay_confirmed"):
            return await self._replay(action, get_str(form, "dead_letter"), view)
        elif action in ("line_on", "line_off"):
            return await self._line(request, action == "line_on", get_str(form, "auth"), view)
        return 200

    async def _bind(self, form: dict[str, Any], view: PageView) -> int:
        s = view.session
        creds = NumberCredentials(
            phone_number_id=get_str(form, "phone_number_id").strip(),
            waba_id=get_str(form, "waba_id").strip(),
            access_token=get_str(form, "access_token").strip(),
            app_secret=get_str(form, "app_secret").strip(),
            verify_token=get_str(form, "verify_token").strip(),
        )
        view.bind_values = {"phone_number_id": creds.phone_number_id[:40], "waba_id": creds.waba_id[:40]}
        try:
            view.bind_result = await self.binder.bind(
                s.member_id, s.line, creds, connector_id=self.resources.settings.connector_id
            )
        except InvalidBinding as exc:
            view.bind_errors[exc.field_name] = f"invalid.{exc.field_name}"
            return 400
        if view.bind_result.bound:
            view.bind_values = {}
        return 200 if view.bind_result.bound else 400

    async def _replay(self, action: str, dead_letter_id: str, view: PageView) -> int:
        s = view.session
        try:
            letter = await self.dead_letters.get(dead_letter_id, member_id=s.member_id)
        except DeadLetterNotFound:
            view.notice = Notice("error", "notice.dead_letter_gone")
            return 404
        if action == "replay":
            view.confirm = letter  # nothing happens before the administrator confirms
            return 200
        try:
            (result,) = await self.dead_letters.replay(
                [letter], actor=f"portal:{s.member_id}:user:{s.user}", why="connector settings page"
            )
        except AuditUnavailable:
            view.notice = Notice("error", "notice.replay_unaudited")
            return 503
        if result.outcome == "replayed":
            view.notice = Notice("ok", "notice.replayed", {"event": letter.event_type})
            return 200
        view.notice = Notice("error", "notice.replay_failed")
        return 503

    async def _line(
        self, request: Request, activate: bool, auth_id: str, view: PageView
    ) -> int | HTTPResponse:
        """Switching the line calls Bitrix24: with a token the OAuth server confirms again, of this portal."""
        s, ctx = view.session, self.resources
        if not auth_id:
            return self.refusal(401, s.lang)
        try:
            auth = await ctx.guard.oauth.verify(
                member_id=s.member_id,
                access_token=auth_id,
                refresh_token="",
                claimed_expires_at=time.time() + 600,
            )
            await require_admin(s.member_id, verified_token(auth), ctx.portals)
        except Refused as exc:
            if exc.reason == MEMBER_MISMATCH:
                exc.status = 403
            return await self.refuse(request, exc, s.member_id, s.lang)
        try:
            await set_line(ctx.portals, ctx.settings, verified_token(auth), s.line, activate)
        except (BitrixError, TokenError) as exc:
            log.error("settings page: line switch refused", reason=str(exc)[:300], member_id=s.member_id)
            view.notice = Notice("error", "notice.line_failed")
            return 502
        claims = Session(**{**s.__dict__, "active": activate})
        view.session, view.token = claims, self.signer.sign(claims)
        view.notice = Notice("ok", "notice.line_on" if activate else "notice.line_off")
        return 200
