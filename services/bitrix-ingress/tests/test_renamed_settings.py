"""Settings: renamed variables keep working for one release (zaptrix.settings.Formerly)."""

from __future__ import annotations

import pytest
from bitrix_ingress.settings import DispatcherSettings, WebSettings
from structlog.testing import capture_logs


def test_renamed_settings_still_read_their_old_names(monkeypatch: pytest.MonkeyPatch) -> None:
    old = {
        "ZAPTRIX_PRODUCE_TIMEOUT_S": "3",
        "ZAPTRIX_VERIFY_CACHE_S": "4",
        "ZAPTRIX_DISPATCHER_METRICS_PORT": "9300",
        "ZAPTRIX_CHANNEL_CACHE_S": "5",
    }
    for var, value in old.items():
        monkeypatch.setenv(var, value)
    with capture_logs() as logs:
        web, dispatcher = WebSettings(), DispatcherSettings()
    assert (web.publish_timeout_s, web.verify_cache_ttl_s) == (3, 4)
    assert (dispatcher.metrics_port, dispatcher.channel_cache_ttl_s) == (9300, 5)
    assert {e["old"] for e in logs if e["event"] == "deprecated setting name"} == set(old)


def test_old_and_new_names_that_disagree_stop_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPTRIX_CHANNEL_CACHE_S", "5")
    monkeypatch.setenv("ZAPTRIX_CHANNEL_CACHE_TTL_S", "6")
    with pytest.raises(ValueError, match="use ZAPTRIX_CHANNEL_CACHE_TTL_S"):
        DispatcherSettings()
