"""Settings of the mapper process. Every field is an environment variable ``ZAPTRIX_<FIELD>``.

The database connection comes from zaptrix.settings.DatabaseSettings (``ZAPTRIX_DATABASE_*``).
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings
from zaptrix.settings import CommonSettings, DatabaseSettings, GrpcServerSettings


class MapperSettings(CommonSettings):
    grpc_port: int = Field(50051, description="gRPC listen port (Mapper + grpc.health.v1.Health)")
    metrics_port: int = Field(9101, description="Prometheus /metrics port; 0 disables")
    shutdown_grace_s: float = Field(10.0, description="In-flight RPCs get this long to finish on SIGTERM")
    health_period_s: float = Field(
        2.0,
        description="How often the database check (SELECT 1) behind the 'postgres' health status and zaptrix_dependency_up is re-run",
    )
    db_connect_timeout_s: float = Field(5.0, description="Timeout of one new PostgreSQL connection")

    # Dedupe records must outlive every way an event can come back:
    # - Meta retries an unacknowledged webhook "with decreasing frequency" for up to 7 days;
    # - Kafka keeps records 7 days by default (log.retention.hours=168), so a consumer-group offset
    #   reset can replay a week;
    # - our own retry topic and dead-letter replay are bounded by both.
    # 8 days covers the longest of them with a day's margin. A row is ~100 bytes: a million events
    # a day costs under 1 GB.
    dedupe_retention_hours: int = Field(
        192,
        ge=1,
        description="Keep processed-event records this long: past Meta's 7-day webhook retries and Kafka's"
        " default 7-day retention (see docs/mapper.md)",
    )
    dedupe_expiry_interval_s: float = Field(300.0, gt=0, description="Pause between expiry sweeps")
    dedupe_expiry_batch: int = Field(1000, ge=1, description="Rows deleted per statement (short locks)")

    # Caches (0 entries disables one). See docs/mapper.md for why each is safe.
    channel_cache_size: int = Field(4096, ge=0, description="Active channel bindings kept in memory")
    channel_cache_ttl_s: float = Field(
        30.0, gt=0, description="Bounds how long another replica's BindChannel can go unseen here"
    )
    dedupe_cache_size: int = Field(100_000, ge=0, description="Event ids known to be processed")
    dedupe_cache_ttl_s: float = Field(600.0, gt=0, description="Must stay below the dedupe retention")

    @model_validator(mode="after")
    def _cache_within_retention(self) -> MapperSettings:
        if self.dedupe_cache_ttl_s >= self.dedupe_retention_hours * 3600:
            raise ValueError("dedupe_cache_ttl_s must be shorter than dedupe_retention_hours")
        return self


class RetentionSettings(CommonSettings):
    """How long the mapper keeps what it holds (the retention job, `mapper-retention`; see docs/mapper.md).

    Dedupe records keep dedupe_retention_hours (MapperSettings above: past Meta's 7-day webhook retries);
    the cost ledger (monthly counts, no personal data) is kept; 0 days keeps a kind forever."""

    link_retention_days: int = Field(
        90,
        ge=0,
        description="Delete message links (wamid <-> Bitrix24 message id, statuses) older than this. Past 30"
        " days Meta refuses replies and reactions to a message anyway; a status, edit or delete of an older"
        " message finds no link and is ignored. 0 keeps them",
    )
    conversation_idle_days: int = Field(
        365,
        ge=0,
        description="Delete a conversation (mapping, aliases, consent, links) with no message for this long;"
        " the customer writing again starts a new Open Lines chat (the CRM contact is found by phone)."
        " 0 keeps them",
    )
    uninstall_grace_days: int = Field(
        30,
        ge=0,
        description="After the app is uninstalled from a portal, delete the portal's channels, conversations,"
        " links and ledger this many days later (a reinstall within the grace period keeps everything)",
    )
    retention_batch: int = Field(
        500,
        ge=1,
        le=10_000,
        description="Rows deleted per statement (each statement is short: no long locks)",
    )
    retention_pause_s: float = Field(
        0.05, ge=0, le=10, description="Pause between two batches (lets RPCs through during a large sweep)"
    )
    retention_interval_s: float = Field(
        0.0,
        ge=0,
        description="mapper-server runs the retention sweep this often (local `make run`: 600). 0: not in the"
        " server; in Kubernetes the chart's CronJob runs mapper-retention",
    )
    retention_pushgateway_url: str = Field(
        "",
        description="mapper-retention pushes its metrics (rows removed, last success) to this Prometheus"
        " Pushgateway when set (a CronJob pod lives too briefly to be scraped)",
    )
    retention_push_namespace: str = Field(
        "",
        description="Grouping label `namespace` of the pushed metrics (the chart sets the pod's namespace, so"
        " the ZaptrixRetentionStale alert finds them)",
    )


# Read by dev/config_docs.py (docs/configuration.md): what mapper-server, mapper-migrate and mapper-retention
# read.
SETTINGS_CLASSES: list[type[BaseSettings]] = [
    MapperSettings,
    RetentionSettings,
    DatabaseSettings,
    GrpcServerSettings,
]
