"""Unit tests: PHP-style nested form keys, token and leaky buckets (with a fake clock)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from zaptrix_sandbox import formdata
from zaptrix_sandbox.ratelimit import LeakyBucket, PeakPerSecond, TokenBucket


def test_nested_keys_parse_like_php() -> None:
    query = (
        "CONNECTOR=wa&LINE=1&MESSAGES[0][user][id]=7&MESSAGES[0][user][name]=Anna+Maria"
        "&MESSAGES[0][message][files][0][url]=https%3A%2F%2Fx%2Fa.png&MESSAGES[1][chat][id]=c%5B1%5D"
        "&VALUES[]=a&VALUES[]=b&broken[x=1&auth=tok"
    )
    parsed = formdata.parse_query(query)
    assert parsed["MESSAGES"]["0"]["user"] == {"id": "7", "name": "Anna Maria"}
    assert parsed["MESSAGES"]["0"]["message"]["files"]["0"]["url"] == "https://x/a.png"
    assert parsed["MESSAGES"]["1"]["chat"]["id"] == "c[1]"  # brackets inside a value are data
    assert formdata.as_list(parsed["VALUES"]) == ["a", "b"]
    assert parsed["broken"] == "1"  # PHP drops text after an unclosed bracket
    assert len(formdata.as_list(parsed["MESSAGES"]) or []) == 2


def test_as_list_rejects_non_sequential_maps() -> None:
    assert formdata.as_list({"1": "a", "0": "b"}) == ["b", "a"]
    assert formdata.as_list({"0": "a", "2": "b"}) is None
    assert formdata.as_list({"a": 1}) is None
    assert formdata.as_list("x") is None


def test_flatten_round_trips() -> None:
    data = {
        "data": {"MESSAGES": [{"im": {"chat_id": 5}, "message": {"text": "[b]A:[/b][br] hi & bye"}}]},
        "auth": {"application_token": "t", "skip": None},
        "flag": True,
    }
    pairs = formdata.flatten(data)
    assert ("data[MESSAGES][0][im][chat_id]", "5") in pairs and ("flag", "1") in pairs
    assert all(not k.startswith("auth[skip]") for k, _ in pairs)
    back = formdata.parse_pairs(parse_qsl(formdata.encode(data)))
    assert back["data"]["MESSAGES"]["0"]["message"]["text"] == "[b]A:[/b][br] hi & bye"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_leaky_bucket_burst_and_drain() -> None:
    clock = FakeClock()
    bucket = LeakyBucket(drain=2, capacity=50, clock=clock)
    assert all(bucket.try_add() for _ in range(50))
    assert not bucket.try_add()
    clock.now += 0.5  # drains one request
    assert bucket.try_add() and not bucket.try_add()
    clock.now += 10
    assert sum(bucket.try_add() for _ in range(30)) == 20  # 10 s at 2/s drained 20


def test_token_bucket_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1 / 6, capacity=1, clock=clock)
    assert bucket.try_take() and not bucket.try_take()
    clock.now += 5.9
    assert not bucket.try_take()
    clock.now += 0.2
    assert bucket.try_take()


def test_peak_per_second() -> None:
    clock = FakeClock()
    peak = PeakPerSecond(clock)
    for _ in range(3):
        peak.hit()
    clock.now += 1
    peak.hit()
    assert peak.peak == 3
