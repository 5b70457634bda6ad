"""Secrets from files (ZAPTRIX_<FIELD>_FILE), the mTLS settings, and production's refusal of plaintext gRPC."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from zaptrix import grpcauth
from zaptrix.clients import Clients
from zaptrix.grpcauth import InsecureGrpcError
from zaptrix.grpcserver import serve
from zaptrix.settings import (
    DatabaseSettings,
    GrpcClientSettings,
    GrpcServerSettings,
    GrpcTlsSettings,
    KafkaSettings,
    secret_fields,
)


def test_secret_is_read_from_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = tmp_path / "dsn"
    dsn.write_text("postgresql://u:from-file@db:5432/z\n")
    monkeypatch.delenv("ZAPTRIX_DATABASE_URL", raising=False)
    monkeypatch.setenv("ZAPTRIX_DATABASE_URL_FILE", str(dsn))
    assert DatabaseSettings().url.get_secret_value() == "postgresql://u:from-file@db:5432/z"


def test_optional_secret_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret")
    monkeypatch.setenv("ZAPTRIX_KAFKA_SASL_PASSWORD_FILE", str(pw))
    password = KafkaSettings().sasl_password
    assert password is not None and password.get_secret_value() == "s3cret"


def test_variable_and_file_together_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = tmp_path / "dsn"
    dsn.write_text("postgresql://a")
    monkeypatch.setenv("ZAPTRIX_DATABASE_URL", "postgresql://b")
    monkeypatch.setenv("ZAPTRIX_DATABASE_URL_FILE", str(dsn))
    with pytest.raises(ValueError, match="both ZAPTRIX_DATABASE_URL and ZAPTRIX_DATABASE_URL_FILE"):
        DatabaseSettings()


def test_missing_secret_file_stops_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZAPTRIX_DATABASE_URL", raising=False)
    monkeypatch.setenv("ZAPTRIX_DATABASE_URL_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="cannot read"):
        DatabaseSettings()


def test_only_secret_fields_have_files() -> None:
    assert secret_fields(DatabaseSettings) == ["url"]
    assert secret_fields(KafkaSettings) == ["sasl_password"]


def test_tls_files_go_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        GrpcTlsSettings(grpc_tls_cert_file=tmp_path / "c.pem")


def test_production_client_refuses_plaintext() -> None:
    with pytest.raises(InsecureGrpcError):
        Clients(GrpcClientSettings(environment="production"))


async def test_production_server_refuses_plaintext() -> None:
    async def ready() -> bool:
        return True

    with pytest.raises(InsecureGrpcError):
        await asyncio.wait_for(
            serve(
                port=0,
                register=lambda server: [],
                dependencies={"postgres": ready},
                handle_signals=False,
                security=GrpcServerSettings(environment="production"),
            ),
            timeout=10,
        )


def test_every_allowed_method_exists_and_web_rows_are_narrow() -> None:
    known = {f"/zaptrix.v1.TokenKeeper/{m}" for m in grpcauth.TOKEN_KEEPER_METHODS} | {
        f"/zaptrix.v1.Mapper/{m}" for m in grpcauth.MAPPER_METHODS
    }
    for methods in grpcauth.ALLOWED.values():
        assert methods <= known
    assert grpcauth.ALLOWED[grpcauth.META_INGRESS_WEB] == {
        "/zaptrix.v1.TokenKeeper/GetChannelCredentials",
        "/zaptrix.v1.TokenKeeper/CheckVerifyToken",
        "/zaptrix.v1.TokenKeeper/GetWabaAppSecret",  # the app secret alone, for a WABA's own webhooks
        "/zaptrix.v1.Mapper/MarkProcessed",  # send confirmations only (REQUEST_RULES)
    }
    assert (grpcauth.META_INGRESS_WEB, "/zaptrix.v1.Mapper/MarkProcessed") in grpcauth.REQUEST_RULES
    for caller in (grpcauth.META_INGRESS_WEB, grpcauth.BITRIX_INGRESS_WEB):
        assert "/zaptrix.v1.TokenKeeper/GetAccessToken" not in grpcauth.ALLOWED[caller]
    assert (
        "/zaptrix.v1.TokenKeeper/UpsertChannelCredentials" not in grpcauth.ALLOWED[grpcauth.META_INGRESS_WEB]
    )
    # bitrix-ingress-web binds numbers only from the connector settings page, for the verified portal
    # (zaptrix.binding); nothing else in its row writes.
    assert grpcauth.ALLOWED[grpcauth.BITRIX_INGRESS_WEB] == {
        "/zaptrix.v1.TokenKeeper/VerifyApplicationToken",
        "/zaptrix.v1.TokenKeeper/GetPortalStatus",
        "/zaptrix.v1.TokenKeeper/UpsertPortal",
        "/zaptrix.v1.TokenKeeper/UpsertChannelCredentials",
        "/zaptrix.v1.TokenKeeper/GetChannelCredentials",
        "/zaptrix.v1.Mapper/ListChannels",
        "/zaptrix.v1.Mapper/FindConversation",
        "/zaptrix.v1.Mapper/FindMessageLink",
        "/zaptrix.v1.Mapper/GetChannel",
        "/zaptrix.v1.Mapper/BindChannel",
        "/zaptrix.v1.Mapper/SetPortalInstalled",  # installed=True only (REQUEST_RULES)
        "/zaptrix.v1.Mapper/ListTemplates",
        "/zaptrix.v1.Mapper/GetChannelActivity",
        "/zaptrix.v1.Mapper/UnbindChannel",
    }


def test_method_lists_match_the_protos() -> None:
    from zaptrix.v1 import mapper_pb2, token_keeper_pb2

    tk = token_keeper_pb2.DESCRIPTOR.services_by_name["TokenKeeper"]
    mapper = mapper_pb2.DESCRIPTOR.services_by_name["Mapper"]
    assert {m.name for m in tk.methods} == set(grpcauth.TOKEN_KEEPER_METHODS)
    assert {m.name for m in mapper.methods} == set(grpcauth.MAPPER_METHODS)


def test_docs_show_the_caller_table() -> None:
    """docs/token-keeper.md and docs/mapper.md show ALLOWED as it is enforced."""
    root = Path(__file__).resolve().parents[3]
    callers = [
        grpcauth.META_INGRESS_WEB,
        grpcauth.META_DISPATCHER,
        grpcauth.BITRIX_INGRESS_WEB,
        grpcauth.BITRIX_DISPATCHER,
        grpcauth.ADMIN,
    ]
    for doc, service, methods in (
        ("token-keeper.md", "TokenKeeper", grpcauth.TOKEN_KEEPER_METHODS),
        ("mapper.md", "Mapper", grpcauth.MAPPER_METHODS),
    ):
        text = (root / "docs" / doc).read_text()
        rows = [line.strip().strip("|").split("|") for line in text.splitlines() if line.startswith("| `")]
        table = {r[0].strip(" `"): [c.strip() for c in r[1:]] for r in rows if len(r) == len(callers) + 1}
        for method in methods:
            full = f"/zaptrix.v1.{service}/{method}"
            # A cell that is neither empty nor "yes" names the condition of a REQUEST_RULES entry.
            cells = ["condition" if cell not in ("", "yes") else cell for cell in table[method]]
            expected = [
                ("condition" if (c, full) in grpcauth.REQUEST_RULES else "yes")
                if full in grpcauth.ALLOWED[c]
                else ""
                for c in callers
            ]
            assert cells == expected, (doc, method)
