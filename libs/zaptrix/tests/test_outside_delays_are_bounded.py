"""Delays from outside are finite and bounded; the consumer never schedules past retry_max_s."""

from __future__ import annotations

import math

import pytest
from zaptrix.delays import MAX_DELAY_S, clamp_delay, parse_retry_after, seconds_until
from zaptrix.kafka.consumer import EventConsumer, _int_header, _reason_label


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        ("0.2", 0.2),
        (" 3 ", 3.0),
        ("999999999", MAX_DELAY_S),
        ("9" * 12, MAX_DELAY_S),
        ("inf", None),
        ("Infinity", None),
        ("nan", None),
        ("1e9", None),
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("x" * 10_000, None),
        ("Thu, 01 Jan 1970 00:00:10 GMT", 6.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_DELAY_S),
        ("Thu, 01 Jan 1970 00:00:01 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=4.0) == pytest.approx(expected)


def test_clamp_and_seconds_until() -> None:
    assert clamp_delay(math.inf) == MAX_DELAY_S and clamp_delay(-math.inf) == 0.0
    assert clamp_delay(math.nan) is None and clamp_delay(None) is None and clamp_delay(5.0, 2.0) == 2.0
    assert seconds_until("1e300", now=0.0) == MAX_DELAY_S
    assert seconds_until(110, now=100.0) == 10.0
    for hostile in ("inf", "nan", float("inf"), True, {"a": 1}, [1], "soon"):
        assert seconds_until(hostile, now=0.0) is None


@pytest.mark.parametrize("retry_after", [math.inf, 1e9, 1e300, math.nan, None, -1.0])
def test_backoff_never_exceeds_retry_max_s(retry_after: float | None) -> None:
    consumer = EventConsumer.__new__(EventConsumer)
    consumer.retry_base_s, consumer.retry_max_s = 2.0, 900.0
    for attempt in (1, 5, 50, 10_000):
        delay = consumer._backoff(attempt, retry_after)
        assert 0.0 < delay <= 900.0 and math.isfinite(delay)
    assert consumer._backoff(1, 100.0) >= 100.0  # a sane Retry-After is still honoured


def test_garbage_bookkeeping_headers_count_as_absent() -> None:
    assert _int_header([("zaptrix-attempt", b"3")], "zaptrix-attempt", 1) == 3
    for bad in (b"x", b"-1", b"1e9", b"9" * 40, b"\xff"):
        assert _int_header([("zaptrix-attempt", bad)], "zaptrix-attempt", 1) == 1


def test_dead_letter_reason_labels_are_bounded() -> None:
    assert _reason_label("crashed its process 3 times") == "crashed"
    assert _reason_label("retries exhausted after 8 attempts: HOSTILE_1") == "retries_exhausted"
    assert _reason_label("HOSTILE_2 (HTTP 400): whatever") == "refused"
