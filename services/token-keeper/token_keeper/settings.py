"""Settings of the token-keeper processes (server, migrate, admin).

Every field is an environment variable with the ``ZAPTRIX_`` prefix, e.g. ``ZAPTRIX_GRPC_PORT``,
``ZAPTRIX_TOKEN_KEEPER_KEYS``, ``ZAPTRIX_BITRIX_OAUTH_URL``. The database DSN is ``ZAPTRIX_DATABASE_URL``
(zaptrix.settings.DatabaseSettings). See docs/token-keeper.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator
from zaptrix.settings import BitrixOAuthSettings, DatabaseSettings, Formerly, GrpcServerSettings


class TokenKeeperSettings(BitrixOAuthSettings):
    grpc_port: int = Field(50052, description="gRPC port (TokenKeeper + grpc.health.v1)")
    metrics_port: int = Field(9102, description="Prometheus /metrics port; 0 disables")

    token_keeper_keys: SecretStr | None = Field(
        None,
        description=(
            'AES-256 keys: JSON {"kid": "<base64 32 bytes>", ...} or "kid:<base64>,kid2:<base64>". '
            "Required in production; dev/test fall back to a published dev key with a loud warning"
        ),
    )
    token_keeper_active_key_id: str | None = Field(
        None, description="Key id used for new writes; optional when exactly one key is configured"
    )

    bitrix_oauth_method: Literal["GET", "POST"] = Field(
        "GET", description="HTTP method of the refresh request (Bitrix24 documents GET with query parameters)"
    )
    refresh_margin_s: int = Field(
        300, ge=0, description="GetAccessToken returns a token valid at least this long, refreshing first"
    )
    bitrix_oauth_timeout_s: Annotated[float, Formerly("http_timeout_s")] = Field(
        5.0, gt=0, description="Timeout of one OAuth HTTP attempt"
    )
    oauth_attempts: int = Field(3, ge=1, le=10, description="Attempts of one refresh on transient failures")
    oauth_budget_s: float = Field(
        15.0, gt=0, description="Upper bound of one refresh including retries (the portal row stays locked)"
    )
    refresh_failure_cooldown_s: float = Field(
        20.0,
        ge=0,
        description="After a failed refresh, callers are not allowed to trigger another for this long",
    )
    forced_refresh_min_interval_s: float = Field(
        10.0,
        ge=0,
        description="ReportTokenRejected of the current token refreshes at most this often per portal",
    )
    idle_refresh_after_days: float = Field(
        150.0,
        gt=0,
        description="Refresh an idle portal when its refresh token is older than this (Bitrix24: 180-day life)",
    )
    idle_check_interval_s: float = Field(3600.0, gt=0, description="How often the idle-portal sweep runs")
    channel_cache_ttl_s: float = Field(
        30.0,
        ge=0,
        description="GetChannelCredentials answers from memory this long (other replicas' updates)",
    )
    app_token_cache_ttl_s: Annotated[float, Formerly("app_token_cache_s")] = Field(
        30.0,
        gt=0,
        description="How long a portal's application_token and state are trusted before they are re-read",
    )
    unknown_portal_recheck_s: float = Field(
        1.0,
        ge=0,
        description=(
            "Unknown member_ids are answered from the set of known portals, re-read at most this often "
            "(one query for all, however many random member_ids arrive)"
        ),
    )
    gauge_interval_s: float = Field(30.0, gt=0, description="How often portal-state gauges are recomputed")

    @model_validator(mode="after")
    def _check_oauth_budget(self) -> TokenKeeperSettings:
        if self.oauth_budget_s <= self.bitrix_oauth_timeout_s:
            raise ValueError("oauth_budget_s must be larger than bitrix_oauth_timeout_s")
        return self


# Read by dev/config_docs.py (docs/configuration.md): every settings class token-keeper's processes read.
SETTINGS_CLASSES = [TokenKeeperSettings, DatabaseSettings, GrpcServerSettings]
