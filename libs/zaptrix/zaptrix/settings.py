"""Settings shared by every process. Each service subclasses CommonSettings with its own fields.

Every field is also an environment variable: ``ZAPTRIX_<FIELD>`` (upper case). Every secret field
(SecretStr) can instead be read from a file named by ``ZAPTRIX_<FIELD>_FILE`` (a mounted Secret), so
that secrets stay out of the environment. A renamed field keeps its old name for one release
(``Annotated[float, Formerly("old_name")]``): the old variable still works with a warning. Telemetry uses the standard ``OTEL_*`` variables read by the
OpenTelemetry SDK itself (see docs/configuration.md).
"""

from __future__ import annotations

import ipaddress
import os
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from zaptrix.egress import EgressPolicy, insecure_http_allowed, networks_setting, require_https
from zaptrix.logging import warn_early

FILE_SUFFIX = "_FILE"


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_secret(a) for a in typing.get_args(annotation))
    return False


def secret_fields(cls: type[BaseSettings]) -> list[str]:
    """Names of the fields that may come from a ``*_FILE`` variable."""
    return [name for name, info in cls.model_fields.items() if _is_secret(info.annotation)]


class SecretFileSource(PydanticBaseSettingsSource):
    """``ZAPTRIX_<FIELD>_FILE=/path`` for every SecretStr field: the value is the file's content (one
    trailing newline removed). Setting both the variable and its ``_FILE`` twin is refused, as is a
    file that cannot be read: a misconfigured secret must stop the process, not fall back to a default."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads everything at once

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix", ""))
        values: dict[str, Any] = {}
        for name in secret_fields(self.settings_cls):
            var = f"{prefix}{name}".upper()
            path = os.environ.get(var + FILE_SUFFIX)
            if not path:
                continue
            if os.environ.get(var):
                raise ValueError(f"both {var} and {var}{FILE_SUFFIX} are set: use one")
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"{var}{FILE_SUFFIX}: cannot read {path}: {exc.strerror}") from exc
            values[name] = text[:-1] if text.endswith("\n") else text
            if values[name].endswith("\r"):
                values[name] = values[name][:-1]
        return values


@dataclass(frozen=True)
class Formerly:
    """Field metadata: the field's previous names (deprecated aliases, accepted for one release)."""

    names: tuple[str, ...]

    def __init__(self, *names: str) -> None:
        object.__setattr__(self, "names", names)


def former_names(info: FieldInfo) -> tuple[str, ...]:
    return tuple(n for m in info.metadata if isinstance(m, Formerly) for n in m.names)


def renamed_variables(cls: type[BaseSettings]) -> Iterator[tuple[str, str, str, FieldInfo]]:
    """(old variable, current variable, field name, field) for every deprecated name of ``cls``."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    for name, info in cls.model_fields.items():
        for old in former_names(info):
            yield f"{prefix}{old}".upper(), f"{prefix}{name}".upper(), name, info


def deprecated_aliases(cls: type[BaseSettings]) -> dict[str, str]:
    """Old environment variable -> the current one, for every renamed field of ``cls``."""
    return {old: new for old, new, _, _ in renamed_variables(cls)}


class FormerNameSource(PydanticBaseSettingsSource):
    """The deprecated names of renamed fields. The old variable is used, with a warning naming old and new,
    when the new one is unset; both set to different values is refused (which one was meant?)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads everything at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for old_var, new_var, name, info in renamed_variables(self.settings_cls):
            raw = os.environ.get(old_var)
            if not raw:
                continue
            current = os.environ.get(new_var)
            if current and not _same_value(info, current, raw):
                raise ValueError(
                    f"{old_var} (deprecated) and {new_var} are set to different values: use {new_var}"
                )
            warn_early("zaptrix.settings", "deprecated setting name", old=old_var, new=new_var)
            if not current and name not in values:
                complex_value = self.field_is_complex(info)
                values[name] = self.decode_complex_value(name, info, raw) if complex_value else raw
        return values


def _same_value(info: FieldInfo, a: str, b: str) -> bool:
    """Equal as the field's type reads them ("30" and "30.0" for a float)."""
    if a.strip() == b.strip():
        return True
    if info.annotation is None:
        return False
    adapter: TypeAdapter[Any] = TypeAdapter(info.annotation)
    try:
        return bool(adapter.validate_python(a) == adapter.validate_python(b))
    except ValidationError:
        return False


class ZaptrixSettings(BaseSettings):
    """Base of every settings class: environment variables, then the deprecated names of renamed fields,
    then ``*_FILE`` for secret fields."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            FormerNameSource(settings_cls),
            SecretFileSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )


class CommonSettings(ZaptrixSettings):
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
    egress_allow_networks: list[str] = Field(
        default_factory=list,
        description=(
            "Non-public networks that tenant-named URLs (portal endpoints, file links) may reach, JSON CIDRs, "
            'e.g. ["127.0.0.1/32"] for the local sandbox; empty (production) refuses every private, loopback, '
            "link-local and CGNAT address"
        ),
    )

    @field_validator("egress_allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return networks_setting(value)

    def egress_policy(self) -> EgressPolicy:
        """The egress guard's process-wide policy (zaptrix.egress)."""
        return EgressPolicy.of(self.egress_allow_networks, allow_http=insecure_http_allowed(self))


class BitrixOAuthSettings(CommonSettings):
    """Bitrix24's OAuth token endpoint, one knob for token-keeper (refreshes) and bitrix-ingress-web (the
    install check)."""

    bitrix_oauth_url: str = Field(
        "https://oauth.bitrix.info/oauth/token/",
        description=(
            "Bitrix24's OAuth token endpoint, the only Bitrix24 endpoint a client secret is sent to: token-keeper's refreshes "
            "and bitrix-ingress-web's install check by a refresh-token exchange when app.info does not name "
            "the portal (needs ZAPTRIX_BITRIX_CLIENT_SECRET)"
        ),
    )

    @model_validator(mode="after")
    def _oauth_url_https(self) -> BitrixOAuthSettings:
        require_https(self.bitrix_oauth_url, self, what="ZAPTRIX_BITRIX_OAUTH_URL")
        return self


_GRAPH_VERSION = re.compile(r"^v\d+\.\d+$")
# whatsapp.md A3: v20.0 is dead; anything older than v23.0 is refused so a stale env var cannot slip in.
OLDEST_GRAPH_VERSION = (23, 0)


class GraphApiSettings(CommonSettings):
    """Where the Graph API is: meta-ingress sends through it; the number binding (zaptrix.binding, used by
    the connector settings page and zaptrix-admin) checks a number's credentials against it."""

    graph_api_base_url: str = Field(
        "https://graph.facebook.com", description="Graph API base URL (the sandbox stand-in in dev)"
    )
    graph_api_version: str = Field(
        "v25.0", description="Graph API version used in every path (v23.0 or later; see whatsapp.md A3)"
    )
    graph_connect_timeout_s: float = Field(3.0, gt=0, description="TCP/TLS connect timeout to the Graph API")
    graph_timeout_s: float = Field(10.0, gt=0, description="Read timeout of one Graph API call")

    @model_validator(mode="after")
    def _check_graph(self) -> GraphApiSettings:
        require_https(self.graph_api_base_url, self, what="ZAPTRIX_GRAPH_API_BASE_URL")
        if not _GRAPH_VERSION.match(self.graph_api_version):
            raise ValueError(f"graph_api_version must look like v24.0, got {self.graph_api_version!r}")
        major, minor = (int(p) for p in self.graph_api_version[1:].split("."))
        if (major, minor) < OLDEST_GRAPH_VERSION:
            raise ValueError(
                f"graph_api_version {self.graph_api_version} is older than v23.0 (whatsapp.md A3)"
            )
        return self

    @property
    def graph_root(self) -> str:
        return f"{self.graph_api_base_url.rstrip('/')}/{self.graph_api_version}"


class ChannelBindingSettings(GraphApiSettings):
    """Binding a WhatsApp number to a portal's Open Line (zaptrix.binding): the Graph API, and the webhook URL
    whose verification handshake is checked with the number's verify token."""

    meta_webhook_url: str = Field(
        "",
        description=(
            "The callback URL configured in the Meta app (meta-ingress's public GET/POST /webhooks/meta, e.g. "
            "https://zaptrix.example.com/webhooks/meta): binding a number checks that it answers Meta's "
            "verification handshake with the number's verify token; empty: that check is skipped and says so"
        ),
    )

    @model_validator(mode="after")
    def _check_webhook_url(self) -> ChannelBindingSettings:
        if self.meta_webhook_url:
            require_https(self.meta_webhook_url, self, what="ZAPTRIX_META_WEBHOOK_URL")
        return self


class KafkaSettings(ZaptrixSettings):
    """Read by the web services (producers) and the dispatchers (consumers and producers)."""

    model_config = SettingsConfigDict(env_prefix="ZAPTRIX_KAFKA_", extra="ignore", env_ignore_empty=True)

    bootstrap_servers: str = Field("127.0.0.1:19092", description="Comma-separated Kafka bootstrap servers")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = Field(None, description="e.g. SCRAM-SHA-512 when SASL is used")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    topic_prefix: str = Field("zaptrix", description="Topics are <prefix>.<flow>[.retry|.dlq].v1")
    linger_ms: int = Field(
        2,
        description="Producer linger for keyless records; keyed events (all of zaptrix's) share per-partition "
        "batches with no timer, the next batch filling while one is in flight",
    )
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
    consumer_fetch_max_wait_ms: int = Field(
        250,
        description=(
            "Longest the broker holds a consumer's fetch while it has nothing new (a record that arrives "
            "is answered at once: fetch_min_bytes is 1); short values only add idle fetches (broker CPU)"
        ),
    )
    consumer_max_records: int = Field(200, description="Records per poll batch")
    consumer_max_in_flight_batches: int = Field(
        2,
        ge=1,
        description=(
            "Poll batches a dispatcher handles at once: the next batch starts while the previous one's tail "
            "is in flight (a conversation's records still in order); 1 handles one batch at a time. A "
            "rebalance or a stop waits for the batches in flight"
        ),
    )


class DispatcherCommonSettings(ZaptrixSettings):
    """Read by both dispatchers: redelivery through the retry topic and the cache of mapper channel bindings."""

    model_config = SettingsConfigDict(env_prefix="ZAPTRIX_", extra="ignore", env_ignore_empty=True)

    max_attempts: int = Field(8, ge=1, description="Deliveries of one event before the dead-letter topic")
    retry_base_s: float = Field(2.0, gt=0, description="First retry delay (doubles each attempt, jittered)")
    channel_cache_ttl_s: Annotated[float, Formerly("channel_cache_s")] = Field(
        30.0, ge=0, description="Mapper channel bindings are reused this long"
    )


class DatabaseSettings(ZaptrixSettings):
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


class GrpcTlsSettings(ZaptrixSettings):
    """Mutual TLS of the internal gRPC (mapper, token-keeper and their callers). The certificate's common
    name is this process's identity, which the servers authorise per method (docs/deploy.md)."""

    model_config = SettingsConfigDict(env_prefix="ZAPTRIX_", extra="ignore", env_ignore_empty=True)

    grpc_tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) this process presents; its CN is the caller identity"
    )
    grpc_tls_key_file: Path | None = Field(None, description="PEM private key of grpc_tls_cert_file")
    grpc_tls_ca_file: Path | None = Field(
        None, description="PEM CA bundle that signs the peers' certificates (a CA used only for Zaptrix)"
    )

    @model_validator(mode="after")
    def _all_or_none(self) -> GrpcTlsSettings:
        given = [self.grpc_tls_cert_file, self.grpc_tls_key_file, self.grpc_tls_ca_file]
        if any(given) and not all(given):
            raise ValueError(
                "ZAPTRIX_GRPC_TLS_CERT_FILE, ZAPTRIX_GRPC_TLS_KEY_FILE and ZAPTRIX_GRPC_TLS_CA_FILE go together"
            )
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.grpc_tls_cert_file is not None

    def read_tls(self) -> tuple[bytes, bytes, bytes]:
        """(certificate chain, private key, CA bundle) as bytes."""
        assert self.grpc_tls_cert_file and self.grpc_tls_key_file and self.grpc_tls_ca_file
        return (
            self.grpc_tls_cert_file.read_bytes(),
            self.grpc_tls_key_file.read_bytes(),
            self.grpc_tls_ca_file.read_bytes(),
        )


def bind_address(value: str) -> str:
    """An IP address to listen on (0.0.0.0 / :: every interface, 127.0.0.1 / ::1 loopback only)."""
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError as exc:
        raise ValueError(f"not an IP address to listen on: {value!r}") from exc


def listen_on(address: str, port: int) -> str:
    """host:port for a listener, IPv6 addresses in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class MetricsSettings(ZaptrixSettings):
    """Where the separate /metrics listener binds (mapper, token-keeper; the dispatchers' /health, /ready and
    /metrics). Web processes serve /metrics on their web listener (ZAPTRIX_WEB_HOST)."""

    model_config = SettingsConfigDict(env_prefix="ZAPTRIX_", extra="ignore", env_ignore_empty=True)

    metrics_bind_address: str = Field(
        "0.0.0.0",
        description=(
            "Address the metrics/ops listener binds: 0.0.0.0 every interface (containers: the kubelet and "
            "Prometheus reach the pod IP), 127.0.0.1 loopback only (`make run`)"
        ),
    )

    @field_validator("metrics_bind_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return bind_address(value)


class GrpcServerSettings(GrpcTlsSettings):
    """How mapper and token-keeper serve gRPC: mTLS (required in production) and the plaintext health port."""

    grpc_bind_address: str = Field(
        "0.0.0.0",
        description=(
            "Address the gRPC listeners (service and health port) bind: 0.0.0.0 every interface (containers), "
            "127.0.0.1 loopback only (`make run`)"
        ),
    )
    grpc_reflection: bool = Field(
        False,
        description=(
            "Serve gRPC server reflection, so grpcurl and similar tools list and call the methods without the "
            ".proto files; with mTLS still only for callers holding a certificate of Zaptrix's CA (on in `make run`)"
        ),
    )

    @field_validator("grpc_bind_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return bind_address(value)

    environment: Literal["dev", "test", "production"] = Field(
        "dev", description="(CommonSettings) production refuses to serve gRPC without mTLS"
    )
    grpc_health_port: int = Field(
        0,
        description=(
            "Plaintext port serving only grpc.health.v1 (kubelet gRPC probes cannot present a client "
            "certificate); 0 disables it"
        ),
    )


class GrpcClientSettings(GrpcTlsSettings):
    """Where the web services and dispatchers find mapper and token-keeper."""

    model_config = SettingsConfigDict(env_prefix="ZAPTRIX_", extra="ignore", env_ignore_empty=True)

    mapper_addr: str = Field("127.0.0.1:50051", description="host:port of the mapper gRPC service")
    token_keeper_addr: str = Field(
        "127.0.0.1:50052", description="host:port of the token-keeper gRPC service"
    )
    grpc_timeout_s: float = Field(3.0, description="Deadline of each gRPC call")
    mapper_tls_name: str = Field(
        "mapper.zaptrix",
        description="Name the mapper's certificate must carry (checked instead of the address)",
    )
    token_keeper_tls_name: str = Field(
        "token-keeper.zaptrix", description="Name token-keeper's certificate must carry"
    )
    environment: Literal["dev", "test", "production"] = Field(
        "dev", description="(CommonSettings) production refuses to call gRPC without mTLS"
    )
