"""Renamed settings: the old variable works for one release with a warning, and never silently disagrees."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Annotated

import pytest
import structlog
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from structlog.testing import capture_logs
from zaptrix.logging import configure_logging
from zaptrix.settings import Formerly, ZaptrixSettings, deprecated_aliases


class Renamed(ZaptrixSettings):
    model_config = SettingsConfigDict(env_prefix="ZAPTRIX_", extra="ignore", env_ignore_empty=True)

    channel_cache_ttl_s: Annotated[float, Formerly("channel_cache_s")] = Field(30.0, ge=0)
    portal_rates: Annotated[dict[str, str], Formerly("old_rates")] = Field(default_factory=dict)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CHANNEL_CACHE_TTL_S", "CHANNEL_CACHE_S", "PORTAL_RATES", "OLD_RATES"):
        monkeypatch.delenv(f"ZAPTRIX_{var}", raising=False)


def test_old_name_still_works_with_a_warning_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPTRIX_CHANNEL_CACHE_S", "7")
    with capture_logs() as logs:
        settings = Renamed()
    assert settings.channel_cache_ttl_s == 7.0
    [warning] = [e for e in logs if e["event"] == "deprecated setting name"]
    assert warning["log_level"] == "warning"
    assert (warning["old"], warning["new"]) == ("ZAPTRIX_CHANNEL_CACHE_S", "ZAPTRIX_CHANNEL_CACHE_TTL_S")


def test_old_name_of_a_json_setting_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPTRIX_OLD_RATES", '{"m1": "5/50"}')
    with capture_logs():
        assert Renamed().portal_rates == {"m1": "5/50"}


def test_old_and_new_names_with_different_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPTRIX_CHANNEL_CACHE_S", "7")
    monkeypatch.setenv("ZAPTRIX_CHANNEL_CACHE_TTL_S", "8")
    with pytest.raises(ValueError, match=r"ZAPTRIX_CHANNEL_CACHE_S .* ZAPTRIX_CHANNEL_CACHE_TTL_S"):
        Renamed()


def test_old_and_new_names_with_the_same_value_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPTRIX_CHANNEL_CACHE_S", "30")
    monkeypatch.setenv("ZAPTRIX_CHANNEL_CACHE_TTL_S", "30.0")
    with capture_logs() as logs:
        assert Renamed().channel_cache_ttl_s == 30.0
    assert [e["old"] for e in logs if e["event"] == "deprecated setting name"] == ["ZAPTRIX_CHANNEL_CACHE_S"]


def test_new_name_wins_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPTRIX_CHANNEL_CACHE_TTL_S", "9")
    with capture_logs() as logs:
        assert Renamed().channel_cache_ttl_s == 9.0
    assert logs == []


def test_init_arguments_win_over_a_deprecated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPTRIX_CHANNEL_CACHE_S", "7")
    with capture_logs():
        assert Renamed(channel_cache_ttl_s=1).channel_cache_ttl_s == 1.0


def test_the_old_name_is_validated_like_the_new(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZAPTRIX_CHANNEL_CACHE_S", "-1")
    with capture_logs(), pytest.raises(ValueError, match="greater than or equal to 0"):
        Renamed()


def test_deprecated_aliases_lists_old_and_new_variables() -> None:
    assert deprecated_aliases(Renamed) == {
        "ZAPTRIX_CHANNEL_CACHE_S": "ZAPTRIX_CHANNEL_CACHE_TTL_S",
        "ZAPTRIX_OLD_RATES": "ZAPTRIX_PORTAL_RATES",
    }


@pytest.fixture
def unconfigured_logging() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


def test_a_warning_before_logging_is_configured_is_logged_as_json_once_it_is(
    monkeypatch: pytest.MonkeyPatch, unconfigured_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A process reads its settings before configure_logging (they name the log level)."""
    monkeypatch.setenv("ZAPTRIX_CHANNEL_CACHE_S", "7")
    Renamed()
    Renamed()  # several reads of one settings class warn once
    assert capsys.readouterr().out == ""
    configure_logging("test-service")  # what a process does once it has read its settings
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [(e["event"], e["level"], e["old"], e["new"]) for e in lines] == [
        ("deprecated setting name", "warning", "ZAPTRIX_CHANNEL_CACHE_S", "ZAPTRIX_CHANNEL_CACHE_TTL_S")
    ]
