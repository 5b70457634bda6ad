"""Binding a WhatsApp number to a portal's Open Line, and the checks that tell whether it will work.

One implementation for the connector settings page (bitrix-ingress) and ``zaptrix-admin channels bind``.
A bind stores the number's credentials in token-keeper (UpsertChannelCredentials: secrets go in and never
come back out of this module) and the binding in the mapper (BindChannel), after these checks:

| check | how | when it fails |
|---|---|---|
| ``number_free`` | mapper GetChannel | the number is bound to another portal: nothing is stored |
| ``token_reads_number`` | Graph ``GET /{phone_number_id}`` with the token | bad token (190) or a number it cannot read: nothing is stored |
| ``app_subscribed`` | Graph ``GET /{waba_id}/subscribed_apps`` | no app gets the WABA's webhooks: bound, nothing arrives until fixed |
| ``webhook_verified`` | our webhook URL answers Meta's GET handshake (``hub.challenge``) with the verify token | Meta cannot verify the callback: bound, nothing arrives until fixed |

The first two prove the caller may bind this number (a token that reads it) and that no other tenant loses
it; the last two are what Meta needs to deliver, and are reported so an admin can fix them in Meta's app
settings and check again (:meth:`ChannelBinder.health`). Nothing here logs or returns a secret.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import grpc
import httpx

from zaptrix.logging import get_logger
from zaptrix.rpc import RpcNotFound, RpcPermanent, call
from zaptrix.settings import ChannelBindingSettings, GraphApiSettings
from zaptrix.v1 import mapper_pb2, token_keeper_pb2

log = get_logger(__name__)

CONNECTOR_ID = "zaptrix_whatsapp"
MAX_ANSWER_BYTES = 256_000
# What GET /{phone_number_id} is asked for (Meta's WhatsAppBusinessPhoneNumber node; whatsapp.md A5: the
# messaging limit moved from messaging_limit_tier to whatsapp_business_manager_messaging_limit).
NUMBER_FIELDS = (
    "display_phone_number",
    "verified_name",
    "quality_rating",
    "messaging_limit_tier",
    "whatsapp_business_manager_messaging_limit",
    "throughput",
    "code_verification_status",
)
_GRAPH_ID = re.compile(r"^[0-9]{1,32}$")  # Graph object ids are decimal digits


class Check(StrEnum):
    NUMBER_FREE = "number_free"
    TOKEN_READS_NUMBER = "token_reads_number"
    APP_SUBSCRIBED = "app_subscribed"
    WEBHOOK_VERIFIED = "webhook_verified"


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # not run: an earlier check failed, or nothing to check with


@dataclass(frozen=True)
class CheckResult:
    """One check. ``reason`` is a stable word (for translations and scripts), ``detail`` an English
    sentence for people; neither ever holds a secret."""

    check: Check
    outcome: Outcome
    reason: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


@dataclass(frozen=True, repr=False)
class NumberCredentials:
    """What an admin types in. Secrets: access_token, app_secret, verify_token (write-only: empty app_secret
    or verify_token on a re-bind keeps the stored one)."""

    phone_number_id: str
    waba_id: str
    access_token: str
    app_secret: str = ""
    verify_token: str = ""

    def __repr__(self) -> str:  # never a secret in a log line or a traceback
        return f"NumberCredentials(phone_number_id={self.phone_number_id!r}, waba_id={self.waba_id!r})"


@dataclass(frozen=True)
class PhoneNumberInfo:
    """The number as Graph reports it."""

    phone_number_id: str
    display_phone_number: str = ""
    verified_name: str = ""
    quality_rating: str = ""  # GREEN, YELLOW, RED, UNKNOWN
    messaging_limit: str = ""  # whatsapp_business_manager_messaging_limit, else messaging_limit_tier
    throughput_level: str = ""  # STANDARD, HIGH
    code_verification_status: str = ""

    @classmethod
    def from_graph(cls, phone_number_id: str, data: dict[str, Any]) -> PhoneNumberInfo:
        def text(key: str) -> str:
            value = data.get(key)
            return str(value)[:64] if isinstance(value, str | int) else ""

        throughput = data.get("throughput")
        level = throughput.get("level") if isinstance(throughput, dict) else None
        return cls(
            phone_number_id=phone_number_id,
            display_phone_number=text("display_phone_number"),
            verified_name=text("verified_name"),
            quality_rating=text("quality_rating"),
            messaging_limit=text("whatsapp_business_manager_messaging_limit") or text("messaging_limit_tier"),
            throughput_level=str(level)[:32] if isinstance(level, str) else "",
            code_verification_status=text("code_verification_status"),
        )


@dataclass
class BindResult:
    """What a bind did: the checks in order, whether the binding was stored, the number as Graph sees it."""

    checks: list[CheckResult]
    bound: bool = False
    number: PhoneNumberInfo | None = None
    channel: mapper_pb2.Channel | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Bound and every check passed: messages will flow."""
        return self.bound and all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bound": self.bound,
            "ok": self.ok,
            "checks": [{**asdict(c), "check": str(c.check), "outcome": str(c.outcome)} for c in self.checks],
            "number": asdict(self.number) if self.number else None,
        }


@dataclass
class NumberHealth:
    """A bound number's state for the settings page and ``zaptrix-admin channels show``."""

    channel: mapper_pb2.Channel
    checks: list[CheckResult]
    number: PhoneNumberInfo | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


class InvalidBinding(ValueError):
    """The input cannot be a binding (an empty or malformed field); ``field_name`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field_name = field_name


class NotThisPortals(LookupError):
    """The number is not bound to the portal that asks (unknown, or another portal's: the same answer)."""


class NumberInUse(Exception):
    """The number has conversations: it can be paused, not unbound (its conversations keep it)."""


class GraphRefused(Exception):
    """The Graph API answered with an error; ``code`` is Meta's error code (190: bad token)."""

    def __init__(self, http_status: int, code: int | None, message: str, subcode: int | None = None) -> None:
        super().__init__(f"Graph API {http_status} code={code}: {message}")
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.message = message

    @property
    def reason(self) -> str:
        return f"graph_{self.code}" if self.code is not None else f"http_{self.http_status}"


class GraphUnreachable(Exception):
    """No usable answer from the Graph API (connection, timeout, not JSON)."""


def _graph_error(response: httpx.Response) -> GraphRefused:
    try:
        data = response.json()
    except (ValueError, RecursionError):
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return GraphRefused(response.status_code, None, response.reason_phrase)
    code, subcode = err.get("code"), err.get("error_subcode")
    return GraphRefused(
        response.status_code,
        code if isinstance(code, int) else None,
        str(err.get("message") or "")[:300],
        subcode if isinstance(subcode, int) else None,
    )


class GraphProbe:
    """The read-only Graph API calls a binding needs (the sending client lives in meta-ingress)."""

    def __init__(self, settings: GraphApiSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.root = settings.graph_root
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.graph_timeout_s, connect=settings.graph_connect_timeout_s),
            headers={"User-Agent": "zaptrix-binding"},
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _get(self, path: str, token: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            response = await self.http.get(
                f"{self.root}/{path}", params=params, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise GraphUnreachable(f"{type(exc).__name__}") from exc
        if len(response.content) > MAX_ANSWER_BYTES:
            raise GraphUnreachable("answer too large")
        if response.status_code >= 400:
            raise _graph_error(response)
        try:
            data = response.json()
        except (ValueError, RecursionError) as exc:
            raise GraphUnreachable("answer is not JSON") from exc
        if not isinstance(data, dict):
            raise GraphUnreachable("answer is not an object")
        return data

    async def phone_number(self, phone_number_id: str, token: str) -> PhoneNumberInfo:
        data = await self._get(phone_number_id, token, {"fields": ",".join(NUMBER_FIELDS)})
        return PhoneNumberInfo.from_graph(phone_number_id, data)

    async def subscribed_apps(self, waba_id: str, token: str) -> list[str]:
        """Names (else ids) of the apps subscribed to the WABA's webhooks."""
        data = await self._get(f"{waba_id}/subscribed_apps", token)
        apps = data.get("data")
        names: list[str] = []
        for item in apps if isinstance(apps, list) else []:
            app = item.get("whatsapp_business_api_data") if isinstance(item, dict) else None
            if isinstance(app, dict):
                names.append(str(app.get("name") or app.get("id") or "?")[:80])
        return names

    async def webhook_answers(self, webhook_url: str, verify_token: str) -> CheckResult:
        """Play Meta's verification handshake against our webhook URL with this verify token."""
        if not webhook_url:
            return _skipped(Check.WEBHOOK_VERIFIED, "ZAPTRIX_META_WEBHOOK_URL is not set: not checked")
        challenge = secrets.token_hex(8)
        params = {"hub.mode": "subscribe", "hub.verify_token": verify_token, "hub.challenge": challenge}
        try:
            response = await self.http.get(webhook_url, params=params)
        except httpx.HTTPError as exc:
            return _fail(
                Check.WEBHOOK_VERIFIED,
                "webhook_unreachable",
                f"the webhook URL did not answer ({type(exc).__name__})",
            )
        if response.status_code == 200 and response.text == challenge:
            return _ok(
                Check.WEBHOOK_VERIFIED, "the webhook URL answers Meta's verification with this verify token"
            )
        if response.status_code in (401, 403):
            return _fail(
                Check.WEBHOOK_VERIFIED, "verify_token_refused", "the webhook URL refused this verify token"
            )
        return _fail(
            Check.WEBHOOK_VERIFIED,
            f"webhook_http_{response.status_code}",
            f"the webhook URL answered HTTP {response.status_code} without the challenge",
        )


def _ok(check: Check, detail: str) -> CheckResult:
    return CheckResult(check, Outcome.OK, "ok", detail)


def _fail(check: Check, reason: str, detail: str) -> CheckResult:
    return CheckResult(check, Outcome.FAILED, reason, detail)


def _skipped(check: Check, detail: str) -> CheckResult:
    return CheckResult(check, Outcome.SKIPPED, "skipped", detail)


def _graph_failure(check: Check, exc: GraphRefused | GraphUnreachable, what: str) -> CheckResult:
    if isinstance(exc, GraphUnreachable):
        return _fail(check, "graph_unreachable", f"the Graph API could not be asked ({exc})")
    if exc.code == 190:
        return _fail(check, "token_invalid", "the access token is not valid (Graph error 190)")
    if exc.code == 100 or exc.http_status == 404:
        return _fail(check, "not_readable", f"the access token cannot read {what} (Graph error {exc.code})")
    return _fail(check, exc.reason, f"the Graph API refused: {exc.message or exc.http_status}"[:300])


def validate(creds: NumberCredentials, member_id: str, line_id: int) -> None:
    """Raises InvalidBinding for a field that cannot be right (before anything is asked or stored)."""
    if not member_id or len(member_id) > 128:
        raise InvalidBinding("member_id", "is required")
    if line_id <= 0:
        raise InvalidBinding("line_id", "must be a positive Open Line id")
    for name in ("phone_number_id", "waba_id"):
        if not _GRAPH_ID.match(getattr(creds, name)):
            raise InvalidBinding(name, "must be the numeric id from Meta's WhatsApp Manager")
    if not creds.access_token.strip():
        raise InvalidBinding("access_token", "is required")
    for name, limit in (("access_token", 2048), ("app_secret", 256), ("verify_token", 256)):
        value = getattr(creds, name)
        if len(value) > limit or any(c.isspace() for c in value):
            raise InvalidBinding(name, f"must be at most {limit} characters without spaces")


class ChannelBinder:
    """Binds numbers and reports their health, with the mapper and token-keeper stubs of the caller
    (bitrix-ingress-web or the admin CLI; both are allowed the calls by zaptrix.grpcauth)."""

    def __init__(
        self,
        mapper: Any,
        token_keeper: Any,
        settings: ChannelBindingSettings,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.mapper = mapper
        self.tk = token_keeper
        self.settings = settings
        self.timeout = timeout
        self.graph = GraphProbe(settings, transport)

    async def aclose(self) -> None:
        await self.graph.aclose()

    async def _stored_channel(self, phone_number_id: str) -> mapper_pb2.Channel | None:
        try:
            channel: mapper_pb2.Channel = await call(
                "mapper GetChannel",
                self.mapper.GetChannel(
                    mapper_pb2.GetChannelRequest(phone_number_id=phone_number_id), timeout=self.timeout
                ),
            )
        except RpcNotFound:
            return None
        return channel

    async def channel_of(self, member_id: str, phone_number_id: str) -> mapper_pb2.Channel:
        """The portal's own binding of the number; NotThisPortals for an unknown or another portal's."""
        channel = await self._stored_channel(phone_number_id)
        if channel is None or channel.member_id != member_id:
            raise NotThisPortals(phone_number_id)
        return channel

    async def bind(
        self,
        member_id: str,
        line_id: int,
        creds: NumberCredentials,
        *,
        connector_id: str = CONNECTOR_ID,
    ) -> BindResult:
        """Check and bind (idempotent: binding the same number again re-checks and updates it). Raises
        InvalidBinding for malformed input and zaptrix.rpc errors when mapper or token-keeper fail."""
        validate(creds, member_id, line_id)
        pid = creds.phone_number_id
        result = BindResult(checks=[])
        stored = await self._stored_channel(pid)
        if stored is not None and stored.member_id != member_id:
            result.checks.append(
                _fail(Check.NUMBER_FREE, "bound_elsewhere", "the number is bound to another portal")
            )
            result.checks += [
                _skipped(c, "not checked: the number is not free")
                for c in (Check.TOKEN_READS_NUMBER, Check.APP_SUBSCRIBED, Check.WEBHOOK_VERIFIED)
            ]
            log.warning(
                "bind refused: number bound to another portal", member_id=member_id, phone_number_id=pid
            )
            return result
        result.checks.append(_ok(Check.NUMBER_FREE, "the number is not bound to another portal"))
        try:
            result.number = await self.graph.phone_number(pid, creds.access_token)
            result.checks.append(
                _ok(Check.TOKEN_READS_NUMBER, f"the token reads {result.number.display_phone_number or pid}")
            )
        except (GraphRefused, GraphUnreachable) as exc:
            result.checks.append(_graph_failure(Check.TOKEN_READS_NUMBER, exc, "this number"))
            result.checks += [
                _skipped(c, "not checked: the token cannot read the number")
                for c in (Check.APP_SUBSCRIBED, Check.WEBHOOK_VERIFIED)
            ]
            log.info("bind refused: token check failed", member_id=member_id, phone_number_id=pid)
            return result
        result.checks.append(await self._subscribed(creds.waba_id, creds.access_token))
        # The verify token must be stored before the handshake: meta-ingress asks token-keeper for it.
        await call(
            "token-keeper UpsertChannelCredentials",
            self.tk.UpsertChannelCredentials(
                token_keeper_pb2.UpsertChannelCredentialsRequest(
                    phone_number_id=pid,
                    access_token=creds.access_token,
                    app_secret=creds.app_secret,
                    verify_token=creds.verify_token,
                    waba_id=creds.waba_id,
                ),
                timeout=self.timeout,
            ),
        )
        if creds.verify_token:
            result.checks.append(
                await self.graph.webhook_answers(self.settings.meta_webhook_url, creds.verify_token)
            )
        else:
            result.checks.append(
                _skipped(Check.WEBHOOK_VERIFIED, "no verify token given: the stored one is kept")
            )
        channel = mapper_pb2.Channel(
            phone_number_id=pid,
            display_phone_number=result.number.display_phone_number.lstrip("+").replace(" ", "")
            or (stored.display_phone_number if stored else ""),
            member_id=member_id,
            line_id=line_id,
            connector_id=connector_id,
            crm_mode=stored.crm_mode if stored else mapper_pb2.CRM_MODE_GATEWAY,
            reengagement_template=stored.reengagement_template if stored else "",
            template_language=stored.template_language if stored else "",
            active=True,
        )
        result.channel = await call(
            "mapper BindChannel",
            self.mapper.BindChannel(mapper_pb2.BindChannelRequest(channel=channel), timeout=self.timeout),
        )
        result.bound = True
        log.info(
            "number bound",
            member_id=member_id,
            phone_number_id=pid,
            line_id=line_id,
            checks={str(c.check): str(c.outcome) for c in result.checks},
        )
        return result

    async def _subscribed(self, waba_id: str, token: str) -> CheckResult:
        try:
            apps = await self.graph.subscribed_apps(waba_id, token)
        except (GraphRefused, GraphUnreachable) as exc:
            return _graph_failure(Check.APP_SUBSCRIBED, exc, "this WABA")
        if not apps:
            return _fail(
                Check.APP_SUBSCRIBED,
                "not_subscribed",
                "no app is subscribed to the WABA's webhooks (POST /{waba_id}/subscribed_apps)",
            )
        return _ok(Check.APP_SUBSCRIBED, "subscribed: " + ", ".join(apps))

    async def set_active(self, member_id: str, phone_number_id: str, active: bool) -> mapper_pb2.Channel:
        """Pause (False) or resume (True) the portal's own number; NotThisPortals otherwise."""
        channel = await self.channel_of(member_id, phone_number_id)
        updated = mapper_pb2.Channel()
        updated.CopyFrom(channel)
        updated.active = active
        updated.ClearField("created_at")
        stored: mapper_pb2.Channel = await call(
            "mapper BindChannel",
            self.mapper.BindChannel(mapper_pb2.BindChannelRequest(channel=updated), timeout=self.timeout),
        )
        log.info(
            "number active state set", member_id=member_id, phone_number_id=phone_number_id, active=active
        )
        return stored

    async def unbind(self, member_id: str, phone_number_id: str) -> mapper_pb2.Channel:
        """Remove the portal's binding of a number without conversations (its stored credentials stay until
        a new bind replaces them). NotThisPortals when it is not the portal's, NumberInUse when it has
        conversations (pause it instead)."""
        try:
            removed: mapper_pb2.Channel = await call(
                "mapper UnbindChannel",
                self.mapper.UnbindChannel(
                    mapper_pb2.UnbindChannelRequest(phone_number_id=phone_number_id, member_id=member_id),
                    timeout=self.timeout,
                ),
            )
        except RpcNotFound as exc:
            raise NotThisPortals(phone_number_id) from exc
        except RpcPermanent as exc:
            if exc.code == grpc.StatusCode.FAILED_PRECONDITION:
                raise NumberInUse(phone_number_id) from exc
            raise
        log.info("number unbound", member_id=member_id, phone_number_id=phone_number_id)
        return removed

    async def health(self, member_id: str, phone_number_id: str) -> NumberHealth:
        """The portal's own number, checked again with its stored credentials (token valid, app subscribed,
        webhook verified) and Graph's view of it (quality rating, messaging limit)."""
        channel = await self.channel_of(member_id, phone_number_id)
        health = NumberHealth(channel=channel, checks=[])
        try:
            creds: token_keeper_pb2.ChannelCredentials = await call(
                "token-keeper GetChannelCredentials",
                self.tk.GetChannelCredentials(
                    token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=phone_number_id),
                    timeout=self.timeout,
                ),
            )
        except RpcNotFound:
            health.checks = [
                _fail(
                    Check.TOKEN_READS_NUMBER, "no_credentials", "no credentials are stored for this number"
                ),
                _skipped(Check.APP_SUBSCRIBED, "not checked: no credentials"),
                _skipped(Check.WEBHOOK_VERIFIED, "not checked: no credentials"),
            ]
            return health
        try:
            health.number = await self.graph.phone_number(phone_number_id, creds.access_token)
            health.checks.append(_ok(Check.TOKEN_READS_NUMBER, "the stored token reads the number"))
        except (GraphRefused, GraphUnreachable) as exc:
            health.checks.append(_graph_failure(Check.TOKEN_READS_NUMBER, exc, "this number"))
        if creds.waba_id:
            health.checks.append(await self._subscribed(creds.waba_id, creds.access_token))
        else:
            health.checks.append(_skipped(Check.APP_SUBSCRIBED, "no WABA id is stored"))
        if creds.verify_token:
            health.checks.append(
                await self.graph.webhook_answers(self.settings.meta_webhook_url, creds.verify_token)
            )
        else:
            health.checks.append(_skipped(Check.WEBHOOK_VERIFIED, "no verify token is stored"))
        return health


__all__ = [
    "CONNECTOR_ID",
    "BindResult",
    "ChannelBinder",
    "Check",
    "CheckResult",
    "GraphProbe",
    "GraphRefused",
    "GraphUnreachable",
    "InvalidBinding",
    "NotThisPortals",
    "NumberCredentials",
    "NumberHealth",
    "NumberInUse",
    "Outcome",
    "PhoneNumberInfo",
    "validate",
]
