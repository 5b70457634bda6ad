"""Settings of the Graph API stand-in (env prefix SANDBOX_GRAPH_; lists as JSON)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Channel(BaseModel):
    phone_number_id: str
    display_phone_number: str
    access_token: str
    waba_id: str = "200000000000001"
    # What GET /<phone_number_id> reports (whatsapp.md A5; Meta's WhatsAppBusinessPhoneNumber fields).
    verified_name: str = "Zaptrix Sandbox"
    quality_rating: Literal["GREEN", "YELLOW", "RED", "UNKNOWN"] = "GREEN"
    messaging_limit_tier: str = "TIER_1K"  # deprecated by Meta, still answered
    whatsapp_business_manager_messaging_limit: str = "TIER_2K"
    throughput_level: Literal["STANDARD", "HIGH", "NOT_APPLICABLE"] = "STANDARD"
    code_verification_status: str = "VERIFIED"
    # Whether our app is subscribed to this number's WABA (GET /<waba_id>/subscribed_apps lists it).
    app_subscribed: bool = True


class Template(BaseModel):
    name: str
    languages: list[str] = ["en_US"]
    body_params: int = 0  # a different count of body parameters -> 132000
    category: Literal["utility", "marketing", "authentication"] = "utility"


class GraphOptions(BaseModel):
    """Everything that POST /_sandbox/config may change at run time."""

    webhook_url: str = "http://127.0.0.1:8080/webhooks/meta"
    app_secret: str = "sandbox-app-secret"
    app_id: str = "300000000000001"  # the Meta app that subscribed_apps names
    app_name: str = "Zaptrix Sandbox App"
    channels: list[Channel] = [
        Channel(
            phone_number_id="100000000000001",
            display_phone_number="15550000001",
            access_token="sandbox-wa-token",
        )
    ]
    # whatsapp.md A5: 80 mps per number by default (1,000 when upgraded, 20 for coexistence).
    throughput_mps: float = Field(80.0, gt=0)
    # whatsapp.md A5 table gives HTTP 429 for 130429 (YCLOUD-ERRS).
    throughput_http_status: int = 429
    # whatsapp.md A5: "1 message every 6 seconds to the same WhatsApp user" -> 131056.
    pair_rate_per_s: float = Field(1 / 6, gt=0)
    pair_burst: int = Field(1, ge=1)  # burst allowance is UNCONFIRMED; 1 = the documented rate exactly
    window_enforced: bool = True
    window_hours: float = 24.0
    # whatsapp.md A6: 131047 "often arrives asynchronously as a failed status" -> default "async".
    window_error_mode: Literal["async", "sync"] = "async"
    templates: list[Template] = [Template(name="hello_world")]
    # Offsets (s) after the send for the sent, delivered and read status webhooks.
    status_delays_s: list[float] = [0.05, 0.15, 0.3]
    auto_read: bool = True
    webhook_retry_delays_s: list[float] = [0.5, 1.0, 2.0]
    webhook_timeout_s: float = 10.0
    # Meta's payloads escape non-ASCII as \\uXXXX; the signature covers exactly the bytes sent.
    webhook_ascii_escape: bool = True
    media_url_ttl_s: float = 300.0
    fetch_media_links: bool = True  # download `link` media like Meta does; failure -> 131053
    not_on_whatsapp: list[str] = []  # sends to these numbers fail with 131026
    # Fault injection: sends to these wa_ids are refused at once (HTTP 400) with the given Graph error code.
    refuse_numbers: dict[str, int] = {}
    count_inbound_in_throughput: bool = True  # whatsapp.md A5: throughput counts inbound too


class GraphSettings(GraphOptions, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_GRAPH_")

    host: str = "127.0.0.1"
    port: int = 8090
    public_url: str = ""  # base of media URLs; default http://host:port
    # Webhooks in flight at once (and kept-alive connections to the gateway); more wait in line.
    webhook_concurrency: int = Field(32, ge=1, le=1024)

    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"
