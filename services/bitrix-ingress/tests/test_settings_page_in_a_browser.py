"""The connector settings page in headless Chromium, inside the Bitrix24 stand-in's Contact Center slider with
its BX24 SDK: binding with good and bad credentials, replaying a dead letter, forged and other portals'
auth, the mobile width and a non-English portal. The same flows make the screenshots of
docs/settings-page.md (dev/settings_page_screenshots.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from zaptrix_testing.seeding import SANDBOX_PHONE_NUMBER_ID
from zaptrix_testing.settings_stack import (
    BAD_TOKEN,
    GOOD,
    SettingsStack,
    bind,
    checks,
    click_and_wait,
    open_settings,
    start_settings_stack,
    wait_sdk,
)

ALL_OK = dict.fromkeys(("number_free", "token_reads_number", "app_subscribed", "webhook_verified"), "ok")


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, processes: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SettingsStack]:
    s = start_settings_stack(kafka_bootstrap, tmp_path_factory.mktemp("settings-page"))
    yield s
    s.stop()


@pytest.fixture
def admin(stack: SettingsStack, browser: Any) -> Any:
    """A laptop-sized browser on a fresh state: no number bound."""
    stack.reset()
    return browser(1280, 900)


def test_binding_with_good_credentials_passes_every_check(stack: SettingsStack, admin: Any) -> None:
    open_settings(admin, stack.page_url())
    wait_sdk(admin)  # BX24.init answered through the portal page (postMessage)
    assert admin.find_element(By.ID, "line-state").get_attribute("data-active") == "true"
    assert bind(admin, GOOD) == ALL_OK
    card = admin.find_element(By.CSS_SELECTOR, f'[data-number="{SANDBOX_PHONE_NUMBER_ID}"]')
    assert "GREEN" in card.text and "TIER_2K" in card.text
    health = checks(admin, f'[data-number="{SANDBOX_PHONE_NUMBER_ID}"]')
    assert health == {c: o for c, o in ALL_OK.items() if c != "number_free"}
    channel = stack.fakes.mapper.channels[SANDBOX_PHONE_NUMBER_ID]
    assert (channel.member_id, channel.line_id, channel.active) == (stack.member_id, 1, True)
    stored = stack.fakes.token_keeper.channels[SANDBOX_PHONE_NUMBER_ID]
    assert (stored.access_token, stored.verify_token) == (GOOD["access_token"], GOOD["verify_token"])
    stack.conversations()
    click_and_wait(admin, 'form input[value="check"] ~ button', "#notice")
    card = admin.find_element(By.CSS_SELECTOR, f'[data-number="{SANDBOX_PHONE_NUMBER_ID}"]').text
    assert "Open 24-hour windows\n1" in card and "Conversations\n2" in card  # from the mapper
    assert card.count("UTC") == 2  # last message in and out
    page = admin.page_source
    for secret in ("access_token", "app_secret", "verify_token"):  # write-only: never shown again
        assert GOOD[secret] not in page
        assert admin.find_element(By.ID, secret).get_attribute("value") == ""


def test_binding_with_a_bad_token_stores_nothing_and_says_why(stack: SettingsStack, admin: Any) -> None:
    open_settings(admin, stack.page_url())
    result = bind(admin, BAD_TOKEN)
    assert result["number_free"] == "ok" and result["token_reads_number"] == "failed"
    assert result["webhook_verified"] == "skipped"
    assert "190" in admin.find_element(By.ID, "bind-result").text
    assert SANDBOX_PHONE_NUMBER_ID not in stack.fakes.mapper.channels
    assert SANDBOX_PHONE_NUMBER_ID not in stack.fakes.token_keeper.channels
    # the ids typed in stay, the secrets do not
    assert admin.find_element(By.ID, "phone_number_id").get_attribute("value") == GOOD["phone_number_id"]
    assert BAD_TOKEN["access_token"] not in admin.page_source


def test_a_malformed_id_is_pointed_at_its_field(stack: SettingsStack, admin: Any) -> None:
    open_settings(admin, stack.page_url())
    bind(admin, {**GOOD, "phone_number_id": "+55 11 9999"})
    field = admin.find_element(By.ID, "phone_number_id")
    assert field.get_attribute("aria-invalid") == "true"
    assert "phone_number_id-error" in field.get_attribute("aria-describedby")
    assert not stack.fakes.token_keeper.channels


def test_pause_and_resume_a_number(stack: SettingsStack, admin: Any) -> None:
    open_settings(admin, stack.page_url())
    bind(admin, GOOD)
    click_and_wait(admin, 'form input[value="pause"] ~ button', "#notice")
    assert not stack.fakes.mapper.channels[SANDBOX_PHONE_NUMBER_ID].active
    click_and_wait(admin, 'form input[value="resume"] ~ button', "#notice")
    assert stack.fakes.mapper.channels[SANDBOX_PHONE_NUMBER_ID].active


def test_replaying_a_dead_letter_asks_first_and_is_audited(stack: SettingsStack, admin: Any) -> None:
    open_settings(admin, stack.page_url())
    bind(admin, GOOD)
    event_id = stack.dead_letter("ERROR_ARGUMENT: The line with this ID is inactive")
    open_settings(admin, stack.page_url())
    row = admin.find_element(By.XPATH, f'//tr[td[contains(., "{event_id}")]]')
    assert "inactive" in row.text
    letter = row.get_attribute("data-dead-letter")
    click_and_wait(admin, f'tr[data-dead-letter="{letter}"] button', "#confirm")
    assert "customer_message" in admin.find_element(By.ID, "confirm").text  # nothing replayed yet
    click_and_wait(admin, "#confirm button.danger", "#notice")
    assert "audit" in admin.find_element(By.ID, "notice").text
    assert not admin.find_elements(By.CSS_SELECTOR, f'tr[data-dead-letter="{letter}"]')  # replayed: gone
    audit = stack_audit(stack)
    assert [(a["event_id"], a["actor"], a["outcome"]) for a in audit] == [
        (event_id, f"portal:{stack.member_id}:user:1", "replayed")
    ]


def stack_audit(stack: SettingsStack) -> list[dict[str, Any]]:
    import asyncio

    from zaptrix.dead_letters import DeadLetters

    return [a.as_dict() for a in asyncio.run(DeadLetters(stack.kafka).audit(member_id=stack.member_id))]


def test_forged_auth_gets_nothing(stack: SettingsStack, admin: Any) -> None:
    open_settings(admin, stack.page_url(forge=True))
    assert admin.find_elements(By.ID, "refusal")
    assert not admin.find_elements(By.ID, "bind-form")
    assert SANDBOX_PHONE_NUMBER_ID not in admin.page_source


def test_an_ordinary_user_gets_nothing(stack: SettingsStack, admin: Any) -> None:
    open_settings(admin, stack.page_url(user=2))
    assert admin.find_elements(By.ID, "refusal") and not admin.find_elements(By.ID, "bind-form")


def test_actions_without_a_genuine_session_are_refused(stack: SettingsStack) -> None:
    url = f"{stack.web}/webhooks/bitrix24/settings/action"
    stack.reset()
    for session in ("", "x.y", "eyJtZW1iZXJfaWQiOiJzYW5kYm94LW1lbWJlci0xIn0.forged"):
        r = httpx.post(url, data={"session": session, "action": "bind", **GOOD}, timeout=10)
        assert r.status_code == 401 and "text/html" in r.headers["content-type"]
    assert not stack.fakes.token_keeper.channels and not stack.fakes.mapper.channels


def test_keyboard_only_binding(stack: SettingsStack, admin: Any) -> None:
    open_settings(admin, stack.page_url())
    field = admin.find_element(By.ID, "phone_number_id")
    assert admin.find_element(By.CSS_SELECTOR, 'label[for="phone_number_id"]').text
    field.click()
    order = []
    for name in ("phone_number_id", "waba_id", "access_token", "app_secret", "verify_token"):
        active = admin.switch_to.active_element
        order.append(active.get_attribute("id"))
        active.send_keys(GOOD[name])
        active.send_keys(Keys.TAB)
    assert order == ["phone_number_id", "waba_id", "access_token", "app_secret", "verify_token"]
    assert admin.switch_to.active_element.get_attribute("id") == "bind-submit"
    admin.switch_to.active_element.send_keys(Keys.ENTER)
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(admin, 20).until(lambda d: d.find_elements(By.ID, "bind-result"))
    assert checks(admin, "#bind-result") == ALL_OK


def test_mobile_width_in_portuguese(stack: SettingsStack, browser: Any) -> None:
    stack.reset()
    phone = browser(375, 800)
    open_settings(phone, stack.page_url(lang="br"))  # Bitrix24's code for Brazilian Portuguese
    assert phone.find_element(By.TAG_NAME, "html").get_attribute("lang") == "pt"
    assert phone.find_element(By.ID, "bind-submit").text == "Verificar e conectar"
    overflow = phone.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0  # nothing scrolls sideways at 375 px


def test_russian_portal(stack: SettingsStack, admin: Any) -> None:
    open_settings(admin, stack.page_url(lang="ru"))
    assert admin.find_element(By.TAG_NAME, "html").get_attribute("lang") == "ru"
    assert admin.find_element(By.ID, "bind-submit").text == "Проверить и подключить"
