"""Who may call which internal gRPC method: the caller table and the server interceptor enforcing it.

The caller's identity is the common name (CN) of its client certificate, proven by mutual TLS against
Zaptrix's own CA (zaptrix.grpcserver). Each identity may call only the methods its process really calls
(derived from the client code; docs/mapper.md and docs/token-keeper.md show the same table). Anything
else is refused before the servicer runs: no certificate -> UNAUTHENTICATED, a method not in the
caller's row -> PERMISSION_DENIED, each counted in zaptrix_grpc_refusals_total.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter

from zaptrix.logging import get_logger

log = get_logger(__name__)


class InsecureGrpcError(RuntimeError):
    """Plaintext gRPC where mutual TLS is required (ZAPTRIX_ENVIRONMENT=production)."""


SUFFIX = ".zaptrix"
# Identities (certificate CNs). Servers present theirs to clients; callers present theirs to servers.
MAPPER = "mapper" + SUFFIX
TOKEN_KEEPER = "token-keeper" + SUFFIX
META_INGRESS_WEB = "meta-ingress-web" + SUFFIX
META_DISPATCHER = "meta-dispatcher" + SUFFIX
BITRIX_INGRESS_WEB = "bitrix-ingress-web" + SUFFIX
BITRIX_DISPATCHER = "bitrix-dispatcher" + SUFFIX
# Operator tooling (dev seed, runbook scripts). Never mounted into a pod that serves traffic.
ADMIN = "admin" + SUFFIX

_TK = "/zaptrix.v1.TokenKeeper/"
_MAPPER = "/zaptrix.v1.Mapper/"

TOKEN_KEEPER_METHODS = (
    "UpsertPortal",
    "GetPortalStatus",
    "ListPortals",
    "GetAccessToken",
    "ReportTokenRejected",
    "VerifyApplicationToken",
    "UpsertChannelCredentials",
    "GetChannelCredentials",
    "CheckVerifyToken",
    # WABA-level webhooks on a cold pod (docs/meta-ingress.md)
    "GetWabaAppSecret",
)
MAPPER_METHODS = (
    "BindChannel",
    "GetChannel",
    "ListChannels",
    "GetOrCreateConversation",
    "FindConversation",
    "UpdateConversation",
    "LinkMessage",
    "FindMessageLink",
    "UpdateMessageStatus",
    "CheckProcessed",
    "MarkProcessed",
    "RecordDelivery",
    "CheckProcessedMany",
    "RecordDeliveries",
    "FindMessageLinks",
    "UpdateMessageStatuses",
    "ApplyIdentityChange",
    "FindConversationByIdentityAlias",
    "RecordCustomerConsent",
    "GetCustomerConsent",
    "SetPortalInstalled",
    # template catalogue (issue 16)
    "ReplaceTemplates",
    "ApplyTemplateUpdate",
    "ListTemplates",
    "GetChannelActivity",
    "UnbindChannel",
)


def _tk(*names: str) -> frozenset[str]:
    assert set(names) <= set(TOKEN_KEEPER_METHODS), names
    return frozenset(_TK + n for n in names)


def _mapper(*names: str) -> frozenset[str]:
    assert set(names) <= set(MAPPER_METHODS), names
    return frozenset(_MAPPER + n for n in names)


# The table. Keep docs/token-keeper.md and docs/mapper.md in step (tests/security checks the enforcement).
ALLOWED: dict[str, frozenset[str]] = {
    # Webhook signature check (app secret per phone_number_id) and Meta's GET verification handshake.
    # MarkProcessed: a status webhook echoing our part id records that Meta took the send (the dispatcher
    # reconciles an ambiguous send with it; meta_ingress/sent_parts.py).
    # GetWabaAppSecret: a WABA's own webhooks (templates) name no number; only the app secret comes back.
    META_INGRESS_WEB: _tk("GetChannelCredentials", "CheckVerifyToken", "GetWabaAppSecret")
    | _mapper("MarkProcessed"),
    # Sends through the Graph API with the channel's token; resolves and records conversations/links.
    # GetPortalStatus: the conversation's portal hosts, which operator file links may name (egress guard).
    # RecordDelivery: a sent reply's link + dedupe record in one call (no conversation change: rule below).
    META_DISPATCHER: _tk("GetChannelCredentials", "GetPortalStatus")
    | _mapper(
        "GetChannel",
        "FindConversation",
        "FindMessageLink",
        "LinkMessage",
        "CheckProcessed",
        "MarkProcessed",
        "RecordDelivery",
        # a marketing template is not sent to a customer who stopped marketing messages
        "GetCustomerConsent",
        # ONAPPUNINSTALL (LineRemoved, line 0): the portal's data goes after the grace period
        "SetPortalInstalled",
        # the template catalogue: syncs from the Graph API, template webhooks, /template validation
        "ReplaceTemplates",
        "ApplyTemplateUpdate",
        "ListTemplates",
    ),
    # Event verification, app install (portal status, upsert), settings placement (line's channels),
    # outbound events (conversation and message lookups). REST calls during install use the caller's token.
    # The connector settings page binds a number (zaptrix.binding: GetChannel, BindChannel,
    # UpsertChannelCredentials) and checks its health with the stored WhatsApp token (GetChannelCredentials),
    # always for the portal whose verified placement opened it. SetPortalInstalled: a verified install
    # cancels a pending removal of the portal's data.
    BITRIX_INGRESS_WEB: _tk(
        "VerifyApplicationToken",
        "GetPortalStatus",
        "UpsertPortal",
        "UpsertChannelCredentials",
        "GetChannelCredentials",
    )
    | _mapper(
        "ListChannels",
        "FindConversation",
        "FindMessageLink",
        "GetChannel",
        "BindChannel",
        "SetPortalInstalled",
        "ListTemplates",
        "GetChannelActivity",
        "UnbindChannel",
    ),
    # Delivers to Bitrix24 with the portal's token; owns the conversation and delivery records.
    # ListPortals: the offline-event reconciler drains every installed portal's queue.
    BITRIX_DISPATCHER: _tk("GetAccessToken", "ReportTokenRejected", "ListPortals")
    | _mapper(
        "GetChannel",
        "GetOrCreateConversation",
        "FindConversation",
        "UpdateConversation",
        "FindMessageLink",
        "UpdateMessageStatus",
        "CheckProcessed",
        "MarkProcessed",
        "RecordDelivery",
        "CheckProcessedMany",
        "RecordDeliveries",
        "FindMessageLinks",
        "UpdateMessageStatuses",
        # Identity aliases: a customer's number or BSUID changed (a WhatsApp system message).
        "ApplyIdentityChange",
        # user_preferences webhooks (it consumes them with the rest of WhatsApp's events)
        "RecordCustomerConsent",
    ),
    # Operator tooling: everything (binding channels, storing channel credentials).
    ADMIN: _tk(*TOKEN_KEEPER_METHODS) | _mapper(*MAPPER_METHODS),
}

# Methods a caller's row grants only for some requests: (caller, method) -> whether this request is one.
REQUEST_RULES: dict[tuple[str, str], Callable[[Any], bool]] = {
    # meta-ingress-web records send confirmations only ("sent:<phone_number_id>:<part id>"), never another
    # event's dedupe record: a forged one would silently drop an operator's or a customer's message.
    (META_INGRESS_WEB, _MAPPER + "MarkProcessed"): lambda request: str(request.event_id).startswith("sent:"),
    # meta-dispatcher records LinkMessage + MarkProcessed in one call, which it may make alone; the
    # conversation part may only name the conversation (UpdateConversation is not its to call).
    (META_DISPATCHER, _MAPPER + "RecordDelivery"): lambda request: all(
        field.name == "id" for field, _ in request.conversation.ListFields()
    ),
    # The uninstall event schedules a removal, a verified install cancels one: neither can do the other.
    (META_DISPATCHER, _MAPPER + "SetPortalInstalled"): lambda request: not request.installed,
    (BITRIX_INGRESS_WEB, _MAPPER + "SetPortalInstalled"): lambda request: bool(request.installed),
}

# Open to any caller that completed the TLS handshake: health checking and reflection.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

REFUSALS = Counter(
    "zaptrix_grpc_refusals_total",
    "Internal gRPC calls refused by the caller allowlist (caller/method from the fixed table, else unknown/other)",
    ["service", "caller", "method"],
)
_KNOWN_METHODS = {_TK + n for n in TOKEN_KEEPER_METHODS} | {_MAPPER + n for n in MAPPER_METHODS}


def allowed(caller: str | None, method: str) -> bool:
    if method.startswith(OPEN_PREFIXES):
        return True
    return caller is not None and method in ALLOWED.get(caller, frozenset())


def identity_of(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The CN of the verified client certificate, or None (no TLS, no certificate, no or several CNs)."""
    names = (context.auth_context() or {}).get("x509_common_name") or []
    if len(names) != 1:
        return None
    name: bytes = names[0]
    return name.decode("utf-8", "replace")


def _labels(caller: str | None, method: str) -> tuple[str, str, str]:
    service, _, name = method.lstrip("/").partition("/")
    service = (
        service.rsplit(".", 1)[-1] if service in ("zaptrix.v1.Mapper", "zaptrix.v1.TokenKeeper") else "other"
    )
    return (
        service,
        caller if caller in ALLOWED else "unknown",
        name if method in _KNOWN_METHODS else "other",
    )


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], caller: str | None, method: str) -> None:
    REFUSALS.labels(*_labels(caller, method)).inc()
    log.warning("grpc call refused", caller=caller or "none", method=method)
    if caller is None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{caller} may not call {method}")


def _guard(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same handler, checking the caller before the servicer runs."""

    async def check(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        caller = identity_of(context)
        if not allowed(caller, method):
            await _refuse(context, caller, method)
        return caller

    if handler.unary_unary is not None:
        inner_uu: Callable[..., Any] = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            caller = await check(context)
            rule = REQUEST_RULES.get((caller or "", method))
            if rule is not None and not rule(request):
                await _refuse(context, caller, method)
            result = inner_uu(request, context)
            return await result if inspect.isawaitable(result) else result

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us: Callable[..., AsyncIterator[Any]] = handler.unary_stream

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await check(context)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary is not None:
        inner_su: Callable[..., Awaitable[Any]] = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss: Callable[..., AsyncIterator[Any]] = handler.stream_stream

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await check(context)
        async for item in inner_ss(requests, context):
            yield item

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )


class CallerAllowlist(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Server interceptor enforcing ALLOWED. The caller is only known from the servicer context, so the
    check wraps the method handler instead of deciding in intercept_service itself."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        return _guard(handler, method)
