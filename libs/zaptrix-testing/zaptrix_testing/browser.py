"""Headless Chromium driven by Selenium, for tests of the pages Zaptrix serves (the connector settings page).

Debian's chromium and chromedriver (dev/stack/chromium.sh installs them; `make test` exports their paths
as ZAPTRIX_CHROMIUM / ZAPTRIX_CHROMEDRIVER, else they are looked up on PATH). Selenium Manager is switched
off: nothing is ever downloaded. Each browser gets a new empty profile and no background networking.

Fixture (registered by the root conftest.py): ``browser`` is a factory, ``browser(width=1280, height=900)``
returns a WebDriver that is quit after the test. Tests using it are marked ``browser`` and ``processes``
(never in `make test-fast`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Selenium Manager is never consulted (the driver path is explicit); should it be, it is offline and
# replaced by `false`, so it can fetch nothing.
os.environ["SE_OFFLINE"] = "true"
os.environ["SE_AVOID_STATS"] = "true"
os.environ["SE_MANAGER_PATH"] = shutil.which("false") or "/bin/false"

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
    "--no-default-browser-check",
)

Browser = Callable[..., "object"]


def paths() -> tuple[str, str]:
    """(chromium, chromedriver): the exported paths, else PATH; fails the test (never skips) without them."""
    browser = os.environ.get("ZAPTRIX_CHROMIUM") or shutil.which("chromium") or ""
    driver = os.environ.get("ZAPTRIX_CHROMEDRIVER") or shutil.which("chromedriver") or ""
    if not (browser and driver):
        pytest.fail("chromium/chromedriver missing: run dev/stack/chromium.sh install (make test does)")
    return browser, driver


def new_driver(width: int = 1280, height: int = 900, profile: Path | None = None, lang: str = "en") -> object:
    """A headless Chromium of the given window size with a new empty profile (caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--lang={lang}")
    options.add_argument(f"--user-data-dir={profile or tempfile.mkdtemp(prefix='zaptrix-chromium-')}")
    # An explicit driver path: Selenium Manager is never consulted (and could not download anyway).
    service = Service(executable_path=driver)
    chrome = webdriver.Chrome(options=options, service=service)
    chrome.set_page_load_timeout(30)
    return chrome


@pytest.fixture
def browser(processes: None, tmp_path: Path) -> Iterator[Browser]:
    """Factory of headless Chromium windows; every one is quit after the test."""
    started: list[object] = []

    def make(width: int = 1280, height: int = 900, lang: str = "en") -> object:
        profile = tmp_path / f"chromium-{len(started)}"
        profile.mkdir()
        driver = new_driver(width, height, profile, lang)
        started.append(driver)
        return driver

    yield make
    for driver in started:
        driver.quit()  # type: ignore[attr-defined]
