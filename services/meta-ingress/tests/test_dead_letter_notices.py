"""What an operator reads about a dead-lettered message: plain words from a fixed vocabulary, never the
technical reason (Graph's details, exception texts)."""

from __future__ import annotations

import pytest
from meta_ingress.dispatcher.dead_letters import graph_code, plain_reason, preview


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (
            "Graph API auth: 190: Error validating access token",
            "WhatsApp rejected the channel's access token",
        ),
        ("Graph API auth: http_401: token=abc", "WhatsApp rejected the channel's access token"),
        ("Graph API fault: 131009: Parameter value is not valid", "WhatsApp refused it (error 131009)"),
        (
            "Graph API fault: 368: Temporarily blocked for policies violations",
            "account cannot send right now",
        ),
        ("Graph API fault: 131053: Media upload error: file too large", "the file is too large"),
        ("Graph API fault: 131047: Re-engagement message", "the 24-hour window is closed"),
        ("Graph API fault: 131026: Message undeliverable", "the number is not on WhatsApp"),
        ("retries exhausted after 8 attempts: Graph API: 131000: Something went wrong", "after 8 attempts"),
        ("retries exhausted after 3 attempts: unexpected KeyError: 'x'", "after 3 attempts"),
        ("unknown conversation: no conversation has external_chat_id 'wa_1'", "not linked to a WhatsApp"),
        ("channel not configured: no credentials for 100", "channel of this chat is not set up"),
        ("unexpected ValueError: <html>secret stuff</html>", "the gateway could not deliver it"),
    ],
)
def test_reasons_become_plain_words(reason: str, words: str) -> None:
    said = plain_reason(reason)
    assert words in said
    assert reason.split(": ", 1)[-1] not in said  # the technical text is never shown


def test_graph_code_is_kept_for_the_notice_but_not_after_retries() -> None:
    assert graph_code("Graph API auth: 190: x") == 190
    assert graph_code("retries exhausted after 8 attempts: Graph API: 131000: x") == 0
    assert graph_code("unknown conversation: x") == 0


def test_preview_is_the_first_80_characters_without_name_and_bbcode() -> None:
    text = "[b]Klaus Weber:[/b] [br]Ihre [i]Bestellung[/i] " + "ist unterwegs " * 10
    shown = preview(text, [])
    assert shown.startswith("Ihre Bestellung ist unterwegs") and shown.endswith("…")
    assert len(shown) <= 81
    assert preview("", ["rechnung.pdf"]) == "rechnung.pdf"
