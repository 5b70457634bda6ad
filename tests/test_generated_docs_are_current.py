"""Generated artefacts stay in step with their sources."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "dev"))

import config_docs  # noqa: E402


def test_configuration_reference_is_current() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == config_docs.render(), (
        "docs/configuration.md is stale: run `make docs`"
    )


def test_every_service_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for module in config_docs.SERVICES.values():
        mod = __import__(module, fromlist=["SETTINGS_CLASSES"])
        for cls in mod.SETTINGS_CLASSES:
            for name in cls.model_fields:
                assert f"`{config_docs.env_name(cls, name)}`" in text
