"""Pure units: the external chat id rule, settings guards (no database). The cache: libs/zaptrix."""

from __future__ import annotations

import re

import pytest
from mapper.model import new_external_chat_id
from mapper.settings import MapperSettings
from pydantic import ValidationError


def test_new_external_chat_ids_are_random_bitrix_safe_and_never_an_earlier_form() -> None:
    ids = {new_external_chat_id() for _ in range(1000)}
    assert len(ids) == 1000
    for chat in ids:
        assert re.fullmatch(r"wa_[0-9a-f]{32}", chat), chat
        # the derived forms were wa_<phone_number_id>_<wa_id> and wa_x_<hex>: always a second underscore
        assert chat.count("_") == 1


def test_the_dedupe_cache_must_not_outlive_the_records() -> None:
    with pytest.raises(ValidationError):
        MapperSettings(dedupe_retention_hours=1, dedupe_cache_ttl_s=3600)
    assert MapperSettings().dedupe_retention_hours * 3600 > MapperSettings().dedupe_cache_ttl_s
