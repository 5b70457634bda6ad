"""Every log line is bounded and carries no secrets, whatever a caller passes (review finding L3)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog
from zaptrix.logging import MAX_LINE_CHARS, bounded_reason, configure_logging, fingerprint, get_logger


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """What the service's log handler writes while the test runs."""
    configure_logging("test-service")
    [handler] = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    buffer = io.StringIO()
    handler.setStream(buffer)
    yield buffer
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


def _read(out: io.StringIO) -> list[dict[str, object]]:
    raw = [line for line in out.getvalue().splitlines() if line.strip()]
    assert raw, "nothing was logged"
    for line in raw:
        assert len(line) <= MAX_LINE_CHARS, len(line)
    return [json.loads(line) for line in raw]


def test_a_one_megabyte_value_gives_a_bounded_line(out: io.StringIO) -> None:
    get_logger("t").error("event lost", event_id="e-1", body="x" * 1_000_000, blob=b"\x00" * 1_000_000)
    [line] = _read(out)
    assert line["event"] == "event lost" and line["event_id"] == "e-1"
    assert "chars]" in str(line["body"])  # cut, and says so
    assert str(line["blob"]).startswith("<bytes 1000000B sha256:")


def test_many_large_values_still_give_a_bounded_line(out: io.StringIO) -> None:
    fields = {f"f{i}": "é" * 2000 for i in range(40)}  # \u00e9 escapes: ~12 KB per value once rendered
    get_logger("t").warning("wide", event_id="e-2", **fields)
    [line] = _read(out)
    assert line["event_id"] == "e-2" and "log_truncated_from" in line


def _deep(n: int) -> None:
    if n == 0:
        raise ValueError("bottom of the stack")
    _deep(n - 1)


def test_a_5000_frame_traceback_gives_a_bounded_line(out: io.StringIO) -> None:
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        _deep(5000)
    except ValueError:
        get_logger("t").exception("handler failed", event_id="e-3")
    finally:
        sys.setrecursionlimit(old)
    [line] = _read(out)
    exc = str(line["exception"])
    assert "ValueError: bottom of the stack" in exc
    assert exc.count("in _deep") <= 40


def test_a_stdlib_record_with_a_huge_message_is_bounded(out: io.StringIO) -> None:
    logging.getLogger("sanic.error").error("request failed: %s", "y" * 500_000)
    [line] = _read(out)
    assert str(line["event"]).startswith("request failed: yyy")


def test_nested_secrets_and_credentials_in_text_are_redacted(out: io.StringIO) -> None:
    get_logger("t").warning(
        "event",
        payload={"auth": {"application_token": "SECRET-1", "domain": "x.bitrix24.com"}},
        items=[{"client_secret": "SECRET-2"}, ("refresh_token", "ok")],
        url="https://oauth.bitrix.info/oauth/token/?refresh_token=SECRET-3&grant_type=refresh_token",
        header="Authorization: Bearer SECRET-4-abcdefgh",
        access_token="SECRET-5",
    )
    [line] = _read(out)
    text = json.dumps(line)
    for secret in ("SECRET-1", "SECRET-2", "SECRET-3", "SECRET-4", "SECRET-5"):
        assert secret not in text, secret
    assert line["payload"] == {"auth": {"application_token": "[redacted]", "domain": "x.bitrix24.com"}}


def test_bounded_reason_and_fingerprint() -> None:
    reason = bounded_reason("unexpected HTTPError: GET https://h/x?access_token=abc\nline2" + "z" * 5000)
    assert "abc" not in reason and "\n" not in reason and len(reason) < 600
    assert fingerprint(b"abc") == "3B sha256:ba7816bf8f01cfea"
