"""The page's words in English, Portuguese and Russian: one JSON catalogue per language (locales/).

Bitrix24 names Brazilian Portuguese ``br`` (and Portuguese ``pt`` where it exists); anything else falls
back to English, and so does a key a catalogue lacks (tests/test_settings_page_i18n.py keeps them equal).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

LOCALES = Path(__file__).parent / "locales"
LANGUAGES = ("en", "pt", "ru")
_ALIASES = {"br": "pt", "pt": "pt", "ru": "ru", "en": "en"}


def language_of(lang: str) -> str:
    """The catalogue for a Bitrix24 LANG value."""
    return _ALIASES.get(lang.strip().lower()[:2] if lang else "", "en")


@cache
def catalogue(lang: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((LOCALES / f"{lang}.json").read_text(encoding="utf-8"))
    return data


class Words:
    """``t(key, **values)``: the text of a key in the page's language, ``{name}`` placeholders filled."""

    def __init__(self, lang: str) -> None:
        self.lang = language_of(lang)
        self._own = catalogue(self.lang)
        self._en = catalogue("en")

    def __call__(self, key: str, **values: Any) -> str:
        text = self._own.get(key) or self._en.get(key) or key
        return text.format(**values) if values else text
