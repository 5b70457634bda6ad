"""Settings of the Bitrix24 stand-in (env prefix SANDBOX_BITRIX_; lists as JSON)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class PortalSpec(BaseModel):
    member_id: str = "sandbox-member-1"
    domain: str = "sandbox.bitrix24.com"
    client_id: str = "local.sandbox.app"
    client_secret: str = "sandbox-client-secret"
    application_token: str = "sandbox-app-token"
    line_id: int = 1
    connector_id: str = "zaptrix_whatsapp"
    scope: str = "imopenlines,imconnector,im,crm,placement,disk"
    # Start with the connector registered, active on the line and its data set, as after a finished install.
    preregistered: bool = True
    # Emulate the Open Line's CRM tracker: find or create a contact from user.phone (bitrix24.md §7).
    crm_tracker: bool = False
    # Per-portal override of the leaky bucket (Enterprise plans: drain 5/s, burst 250; bitrix24.md §6).
    rate_limit_drain_per_s: float | None = None
    rate_limit_burst: float | None = None
    # Bitrix24 users with administrator rights (`profile` answers ADMIN=true); user 1 installs the app.
    admin_user_ids: list[int] = [1]
    # The portal's interface language: LANG of placement POSTs (Bitrix24 codes: en, br, ru, de, ...).
    language: str = "en"
    # feature.get(CODE=rest_offline_extended): whether event.offline.get may reserve (clear=0) instead of deleting.
    offline_extended: bool = True
    # Whether the app's user is a member of the Open Lines chats (im.message.add answers ACCESS_ERROR if not).
    im_chat_access: bool = True


class BitrixOptions(BaseModel):
    """Everything that POST /_sandbox/config may change at run time (except portals)."""

    portals: list[PortalSpec] = [PortalSpec()]
    access_token_ttl_s: float = Field(3600.0, gt=0)  # bitrix24.md §5: 1 hour
    refresh_token_ttl_days: float = Field(180.0, gt=0)  # bitrix24.md §5: 180 days
    rate_limit_drain_per_s: float = Field(2.0, gt=0)  # bitrix24.md §6: 2/s, burst 50 (non-Enterprise)
    rate_limit_burst: float = Field(50.0, ge=1)
    # bitrix24.md §6, per app and method: execution seconds allowed within a sliding window of ten baskets
    # (the docs' example: 480 s per 10 minutes); a method over it answers 429 OPERATION_TIME_LIMIT.
    operating_limit_s: float = Field(480.0, gt=0)
    operating_window_s: float = Field(600.0, gt=0)
    # Simulated execution seconds added to each call of these methods (lower-case names), on top of the
    # real handling time, so a test can drive a method over the limit at once.
    operating_cost_s: dict[str, float] = {}
    # UNCONFIRMED whether a refresh invalidates the previous access token; default: it stays valid until expiry.
    revoke_access_on_refresh: bool = False
    # UNCONFIRMED: an unknown token gives invalid_token in practice; the docs list NO_AUTH_FOUND.
    unknown_token_error: Literal["invalid_token", "NO_AUTH_FOUND"] = "invalid_token"
    outbound_url: str = "http://127.0.0.1:8081/webhooks/bitrix24/outbound"
    install_url: str = "http://127.0.0.1:8081/webhooks/bitrix24/install"
    # Without a binding, events go to outbound_url; with require_event_binding they need event.bind.
    require_event_binding: bool = False
    event_timeout_s: float = 10.0
    # Fault injection: events (upper-case names, e.g. ONIMCONNECTORMESSAGEADD) never POSTed to their handler, as
    # when Bitrix24's queue server loses one; an offline binding still queues them (bitrix_offline.py).
    drop_online_events: list[str] = []
    # bitrix24.md §2: user.name/last_name only letters, spaces, hyphens, apostrophes, max 25 chars.
    strict_user_names: bool = True
    fetch_files: bool = True  # download message.files[].url like Bitrix24 does
    # Fault injection: imconnector.send.messages answers ERROR_ARGUMENT (a permanent refusal) for a call
    # carrying a customer message whose text contains one of these strings.
    refuse_texts: list[str] = []
    # Fault injection: Bitrix24's manual block of an app's REST API on these portals (member_id): every REST
    # call answers 503 OVERLOAD_LIMIT (system errors page), until the list no longer names the portal.
    overloaded_portals: list[str] = []
    oauth_domain: str = "oauth.bitrix.info"
    # The OAuth server's app.info answer (GET /oauth/rest/app.info): "full" names client_id, member_id, domain
    # and client_endpoint; "minimal" only client_id, scope and expires (its real shape is UNCONFIRMED), so the
    # gateway must fall back to a refresh-token exchange to learn member_id and client_endpoint.
    oauth_app_info: Literal["full", "minimal"] = "full"

    @field_validator("operating_cost_s")
    @classmethod
    def _lower_methods(cls, costs: dict[str, float]) -> dict[str, float]:
        return {method.lower(): seconds for method, seconds in costs.items()}


class BitrixSettings(BitrixOptions, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_BITRIX_")

    host: str = "127.0.0.1"
    port: int = 8091
    public_url: str = ""  # base of client_endpoint and file links; default http://host:port

    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"
