"""Settings of the bitrix-ingress processes: ``bitrix-ingress-web`` and ``bitrix-dispatcher``.

Every field is an environment variable with the ``ZAPTRIX_`` prefix (``ZAPTRIX_PUBLIC_BASE_URL``,
``ZAPTRIX_BITRIX_RATE_PER_S``, ...). Kafka and gRPC client settings are the shared
:class:`zaptrix.settings.KafkaSettings` (``ZAPTRIX_KAFKA_*``) and :class:`GrpcClientSettings`.
See docs/bitrix-ingress.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings
from zaptrix.egress import (
    EgressRefused,
    HostAllowlist,
    InsecureUrlError,
    check_url_now,
    require_https,
)
from zaptrix.settings import (
    BitrixOAuthSettings,
    ChannelBindingSettings,
    CommonSettings,
    DispatcherCommonSettings,
    Formerly,
    GrpcClientSettings,
    KafkaSettings,
    bind_address,
)

_ENDPOINT_REFUSALS = {
    "host": "portal client_endpoint's host is not in ZAPTRIX_BITRIX_PORTAL_HOST_SUFFIXES",
    "address": "portal client_endpoint is not a public address",
    "port": "portal client_endpoint must use the default port",
    "malformed": "portal client_endpoint is malformed (host or port)",
}


def check_portal_endpoint(url: str, settings: BitrixCommonSettings) -> str:
    """A portal's REST endpoint (client_endpoint), checked early and without DNS: https, an allowed host
    (ZAPTRIX_BITRIX_PORTAL_HOST_SUFFIXES), no internal address however it is spelled (`2130706433`,
    `127.1`, `[::ffff:127.0.0.1]`), the default port.

    The endpoint comes from Bitrix24 payloads, so this is an SSRF guard; the decisive check is the egress
    guard in the REST client's transport (portal_egress.py), which resolves the name and pins the
    checked address on every call.
    """
    require_https(url, settings, what="portal client_endpoint")
    try:
        check_url_now(url, settings.portal_allowlist(), settings.egress_policy())
    except EgressRefused as exc:
        why = _ENDPOINT_REFUSALS.get(exc.reason, f"portal client_endpoint is refused ({exc.reason})")
        raise InsecureUrlError(why) from None
    return url


@dataclass(frozen=True)
class RateSpec:
    """Our pacing of one portal's REST calls: `rate` requests/s sustained, `burst` at most at once."""

    rate: float
    burst: int

    @classmethod
    def parse(cls, text: str) -> RateSpec:
        rate_s, _, burst_s = text.strip().partition("/")
        try:
            rate = float(rate_s)
            burst = int(burst_s) if burst_s else max(1, int(rate * 5))
        except ValueError as exc:
            raise ValueError(f"rate spec {text!r} is not '<requests per s>/<burst>'") from exc
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate spec {text!r} needs a positive rate and a burst of at least 1")
        return cls(rate, burst)


class BitrixCommonSettings(CommonSettings):
    """Read by both processes."""

    connector_id: str = Field(
        "zaptrix_whatsapp",
        description="Open Lines connector ID registered in every portal (lowercase letters, digits, _)",
    )
    bitrix_rate_per_s: float = Field(
        2.0, gt=0, description="Sustained REST requests/s per portal from this process (Bitrix24: 2/s)"
    )
    bitrix_burst: int = Field(
        10, ge=1, le=50, description="Requests per portal that may go at once (Bitrix24 bucket: 50)"
    )
    bitrix_portal_rates: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'Per-portal override as JSON {"<member_id>": "<rate>/<burst>"}, e.g. "5/50" for Enterprise '
            "portals (Bitrix24: 5/s, bucket 250)"
        ),
    )
    bitrix_portal_host_suffixes: list[str] = Field(
        default_factory=list,
        description=(
            'Allowed portal host suffixes as JSON, e.g. ["bitrix24.com","bitrix24.de"]; empty allows any '
            "https host name with a public address (set it in production)"
        ),
    )
    bitrix_rest_body: Literal["json", "form"] = Field(
        "json", description="Body encoding of REST calls (Bitrix24 accepts both)"
    )
    bitrix_rest_timeout_s: float = Field(
        65.0, gt=0, description="Read timeout of one REST call (Bitrix24 cloud stops a request at 60 s)"
    )
    bitrix_rest_connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout of REST calls")

    @field_validator("connector_id")
    @classmethod
    def _connector_id(cls, value: str) -> str:
        value = value.strip().lower()
        if not value or "." in value or not all(c.isascii() and (c.isalnum() or c == "_") for c in value):
            raise ValueError(
                "connector_id: lowercase letters, digits and '_' only ('.' is refused by Bitrix24)"
            )
        return value

    @field_validator("bitrix_portal_rates")
    @classmethod
    def _rates(cls, value: dict[str, str]) -> dict[str, str]:
        for spec in value.values():
            RateSpec.parse(spec)
        return value

    def portal_allowlist(self) -> HostAllowlist:
        """Portal hosts REST calls may go to: the configured suffixes, or any name when none are set
        (the address checks of the egress guard apply either way)."""
        suffixes = self.bitrix_portal_host_suffixes
        return HostAllowlist.of(suffixes=suffixes, any_host=not suffixes)

    def rate_for(self, member_id: str) -> RateSpec:
        spec = self.bitrix_portal_rates.get(member_id)
        return RateSpec.parse(spec) if spec else RateSpec(self.bitrix_rate_per_s, self.bitrix_burst)


class WebSettings(BitrixCommonSettings, BitrixOAuthSettings, ChannelBindingSettings):
    """bitrix-ingress-web: Bitrix24 events, app install and the connector settings page (which binds numbers
    with zaptrix.binding: the Graph API and Meta's webhook URL come from ChannelBindingSettings)."""

    web_host: str = Field(
        "0.0.0.0",
        description="Listen address of the web process (0.0.0.0 every interface; 127.0.0.1 loopback only)",
    )
    web_port: int = Field(8081, description="HTTP port of bitrix-ingress-web")
    public_base_url: str = Field(
        "",
        description=(
            "Public https base URL of bitrix-ingress-web as Bitrix24 reaches it (e.g. https://zaptrix.example.com); "
            "event handler and PLACEMENT_HANDLER URLs given to Bitrix24 are built from it. Required for install"
        ),
    )
    web_max_body_bytes: int = Field(1_000_000, ge=10_000, description="Largest accepted request body")
    publish_timeout_s: Annotated[float, Formerly("produce_timeout_s")] = Field(
        4.0, gt=0, description="Longest wait for Kafka's acknowledgement before answering 503"
    )
    verify_cache_ttl_s: Annotated[float, Formerly("verify_cache_s")] = Field(
        30.0, ge=0, description="How long a verified (member_id, application_token) pair is trusted"
    )
    verify_stale_s: float = Field(
        86_400.0,
        ge=0,
        description=(
            "How long token-keeper's last verdict on a (member_id, application_token) pair is used while "
            "token-keeper is unavailable (events are taken on a last-known-good verification instead of "
            "being lost); 0: never"
        ),
    )
    read_on_reply: bool = Field(
        True,
        description="An operator reply also marks the customer's messages read on WhatsApp (OperatorRead)",
    )
    connector_name: str = Field("WhatsApp (Zaptrix)", description="Connector name shown in Contact Center")
    connector_color: str = Field("#25D366", description="Connector tile colour")
    bitrix_client_id: str = Field(
        "",
        description=(
            "OAuth client_id of the Bitrix24 app, stored with each installed portal; installs are accepted "
            "only for tokens the OAuth server confirms as this app's (required for install)"
        ),
    )
    bitrix_client_secret: SecretStr | None = Field(
        None,
        description=(
            "OAuth client_secret passed to token-keeper on install; empty keeps the one stored there "
            "(zaptrix-admin portals add)"
        ),
    )
    bitrix_oauth_server_endpoint: str = Field(
        "https://oauth.bitrix.info/rest/",
        description=(
            "REST endpoint of Bitrix24's OAuth server: every install's token is checked with its app.info "
            "(never with the portal the request names); stored as the portal's server_endpoint"
        ),
    )
    bitrix_oauth_timeout_s: float = Field(10.0, gt=0, description="Timeout of one OAuth server request")
    install_max_token_ttl_s: float = Field(
        3600.0,
        gt=0,
        le=3600.0,
        description="Longest access-token lifetime stored from an install (Bitrix24's tokens live 1 h)",
    )
    install_refusals_per_minute: float = Field(
        20.0,
        gt=0,
        description=(
            "Refused install/settings requests per source address and minute; beyond that the source gets "
            "429 before any verification"
        ),
    )

    @field_validator("web_host")
    @classmethod
    def _web_host(cls, value: str) -> str:
        return bind_address(value)

    settings_session_secret: SecretStr = Field(
        SecretStr(""),
        description=(
            "HMAC-SHA256 key of the connector settings page's session tokens (the same on every replica; "
            "32+ random characters, required in production; empty outside production: a random key per "
            "process)"
        ),
    )
    settings_session_ttl_s: int = Field(
        1800,
        ge=60,
        le=3600,
        description="Lifetime of a settings page session (opened by a verified SETTING_CONNECTOR placement)",
    )
    bitrix_js_sdk_url: str = Field(
        "https://api.bitrix24.com/api/v1/",
        description=(
            "The BX24 JS SDK the settings page loads inside Bitrix24's slider (the sandbox serves a stand-in)"
        ),
    )

    @model_validator(mode="after")
    def _check_public_url(self) -> WebSettings:
        if self.environment == "production" and len(self.settings_session_secret.get_secret_value()) < 32:
            raise ValueError("ZAPTRIX_SETTINGS_SESSION_SECRET must be set (32+ characters) in production")
        require_https(self.bitrix_js_sdk_url, self, what="ZAPTRIX_BITRIX_JS_SDK_URL")
        if self.public_base_url:
            require_https(self.public_base_url, self, what="ZAPTRIX_PUBLIC_BASE_URL")
        require_https(self.bitrix_oauth_server_endpoint, self, what="ZAPTRIX_BITRIX_OAUTH_SERVER_ENDPOINT")
        return self

    def url(self, path: str) -> str:
        if not self.public_base_url:
            raise InsecureUrlError(
                "ZAPTRIX_PUBLIC_BASE_URL is not set: Bitrix24 needs it to reach this service"
            )
        return self.public_base_url.rstrip("/") + path


class DispatcherSettings(BitrixCommonSettings, DispatcherCommonSettings):
    """bitrix-dispatcher: Kafka wa-to-b24 -> Bitrix24 REST."""

    metrics_port: Annotated[int, Formerly("dispatcher_metrics_port")] = Field(
        9104, description="Port of /health, /ready and /metrics"
    )
    consumer_group: str = Field("bitrix-dispatcher", description="Kafka consumer group")
    history_import: bool = Field(
        True,
        description=(
            "Run the history consumer: the coexistence history import (topic <prefix>.wa-history.v1) becomes "
            "marked system lines in the chats. Off: the history events wait in their topic (its retention)"
        ),
    )
    history_consumer_group: str = Field(
        "bitrix-dispatcher-history", description="Kafka consumer group of the history consumer"
    )
    history_max_records: int = Field(
        100,
        ge=1,
        le=1000,
        description=(
            "History events per poll batch: small, so that the history's Bitrix24 requests take little of a "
            "portal's REST budget at a time next to live traffic"
        ),
    )
    consumer_catch_up_records: int = Field(
        2500,
        ge=1,
        description=(
            "Records per poll while the consumer lags (a poll came back full, e.g. after an outage), each "
            "such batch alone in flight, so one request per portal carries many messages; it bounds the "
            "memory of a drain (~15 KiB per record: its span, envelope, work and request item). Below "
            "ZAPTRIX_KAFKA_CONSUMER_MAX_RECORDS it has no effect"
        ),
    )
    bitrix_max_messages_per_call: int = Field(
        50, ge=1, le=200, description="MESSAGES[] per imconnector.send.messages call"
    )
    bitrix_max_files_per_call: int = Field(
        10, ge=1, description="Messages with files per call (Bitrix24 downloads them inside the request)"
    )
    bitrix_use_batch: bool = Field(
        True,
        description=(
            "Pack several calls into one `batch` request (one request for the rate limit); falls back to "
            "single calls per portal when Bitrix24 refuses imconnector.* inside batch"
        ),
    )
    bitrix_batch_max_commands: int = Field(10, ge=1, le=50, description="Sub-calls per batch request")
    bitrix_batch_max_messages: int = Field(
        100, ge=1, description="Messages across one batch request (bounds its execution time)"
    )
    bitrix_batch_max_statuses: int = Field(
        200,
        ge=1,
        description=(
            "Delivery/read marks across one batch request, counted apart from messages (a mark of an "
            "existing message is light: no chat, no file download); each reply brings two, so at 2 req/s a "
            "portal takes the receipts of 200 replies/s"
        ),
    )
    bitrix_rest_attempts: int = Field(
        3, ge=1, le=10, description="Attempts of one call on 5xx/transport errors before the event is retried"
    )
    bitrix_rate_limit_max_wait_s: float = Field(
        30.0, gt=0, description="Longest in-place wait on QUERY_LIMIT_EXCEEDED before the retry topic"
    )
    bitrix_overload_wait_s: float = Field(
        600.0,
        ge=1,
        le=900,
        description=(
            "After OVERLOAD_LIMIT (Bitrix24's manual block of a portal's REST API, lifted by its support): how "
            "long nothing is asked of that portal before one request looks again; its events wait as long"
        ),
    )
    bitrix_notice_via: Literal["connector", "im"] = Field(
        "im",
        description=(
            "How failure notices reach the operator: 'im' (a system message in the chat, im.message.add "
            "SYSTEM=Y; needs the im scope and chat access, else it falls back to the connector) or "
            "'connector' (imconnector.send.messages: shown under the customer's name, marked as a notice)"
        ),
    )
    bitrix_echo_via: Literal["connector", "im"] = Field(
        "im",
        description=(
            "How messages the business sent from the WhatsApp Business app (coexistence echoes), consent "
            "changes, customer identity changes and imported history reach the chat: 'im' (im.message.add SYSTEM=Y: a system line, not the customer's, never "
            "relayed back to WhatsApp; falls back to the connector when refused or the chat is not known "
            "yet) or 'connector' (imconnector.send.messages, shown under the customer with a 🏢 prefix)"
        ),
    )
    bitrix_send_read_status: bool = Field(
        True,
        description=(
            "Report WhatsApp read (and played) receipts with imconnector.send.status.reading, each once "
            "(documented as a no-op in Bitrix24; delivery already marks read). Off: reads only update the link"
        ),
    )
    status_link_attempts: int = Field(
        6,
        ge=1,
        description=(
            "Deliveries of a status whose message link is not recorded yet (Meta can be faster than the "
            "meta dispatcher's LinkMessage; after an ambiguous send the link comes with its confirmation, "
            "20 s or more later) before it is taken as not ours; 6 spans about a minute with the default "
            "backoff. These retries do not hold the conversation"
        ),
    )
    dispatch_concurrency: int = Field(32, ge=1, description="Conversations prepared concurrently")
    conversation_cache_size: int = Field(
        100_000,
        ge=0,
        description=(
            "Conversations kept in memory (per portal, channel and customer) so a known customer's message "
            "needs no GetOrCreateConversation; 0 disables (docs/bitrix-ingress.md)"
        ),
    )
    conversation_cache_ttl_s: float = Field(
        300.0,
        gt=0,
        description="Longest a known conversation is used without the mapper having answered for it again",
    )
    bitrix_offline_poll_s: float = Field(
        10.0,
        ge=0,
        description=(
            "Seconds between two drains of each portal's offline-event queue (operator messages whose "
            "online event never reached us; docs/reconciliation.md); 0 disables the reconciler"
        ),
    )
    bitrix_offline_pages_per_poll: int = Field(
        4,
        ge=1,
        le=50,
        description="event.offline.get pages (50 records each) per portal and poll: bounds its REST share",
    )


SETTINGS_CLASSES: list[type[BaseSettings]] = [
    WebSettings,
    DispatcherSettings,
    KafkaSettings,
    GrpcClientSettings,
]

# The classes each process reads (the chart tests validate each container's environment with them).
PROCESS_SETTINGS: dict[str, list[type[BaseSettings]]] = {
    "bitrix-ingress-web": [WebSettings, KafkaSettings, GrpcClientSettings],
    "bitrix-dispatcher": [DispatcherSettings, KafkaSettings, GrpcClientSettings],
}
