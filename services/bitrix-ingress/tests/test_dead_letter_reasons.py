"""What an operator reads about a customer message that could not be shown: plain words, never the
technical reason."""

from __future__ import annotations

import pytest
from bitrix_ingress.dispatcher.dead_letters import plain_reason


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (
            "imconnector.send.messages: ERROR_ARGUMENT (HTTP 400): bad <b>",
            "Bitrix24 refused it (ERROR_ARGUMENT)",
        ),
        ("imconnector.send.messages: NOT_ACTIVE_LINE: The line is inactive", "the Open Line is not active"),
        ("imconnector.send.messages: ACCESS_DENIED (HTTP 403): no", "lacks the permission"),
        ("retries exhausted after 8 attempts: QUERY_LIMIT_EXCEEDED", "could not take it after 8 attempts"),
        ("channel 100000000000001 is inactive", "the WhatsApp channel is switched off"),
        ("unexpected ValueError: something private", "the gateway could not deliver it"),
    ],
)
def test_reasons_become_plain_words(reason: str, words: str) -> None:
    said = plain_reason(reason)
    assert words in said
    assert "<b>" not in said and "private" not in said
