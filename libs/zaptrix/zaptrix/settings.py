"""Settings shared by every process. Each service subclasses CommonSettings with its own fields.

Every field is also an environment variable: ``ZAPTRIX_<FIELD>`` (upper case). Telemetry uses the
standard ``OTEL_*`` variables read by the OpenTelemetry SDK itself (see docs/configuration.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Read by every process."""

    model_config = SettingsConfigDict(env_prefix="ZAPTRIX_", extra="ignore", env_ignore_empty=True)

    environment: Literal["dev", "test", "production"] = Field(
        "dev",
        description="dev/test allow plain-http endpoints of the sandbox stand-ins; production refuses them",
    )
    log_level: str = Field("INFO", description="Python log level name")
    allow_insecure_http: bool = Field(
        False, description="Allow plain http:// URLs for Graph API, Bitrix24 and OAuth (sandbox only)"
    )


class KafkaSettings(BaseSettings):
    """Read by the web services (producers) and the dispatchers (consumers and producers)."""

    model_config = SettingsConfigDict(env_prefix="ZAPTRIX_KAFKA_", extra="ignore", env_ignore_empty=True)

    bootstrap_servers: str = Field("127.0.0.1:19092", description="Comma-separated Kafka bootstrap servers")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = Field(None, description="e.g. SCRAM-SHA-512 when SASL is used")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    topic_prefix: str = Field("zaptrix", description="Topics are <prefix>.<flow>[.retry|.dlq].v1")
    linger_ms: int = Field(2, description="Producer linger: concurrent webhooks share a batch")
    request_timeout_ms: int = Field(
        5000, description="Producer request timeout; past it the webhook gets 503"
    )
    max_request_bytes: int = Field(
        1024 * 1024,
        ge=64 * 1024,
        description=(
            "Largest record the producer sends (max_request_size); the topics' max.message.bytes and the "
            "broker's message.max.bytes must be at least this (1048588, Kafka's default, in dev and the chart)"
        ),
    )
    consumer_fetch_max_wait_ms: int = Field(20, description="Bounds end-to-end latency of an idle consumer")
    consumer_max_records: int = Field(200, description="Records per poll batch")


class DatabaseSettings(BaseSettings):
    """Read only by mapper and token-keeper (and their migrations); nothing else touches PostgreSQL."""

    model_config = SettingsConfigDict(env_prefix="ZAPTRIX_DATABASE_", extra="ignore", env_ignore_empty=True)

    url: SecretStr = Field(
        SecretStr("postgresql://zaptrix:zaptrix@127.0.0.1:55432/zaptrix"),
        description="PostgreSQL DSN (asyncpg form, postgresql://user:password@host:port/db)",
    )
    pool_min_size: int = 2
    pool_max_size: int = 10
    acquire_timeout_s: float = Field(2.0, description="Never wait for a pool connection forever")
    statement_timeout_ms: int = 5000


class GrpcClientSettings(BaseSettings):
    """Where the web services and dispatchers find mapper and token-keeper."""

    model_config = SettingsConfigDict(env_prefix="ZAPTRIX_", extra="ignore", env_ignore_empty=True)

    mapper_addr: str = Field("127.0.0.1:50051", description="host:port of the mapper gRPC service")
    token_keeper_addr: str = Field(
        "127.0.0.1:50052", description="host:port of the token-keeper gRPC service"
    )
    grpc_timeout_s: float = Field(3.0, description="Deadline of each gRPC call")
