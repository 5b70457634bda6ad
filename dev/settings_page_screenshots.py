"""Screenshots of the connector settings page for docs/settings-page.md, taken by driving the same flows as
its browser tests (zaptrix_testing.settings_stack) in headless Chromium (dev/stack/chromium.sh).

    .venv/bin/python dev/settings_page_screenshots.py [--kafka 127.0.0.1:19092] [--out docs/settings-page]

Needs a Kafka broker (make run's, or `dev/stack/kafka.sh start`); starts everything else itself (the
Bitrix24 and Graph API stand-ins, meta-ingress-web, bitrix-ingress-web, the kit's mapper and token-keeper)
and stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from rich.console import Console
from zaptrix_testing.browser import new_driver
from zaptrix_testing.settings_stack import (
    BAD_TOKEN,
    GOOD,
    bind,
    click_and_wait,
    open_settings,
    screenshot,
    start_settings_stack,
    wait_sdk,
)

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kafka", default=os.environ.get("ZAPTRIX_TEST_KAFKA", "127.0.0.1:19092"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "settings-page")
    args = parser.parse_args()
    console = Console(stderr=True)
    out: Path = args.out
    with console.status("starting the stand-ins, meta-ingress-web and bitrix-ingress-web (about 15 s)"):
        stack = start_settings_stack(args.kafka, Path(tempfile.mkdtemp(prefix="zaptrix-shots-")))
    laptop = new_driver(1280, 900)
    phone = new_driver(375, 800)
    try:

        def shot(driver: object, name: str) -> None:
            screenshot(driver, out / name)
            console.print(f"  {out / name}")

        stack.reset()
        open_settings(laptop, stack.page_url())
        wait_sdk(laptop)
        bind(laptop, BAD_TOKEN)
        shot(laptop, "bad-credentials.png")
        bind(laptop, GOOD)
        shot(laptop, "good-bind.png")
        stack.conversations()
        click_and_wait(laptop, 'form input[value="check"] ~ button', "#notice")
        shot(laptop, "health.png")
        stack.dead_letter("ERROR_ARGUMENT: The line with this ID is inactive", 1)
        stack.dead_letter("retries exhausted after 8 attempts: QUERY_LIMIT_EXCEEDED", 2)
        open_settings(laptop, stack.page_url())
        shot(laptop, "dead-letters.png")
        click_and_wait(laptop, "tr[data-dead-letter] button", "#confirm")
        shot(laptop, "replay-confirm.png")
        click_and_wait(laptop, "#confirm button.danger", "#notice")
        shot(laptop, "replayed.png")
        open_settings(laptop, stack.page_url(forge=True))
        shot(laptop, "forged-auth.png")
        open_settings(phone, stack.page_url(lang="br"))
        wait_sdk(phone)
        shot(phone, "mobile-portuguese.png")
        open_settings(laptop, stack.page_url(lang="ru"))
        shot(laptop, "russian.png")
    finally:
        laptop.quit()  # type: ignore[attr-defined]
        phone.quit()  # type: ignore[attr-defined]
        stack.stop()


if __name__ == "__main__":
    main()
