"""The start mark kept in the committed offset's metadata (attempts counted before handling)."""

from __future__ import annotations

from zaptrix.kafka.starts import StartMark


def test_round_trip_and_garbage() -> None:
    mark = StartMark(10, 14, 2)
    assert StartMark.decode(mark.encode()) == mark
    for garbage in (
        None,
        "",
        "hello",
        "zaptrix-starts:v1:5:4:1",
        "zaptrix-starts:v1:1:2:x",
        "zaptrix-starts:v1:1:2",
    ):
        assert StartMark.decode(garbage) is None


def test_suspects_and_what_follows_a_success() -> None:
    mark = StartMark(10, 14, 2)
    assert [mark.starts_of(o) for o in (9, 10, 11, 14, 15)] == [0, 2, 1, 1, 0]
    assert mark.after_success(10) == StartMark(11, 14, 1)
    assert mark.after_success(14) is None
