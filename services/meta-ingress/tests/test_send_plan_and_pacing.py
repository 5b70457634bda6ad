"""Message planning and pacing (fake clock); the cache policy is tested in libs/zaptrix (test_ttlcache.py)."""

from __future__ import annotations

import time

import pytest
from meta_ingress.dispatcher.pacing import ChannelThrottle, PairPacer
from meta_ingress.dispatcher.send_plan import (
    FileRejected,
    choose_kind,
    media_payload,
    normalize_mime,
    plan_message,
    template_payload,
    text_payload,
)
from zaptrix.v1 import events_pb2

MB = 1024 * 1024


def file(name: str, mime: str = "", size: int = 0) -> events_pb2.BitrixFile:
    return events_pb2.BitrixFile(name=name, mime_type=mime, size=size, link=f"https://b24/{name}")


@pytest.mark.parametrize(
    ("mime", "name", "size", "kind"),
    [
        ("image/jpeg", "a.jpg", 100, "image"),
        ("image/jpg", "a.jpg", 100, "image"),
        ("", "a.PNG", 100, "image"),
        ("image/png", "big.png", 6 * MB, "document"),
        ("image/gif", "a.gif", 100, "document"),
        ("image/webp", "s.webp", 50 * 1024, "sticker"),
        ("image/webp", "s.webp", 300 * 1024, "document"),
        ("video/mp4", "v.mp4", 10 * MB, "video"),
        ("video/quicktime", "v.mov", 10 * MB, "document"),
        ("audio/mpeg", "a.mp3", 1 * MB, "audio"),
        ("audio/mp3", "a.mp3", 1 * MB, "audio"),
        ("", "voice.ogg", 1000, "audio"),
        ("audio/webm", "rec.webm", 1000, "document"),
        ("application/octet-stream", "report.pdf", 1000, "document"),
        ("application/zip", "x.zip", 99 * MB, "document"),
    ],
)
def test_media_kind(mime: str, name: str, size: int, kind: str) -> None:
    assert choose_kind(normalize_mime(mime, name), size) == kind


def test_too_large_files_are_rejected() -> None:
    with pytest.raises(FileRejected, match="100 MB"):
        choose_kind("application/pdf", 101 * MB)
    plan = plan_message("hi", [file("huge.iso", "application/octet-stream", 200 * MB)])
    assert [p.kind for p in plan.parts] == ["text"]
    assert plan.rejected[0][0].name == "huge.iso"


def test_text_becomes_the_caption_of_the_first_captionable_file() -> None:
    plan = plan_message("[b]look[/b]", [file("v.mp3", "audio/mpeg"), file("p.jpg", "image/jpeg")], "wamid.Q")
    assert [(p.kind, p.text) for p in plan.parts] == [("audio", ""), ("image", "*look*")]
    assert plan.parts[0].context_id == "wamid.Q" and plan.parts[1].context_id == ""
    long_text = "x" * 1500
    plan = plan_message(long_text, [file("p.jpg", "image/jpeg")])
    assert [(p.kind, len(p.text)) for p in plan.parts] == [("text", 1500), ("image", 0)]
    assert [p.index for p in plan.parts] == [0, 1]


def test_long_text_is_split_and_empty_message_has_no_parts() -> None:
    plan = plan_message("y" * 9000, [])
    assert [len(p.text) for p in plan.parts] == [4096, 4096, 808]
    assert plan_message("   ", []).parts == []


def test_payloads() -> None:
    assert text_payload("49", "see https://x.io", "wamid.Q") == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "49",
        "type": "text",
        "context": {"message_id": "wamid.Q"},
        "text": {"body": "see https://x.io", "preview_url": True},
    }
    plan = plan_message("cap", [file("r.pdf", "application/pdf")])
    doc = media_payload("49", plan.parts[0], {"id": "77"})
    assert doc["document"] == {"id": "77", "caption": "cap", "filename": "r.pdf"}
    audio = plan_message("", [file("a.mp3", "audio/mpeg")]).parts[0]
    audio.text = "never a caption on audio"
    assert media_payload("49", audio, {"link": "https://b24/a.mp3"})["audio"] == {"link": "https://b24/a.mp3"}
    assert template_payload("49", "hello_world", "")["template"] == {
        "name": "hello_world",
        "language": {"code": "en_US"},
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pair_pacer_schedules_and_keeps_order() -> None:
    clock = Clock()
    pacer = PairPacer(rate_per_s=1 / 6, burst=1, margin_s=0.25, clock=clock)
    key = ("pn", "cust")
    assert pacer.wait_s(key, "e1") == 0
    pacer.commit(key, "e1")
    assert pacer.wait_s(key, "e2") == pytest.approx(6.25)
    assert pacer.defer(key, "e2") == pytest.approx(6.25)
    assert pacer.defer(key, "e3") == pytest.approx(12.5)  # behind e2's reserved slot
    assert pacer.wait_s(key, "e4") == pytest.approx(18.75)  # a new event queues behind both
    assert pacer.wait_s(("pn", "other"), "x") == 0  # other customers are unaffected
    clock.now += 6.25
    assert pacer.wait_s(key, "e2") == 0  # e2 comes back at its slot
    pacer.commit(key, "e2")
    assert pacer.wait_s(key, "e3") == pytest.approx(6.25)
    clock.now += 6.25
    assert pacer.wait_s(key, "e3") == 0


def test_pair_pacer_restore_and_penalty() -> None:
    clock = Clock()
    pacer = PairPacer(rate_per_s=2, burst=3, margin_s=0, clock=clock)
    key = ("pn", "c")
    for i in range(3):  # burst of three
        assert pacer.wait_s(key, f"b{i}") == 0
        pacer.commit(key, f"b{i}")
    assert pacer.wait_s(key, "b3") == pytest.approx(0.5)
    snapshot = pacer.commit(key, "b3")
    pacer.restore(snapshot)  # the send failed before reaching Meta
    assert pacer.wait_s(key, "b3") == pytest.approx(0.5)
    fresh_key = ("pn", "other")
    assert pacer.wait_s(fresh_key, "c0") == 0
    pacer.penalize(fresh_key)  # Meta said 131056: a full interval before the next send, burst or not
    assert pacer.wait_s(fresh_key, "c0") == pytest.approx(0.5)
    clock.now += 10_000
    pacer.sweep()
    assert pacer.wait_s(key, "b5") == 0


async def test_channel_throttle_rate() -> None:
    throttle = ChannelThrottle(default_mps=500, overrides={"slow": 50}, burst_s=0.1)
    started = time.monotonic()
    for _ in range(150):
        await throttle.acquire("fast")
    fast = time.monotonic() - started
    assert 0.2 <= fast <= 0.6, fast  # (150 - 50 burst) / 500 = 0.2 s
    started = time.monotonic()
    for _ in range(15):
        await throttle.acquire("slow")
    assert 0.15 <= time.monotonic() - started <= 0.5  # (15 - 5) / 50
    throttle.pause("fast", 0.2)
    started = time.monotonic()
    await throttle.acquire("fast")
    assert time.monotonic() - started >= 0.19
