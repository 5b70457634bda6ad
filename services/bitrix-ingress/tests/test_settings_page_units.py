"""Pure units of the settings page: the session token, the language catalogues, the HTML (escaping, labels,
no secret), the placement's language."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bitrix_ingress.settings import WebSettings
from bitrix_ingress.web.settings_page import i18n
from bitrix_ingress.web.settings_page.placement import parse_placement
from bitrix_ingress.web.settings_page.render import page
from bitrix_ingress.web.settings_page.session import BadSession, SessionSigner
from bitrix_ingress.web.settings_page.view import NumberView, PageView
from zaptrix.binding import BindResult, Check, CheckResult, Outcome
from zaptrix.dead_letters import DeadLetter
from zaptrix.kafka import Flow
from zaptrix.v1 import mapper_pb2

PAGE_DIR = Path(i18n.__file__).parent
HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def test_a_session_is_bound_to_its_portal_and_cannot_be_changed() -> None:
    signer = SessionSigner("k" * 40, 600)
    token = signer.issue("portal-a", 3, "pt", "7", active=False, origin="https://a.bitrix24.com")
    s = signer.check(token)
    assert (s.member_id, s.line, s.lang, s.user, s.active, s.origin) == (
        "portal-a",
        3,
        "pt",
        "7",
        False,
        "https://a.bitrix24.com",
    )
    body, mac = token.split(".")
    claims = json.loads(__import__("base64").urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["member_id"] = "portal-b"
    raw = json.dumps(claims, separators=(",", ":")).encode()
    swapped = __import__("base64").urlsafe_b64encode(raw).rstrip(b"=").decode()
    for bad in (f"{swapped}.{mac}", f"{body}.", "", "x" * 2000, f"{body}.{mac}.x"):
        with pytest.raises(BadSession):
            signer.check(bad)
    with pytest.raises(BadSession):
        SessionSigner("another-key-" * 4, 600).check(token)
    with pytest.raises(BadSession):
        signer.check(signer.issue("portal-a", 3, "en", "1", now=time.time() - 601))


def test_unset_secret_means_a_random_key_per_process() -> None:
    token = SessionSigner("", 600).issue("portal-a", 1, "en", "1")
    with pytest.raises(BadSession):
        SessionSigner("", 600).check(token)


def test_production_needs_a_session_secret() -> None:
    with pytest.raises(ValueError, match="SETTINGS_SESSION_SECRET"):
        WebSettings(environment="production", settings_session_secret="short")


@pytest.mark.parametrize(
    ("lang", "want"), [("en", "en"), ("br", "pt"), ("pt", "pt"), ("ru", "ru"), ("de", "en"), ("", "en")]
)
def test_languages(lang: str, want: str) -> None:
    assert i18n.language_of(lang) == want


def test_catalogues_have_the_same_keys_and_every_key_the_code_uses() -> None:
    keys = {lang: set(i18n.catalogue(lang)) for lang in i18n.LANGUAGES}
    assert keys["en"] == keys["pt"] == keys["ru"]
    source = "".join(p.read_text() for p in PAGE_DIR.glob("*.py"))
    used = set(re.findall(r'\bt\(\s*"([a-z_.]+)"', source)) | set(
        re.findall(r'Notice\("\w+", "([a-z_.]+)"', source)
    )
    used |= {f"{prefix}.{c}" for prefix in ("check", "ok") for c in Check}
    used |= {f"outcome.{o}" for o in Outcome}
    missing = {k for k in used if k not in keys["en"] and not k.endswith(".")}
    assert not missing
    for lang in i18n.LANGUAGES:  # placeholders survive translation
        for key, text in i18n.catalogue(lang).items():
            assert set(re.findall(r"\{(\w+)\}", text)) == set(
                re.findall(r"\{(\w+)\}", i18n.catalogue("en")[key])
            )


def _view(**kw: object) -> PageView:
    signer = SessionSigner("k" * 40, 600)
    token = signer.issue("portal-a", 3, "ru", "1")
    return PageView(
        session=signer.check(token), token=token, sdk_url="https://api.bitrix24.com/api/v1/", **kw
    )  # type: ignore[arg-type]


def test_everything_from_outside_is_escaped() -> None:
    letter = DeadLetter(
        id=f"wa-to-b24:0:{HOSTILE}",
        flow=Flow.WA_TO_B24,
        partition=0,
        offset=1,
        event_id=HOSTILE,
        event_type=HOSTILE,
        member_id="portal-a",
        phone_number_id="1",
        reason=HOSTILE,
        dead_at=datetime.now(UTC),
        attempt=8,
        source_topic="t",
    )
    channel = mapper_pb2.Channel(
        phone_number_id="100", display_phone_number=HOSTILE, member_id="portal-a", line_id=3
    )
    result = BindResult(checks=[CheckResult(Check.TOKEN_READS_NUMBER, Outcome.FAILED, "graph_999", HOSTILE)])
    view = _view(
        dead_letters=[letter],
        numbers=[NumberView(channel)],
        bind_result=result,
        bind_values={"waba_id": HOSTILE},
    )
    html, _ = page(view, HOSTILE)
    assert "<script>" not in html and "onerror=alert" not in html.replace("onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;" in html
    view.confirm = letter
    assert "<script>" not in page(view, "t")[0]


def test_every_field_has_a_label_and_secrets_are_never_filled_in() -> None:
    html, nonce = page(_view(bind_values={"phone_number_id": "123", "access_token": "SECRET"}), "Zaptrix")
    for name in ("phone_number_id", "waba_id", "access_token", "app_secret", "verify_token"):
        assert f'<label for="{name}">' in html and f'id="{name}"' in html
    assert "SECRET" not in html and 'value="123"' in html
    assert html.count(f'nonce="{nonce}"') == 3  # the style and both scripts, nothing else runs
    assert '<html lang="ru">' in html and "Проверить и подключить" in html


def test_the_placement_carries_the_portals_language() -> None:
    settings = WebSettings()
    form = {
        "member_id": "m",
        "AUTH_ID": "a",
        "LANG": "br",
        "PLACEMENT_OPTIONS": '{"LINE":"2","CONNECTOR":"zaptrix_whatsapp"}',
    }
    req = parse_placement(form, {}, settings)
    assert (req.lang, req.line, i18n.language_of(req.lang)) == ("br", 2, "pt")
