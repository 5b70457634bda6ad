"""Settings: validation and the list the chart tests read."""

from __future__ import annotations

import pytest
from meta_ingress import settings as s
from pydantic import ValidationError
from structlog.testing import capture_logs
from zaptrix.settings import DispatcherCommonSettings


def test_defaults() -> None:
    web = s.WebSettings()
    dispatcher = s.DispatcherSettings()
    assert web.web_port == 8080 and dispatcher.metrics_port == 9103
    assert dispatcher.throughput_mps == 80 and dispatcher.pair_rate_per_s == pytest.approx(1 / 6)
    assert web.graph_root == "https://graph.facebook.com/v25.0"
    assert web.media_url_ttl_s <= s.MEDIA_ID_LIFETIME_S


def test_plain_http_graph_needs_the_sandbox_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="https"):
        s.WebSettings(graph_api_base_url="http://127.0.0.1:8090")
    assert s.WebSettings(graph_api_base_url="http://127.0.0.1:8090", allow_insecure_http=True)
    with pytest.raises(ValidationError, match="https"):
        s.WebSettings(
            graph_api_base_url="http://x",
            allow_insecure_http=True,
            environment="production",
            media_url_secret="x" * 32,
            public_base_url="https://mi",
        )


@pytest.mark.parametrize("version", ["v20.0", "v22.0", "25", "v25", "latest"])
def test_old_or_malformed_graph_versions_are_refused(version: str) -> None:
    with pytest.raises(ValidationError):
        s.WebSettings(graph_api_version=version)


def test_production_needs_a_media_secret_and_https_public_url() -> None:
    with pytest.raises(ValidationError, match="MEDIA_URL_SECRET"):
        s.WebSettings(environment="production", public_base_url="https://mi.example.com")
    with pytest.raises(ValidationError, match="https"):
        s.WebSettings(environment="production", media_url_secret="k" * 32, public_base_url="http://mi")
    with pytest.raises(ValidationError):
        s.WebSettings(media_url_ttl_s=8 * 24 * 3600)


def test_env_and_settings_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPTRIX_THROUGHPUT_OVERRIDES", '{"123": 20}')
    monkeypatch.setenv("ZAPTRIX_WEB_PORT", "9000")
    assert s.DispatcherSettings().throughput_overrides == {"123": 20.0}
    assert s.WebSettings().web_port == 9000
    names = {cls.__name__ for cls in s.SETTINGS_CLASSES}
    assert {"WebSettings", "DispatcherSettings", "KafkaSettings", "GrpcClientSettings"} <= names


def test_renamed_settings_still_read_their_old_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPTRIX_CONSUMER_CONCURRENCY", "5")
    monkeypatch.setenv("ZAPTRIX_DISPATCHER_METRICS_PORT", "9200")
    monkeypatch.setenv("ZAPTRIX_WEBHOOK_MAX_BYTES", "2048")
    with capture_logs() as logs:
        dispatcher, web = s.DispatcherSettings(), s.WebSettings()
    assert (dispatcher.dispatch_concurrency, dispatcher.metrics_port, web.web_max_body_bytes) == (
        5,
        9200,
        2048,
    )
    assert {e["new"] for e in logs if e["event"] == "deprecated setting name"} == {
        "ZAPTRIX_DISPATCH_CONCURRENCY",
        "ZAPTRIX_METRICS_PORT",
        "ZAPTRIX_WEB_MAX_BODY_BYTES",
    }


def test_redelivery_is_configured_like_the_bitrix_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """max_attempts and retry_base_s come from the shared DispatcherCommonSettings (they were bitrix-only)."""
    monkeypatch.setenv("ZAPTRIX_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("ZAPTRIX_RETRY_BASE_S", "0.5")
    dispatcher = s.DispatcherSettings()
    assert isinstance(dispatcher, DispatcherCommonSettings)
    assert (dispatcher.max_attempts, dispatcher.retry_base_s, dispatcher.channel_cache_ttl_s) == (3, 0.5, 30)
