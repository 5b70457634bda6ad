"""Settings of the meta-ingress processes: the web entrypoint and the dispatcher.

Every field is an environment variable with the ``ZAPTRIX_`` prefix (e.g. ``ZAPTRIX_WEB_PORT``,
``ZAPTRIX_GRAPH_API_VERSION``, ``ZAPTRIX_MEDIA_URL_SECRET``). Kafka and the gRPC addresses come from the
shared ``zaptrix.settings.KafkaSettings`` (``ZAPTRIX_KAFKA_*``) and ``GrpcClientSettings``
(``ZAPTRIX_MAPPER_ADDR``, ``ZAPTRIX_TOKEN_KEEPER_ADDR``). See docs/meta-ingress.md.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings
from zaptrix.egress import InsecureUrlError
from zaptrix.settings import (
    DispatcherCommonSettings,
    Formerly,
    GraphApiSettings,
    GrpcClientSettings,
    KafkaSettings,
)

# whatsapp.md A4: "Media IDs in webhooks expire after 7 days"; a signed URL never outlives its media id.
MEDIA_ID_LIFETIME_S = 7 * 24 * 3600


class MetaSettings(GraphApiSettings):
    """What both processes read: the Graph API (zaptrix.settings.GraphApiSettings and the pool size here),
    credentials caching, signed media URLs."""

    graph_max_connections: int = Field(200, ge=1, description="Connection pool size towards the Graph API")

    credentials_cache_ttl_s: float = Field(
        60.0,
        ge=0,
        description="Channel credentials (token-keeper) are reused from memory this long; 0 disables the cache",
    )
    credentials_negative_ttl_s: float = Field(
        5.0, ge=0, description="An unknown phone_number_id is remembered as unknown this long"
    )
    credentials_negative_max_entries: int = Field(
        10_000,
        ge=1,
        description=(
            "Unknown phone_number_ids remembered at most (a separate map: random ids never evict real channels)"
        ),
    )
    credentials_stale_max_s: float = Field(
        900.0,
        ge=0,
        description="While token-keeper is unreachable, expired cache entries are still used up to this age",
    )

    public_base_url: str = Field(
        "http://127.0.0.1:8080",
        description="How Bitrix24 reaches this service's media proxy (must be https in production)",
    )
    media_url_secret: SecretStr = Field(
        SecretStr(""),
        description="HMAC-SHA256 key of the signed media URLs (required in production; 32+ random bytes)",
    )
    media_url_ttl_s: int = Field(
        6 * 24 * 3600,
        ge=60,
        le=MEDIA_ID_LIFETIME_S,
        description="Lifetime of a signed media URL (<= the 7-day life of a webhook media id)",
    )

    @model_validator(mode="after")
    def _check_meta(self) -> MetaSettings:
        public = urlsplit(self.public_base_url)
        if public.scheme not in ("http", "https") or not public.netloc:
            raise ValueError(f"public_base_url must be an absolute URL, got {self.public_base_url!r}")
        if self.environment == "production" and public.scheme != "https":
            raise InsecureUrlError("ZAPTRIX_PUBLIC_BASE_URL must use https in production")
        secret = self.media_url_secret.get_secret_value()
        if self.environment == "production" and len(secret) < 32:
            raise ValueError("ZAPTRIX_MEDIA_URL_SECRET must be set (32+ characters) in production")
        return self

    def media_secret_bytes(self) -> bytes:
        """The signing key; outside production an unset secret falls back to a fixed dev key."""
        secret = self.media_url_secret.get_secret_value()
        return (secret or "zaptrix-dev-media-url-secret").encode()


class WebSettings(MetaSettings):
    """meta-ingress-web: Meta's webhooks and the signed media proxy."""

    web_host: str = Field("0.0.0.0", description="Listen address of the web process")
    web_port: int = Field(
        8080, description="HTTP port: /webhooks/meta, /media/..., /health, /ready, /metrics"
    )
    publish_timeout_s: float = Field(
        4.0,
        gt=0,
        description="A webhook whose events Kafka has not acknowledged in this time gets 503 (Meta retries)",
    )
    web_max_body_bytes: Annotated[int, Formerly("webhook_max_bytes")] = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest request (webhook) body accepted, else 413 (Meta documents up to 3 MB)",
    )
    webhook_max_updates: int = Field(
        1000,
        ge=1,
        description="Most entries, changes, and messages+statuses in one webhook, else 413 (Meta: up to 1,000)",
    )
    webhook_max_channels: int = Field(
        10,
        ge=1,
        le=100,
        description="Most distinct phone_number_ids in one webhook, else 413 (all must share one app secret)",
    )
    webhook_event_max_bytes: int = Field(
        512 * 1024,
        ge=16 * 1024,
        description=(
            "Largest event produced; longer texts are cut with a visible [truncated] marker. Must stay under "
            "ZAPTRIX_KAFKA_MAX_REQUEST_BYTES by 64 KiB (room for the key and headers)"
        ),
    )
    media_chunk_bytes: int = Field(64 * 1024, ge=4096, description="Chunk size of the streamed media proxy")
    media_download_timeout_s: float = Field(
        60.0, gt=0, description="Read timeout while streaming a file from Meta's media URL"
    )


class DispatcherSettings(MetaSettings, DispatcherCommonSettings):
    """meta-dispatcher: operator events from Kafka to the Graph API."""

    metrics_port: Annotated[int, Formerly("dispatcher_metrics_port")] = Field(
        9103, description="Port of /health, /ready and /metrics"
    )
    consumer_group: str = Field("meta-dispatcher", description="Kafka consumer group")
    dispatch_concurrency: Annotated[int, Formerly("consumer_concurrency")] = Field(
        64, ge=1, description="Conversations handled concurrently per batch"
    )

    throughput_mps: float = Field(
        80.0, gt=0, description="Messages per second per phone number (Meta's default: 80; upgraded: 1,000)"
    )
    throughput_overrides: dict[str, float] = Field(
        default_factory=dict,
        description='Per-channel throughput, JSON {"<phone_number_id>": mps} (e.g. 20 for coexistence numbers)',
    )
    throughput_burst_s: float = Field(
        0.1,
        gt=0,
        le=1.0,
        description="Burst allowance in seconds of throughput (small: keeps clear of Meta's own bucket)",
    )
    pair_rate_per_s: float = Field(
        1 / 6, gt=0, description="Messages per second to one customer (Meta's pair limit 131056: 1 per 6 s)"
    )
    pair_burst: int = Field(1, ge=1, description="Messages to one customer allowed back to back")
    pair_margin_s: float = Field(
        0.25, ge=0, description="Safety gap added to the pair interval (network jitter)"
    )
    pair_inline_wait_max_s: float = Field(
        1.0,
        ge=0,
        description="Longer pair waits go through the retry topic instead of holding the consumer batch",
    )

    send_attempts: int = Field(3, ge=1, le=10, description="In-process attempts of one Graph call")
    send_backoff_base_s: float = Field(
        0.25, gt=0, description="First in-process backoff (exponential, jitter)"
    )
    send_backoff_max_s: float = Field(
        3.0, gt=0, description="Longest in-process wait; a longer Retry-After goes to the retry topic"
    )
    ambiguous_retry_s: float = Field(
        20.0,
        gt=0,
        description="After a send whose outcome is unknown (timeout after the request left): wait this long "
        "for its status webhook before looking again (through the retry topic; never resent at once)",
    )
    reconcile_window_s: float = Field(
        120.0,
        gt=0,
        description="How long an ambiguous send waits for a status webhook echoing its id before it is sent "
        "again (a duplicate only if the webhook was lost or later than this)",
    )

    media_send_mode: Literal["upload", "link"] = Field(
        "upload",
        description=(
            "upload: fetch the Bitrix24 file and POST it to /<phone_number_id>/media (Meta's recommendation, "
            "errors known at send time); link: let Meta fetch the Bitrix24 link itself"
        ),
    )
    upload_max_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, description="Largest file fetched for upload (Meta's document limit)"
    )
    file_fetch_timeout_s: float = Field(30.0, gt=0, description="Read timeout fetching a Bitrix24 file")
    file_fetch_deadline_s: float = Field(
        120.0, gt=0, description="Longest a whole Bitrix24 file download may take (then: file not sent)"
    )
    file_min_rate_bytes_per_s: int = Field(
        16 * 1024,
        ge=0,
        description="Slowest average transfer accepted after the grace period (a slow drip is abandoned)",
    )
    file_min_rate_grace_s: float = Field(10.0, ge=0, description="Seconds before the minimum rate applies")
    file_fetch_concurrency: int = Field(
        4, ge=1, description="Bitrix24 file downloads at once in this process (all conversations together)"
    )
    file_spool_budget_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description=(
            "Bytes of downloaded files held at once in the spool directory (the pod's /tmp emptyDir; keep "
            "it under the chart's tmpSizeLimit); more waits"
        ),
    )
    file_spool_wait_s: float = Field(
        30.0, gt=0, description="Longest wait for spool budget before the message is retried later"
    )
    file_spool_dir: str = Field(
        "", description="Where files are spooled while uploading (empty: $TMPDIR or /tmp)"
    )
    file_host_allowlist: list[str] = Field(
        default_factory=list,
        description=(
            "Host suffixes file links may name besides the conversation's own portal (its domain and REST "
            'endpoint host), JSON, e.g. ["bitrix24.com"]; checked on every redirect hop'
        ),
    )
    file_max_redirects: int = Field(3, ge=0, le=10, description="Redirects followed by a file download")

    edit_mode: Literal["correction", "notice"] = Field(
        "notice",
        description=(
            "WhatsApp cannot edit a sent message. correction: send the new text as a follow-up; "
            "notice: send nothing to the customer, tell the operator"
        ),
    )
    correction_prefix: str = Field("✏️ Correction: ", description="Prefix of a follow-up correction")
    delete_mode: Literal["notice", "ignore"] = Field(
        "notice", description="WhatsApp cannot delete a sent message: tell the operator (notice) or only log"
    )
    operator_read_typing_indicator: bool = Field(
        False,
        description=(
            "With the mark-as-read of an operator reply, show the customer the typing indicator until the "
            "reply arrives (at most 25 s); never for a finished dialog"
        ),
    )
    window_precheck: bool = Field(
        True,
        description=(
            "Skip a plain send when the conversation's last customer message is known to be older than 24 h "
            "(the operator is told at once; Meta's 131047 stays the final word)"
        ),
    )
    template_cooldown_s: int = Field(
        24 * 3600,
        ge=60,
        description="At most one re-engagement template per conversation in this period",
    )
    marketing_templates: str = Field(
        "",
        description=(
            "Comma-separated names of re-engagement templates whose category is MARKETING ('*': every one). "
            "Such a template is not sent to a customer who stopped marketing messages (user_preferences "
            "webhook); the operator is told instead. Templates not named here are sent (Meta refuses a "
            "marketing one with 131050, which the operator also sees)"
        ),
    )

    def is_marketing_template(self, name: str) -> bool:
        names = {n.strip() for n in self.marketing_templates.split(",") if n.strip()}
        return "*" in names or name in names

    @model_validator(mode="after")
    def _check_files(self) -> DispatcherSettings:
        if self.upload_max_bytes > self.file_spool_budget_bytes:
            raise ValueError(
                "upload_max_bytes must not exceed file_spool_budget_bytes (a file could never fit)"
            )
        return self


# Every settings class a meta-ingress process reads (the chart tests discover env vars from this list).
SETTINGS_CLASSES: list[type[BaseSettings]] = [
    WebSettings,
    DispatcherSettings,
    KafkaSettings,
    GrpcClientSettings,
]
