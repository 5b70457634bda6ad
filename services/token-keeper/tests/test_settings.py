"""Settings: the OAuth URL must be https, except plain http for the sandbox outside production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs
from token_keeper.settings import TokenKeeperSettings


def test_oauth_url_https_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("ZAPTRIX_ENVIRONMENT", "ZAPTRIX_ALLOW_INSECURE_HTTP", "ZAPTRIX_BITRIX_OAUTH_URL"):
        monkeypatch.delenv(key, raising=False)
    assert TokenKeeperSettings().bitrix_oauth_url == "https://oauth.bitrix.info/oauth/token/"
    sandbox = "http://127.0.0.1:8091/oauth/token/"
    with pytest.raises(ValidationError, match="must use https"):
        TokenKeeperSettings(bitrix_oauth_url=sandbox)
    assert TokenKeeperSettings(bitrix_oauth_url=sandbox, allow_insecure_http=True).bitrix_oauth_url == sandbox
    with pytest.raises(ValidationError, match="must use https"):
        TokenKeeperSettings(bitrix_oauth_url=sandbox, allow_insecure_http=True, environment="production")
    with pytest.raises(ValidationError, match="oauth_budget_s"):
        TokenKeeperSettings(bitrix_oauth_timeout_s=20, oauth_budget_s=15)
    monkeypatch.setenv("ZAPTRIX_REFRESH_MARGIN_S", "600")
    monkeypatch.setenv("ZAPTRIX_IDLE_REFRESH_AFTER_DAYS", "120")
    s = TokenKeeperSettings()
    assert (s.refresh_margin_s, s.idle_refresh_after_days) == (600, 120)


def test_renamed_settings_still_read_their_old_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPTRIX_HTTP_TIMEOUT_S", "2")
    monkeypatch.setenv("ZAPTRIX_APP_TOKEN_CACHE_S", "12")
    with capture_logs() as logs:
        s = TokenKeeperSettings()
    assert (s.bitrix_oauth_timeout_s, s.app_token_cache_ttl_s) == (2, 12)
    assert len([e for e in logs if e["event"] == "deprecated setting name"]) == 2
    monkeypatch.setenv("ZAPTRIX_BITRIX_OAUTH_TIMEOUT_S", "3")
    with pytest.raises(ValueError, match="ZAPTRIX_HTTP_TIMEOUT_S"):
        TokenKeeperSettings()
