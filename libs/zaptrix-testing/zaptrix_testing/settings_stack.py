"""The connector settings page with everything it talks to, and the flows an administrator goes through.

Used by the browser tests (services/bitrix-ingress/tests/test_settings_page_in_a_browser.py) and by the
screenshot script (dev/settings_page_screenshots.py), so both drive the same flows. Started: the Bitrix24
stand-in (OAuth server, REST, Contact Center's slider, BX24 SDK), the Graph API stand-in, the kit's mapper
and token-keeper (in a thread: Selenium blocks), real Kafka topics under a fresh prefix, meta-ingress-web
(the webhook URL whose verification a bind checks) and bitrix-ingress-web (the page). The app is installed
into the sandbox portal through the real install flow, which registers the PLACEMENT_HANDLER.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from aiokafka import AIOKafkaProducer
from zaptrix.kafka import Flow, new_envelope, topics_for
from zaptrix.kafka.admin import ensure_topics
from zaptrix.kafka.envelope import H_ATTEMPT, H_DLQ_AT, H_DLQ_REASON, H_DLQ_SOURCE, encode
from zaptrix.kafka.topics import audit_topic
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2, mapper_pb2

from zaptrix_testing.fakes import FakeTokenKeeper, GrpcFakes, Portal, start_fakes_in_thread
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import Proc, Spec, console_script, start_processes, stop_all
from zaptrix_testing.seeding import (
    SANDBOX_MEMBER_ID,
    SANDBOX_PHONE_NUMBER_ID,
    SANDBOX_WA_TOKEN,
    SANDBOX_WABA_ID,
)

CLIENT_ID, CLIENT_SECRET = "local.sandbox.app", "sandbox-client-secret"
LINE = 1
GOOD = {
    "phone_number_id": SANDBOX_PHONE_NUMBER_ID,
    "waba_id": SANDBOX_WABA_ID,
    "access_token": SANDBOX_WA_TOKEN,
    "app_secret": "sandbox-app-secret",
    "verify_token": "page-verify-token-1",
}
BAD_TOKEN = {**GOOD, "access_token": "EAAG-not-a-valid-token"}
WAIT_S = 20.0


@dataclass
class SettingsStack:
    bitrix: str
    graph: str
    web: str
    meta: str
    fakes: GrpcFakes
    kafka: KafkaSettings
    procs: list[Proc] = field(default_factory=list)
    member_id: str = SANDBOX_MEMBER_ID

    def page_url(self, *, lang: str = "en", user: int = 1, forge: bool = False, member_id: str = "") -> str:
        """Contact Center's connector slider of the sandbox portal, as an administrator opens it."""
        query = {"line": str(LINE), "lang": lang, "user": str(user), **({"forge": "1"} if forge else {})}
        return f"{self.bitrix}/_sandbox/portals/{member_id or self.member_id}/connector-settings?{urlencode(query)}"

    def reset(self) -> None:
        """No binding, no stored number credentials, the Graph stand-in as configured at start."""
        self.fakes.mapper.clear()
        self.fakes.token_keeper.channels.clear()
        httpx.post(f"{self.graph}/_sandbox/reset", timeout=10).raise_for_status()

    def conversations(self) -> None:
        """Two customers of the bound number (one wrote an hour ago, one 30 h ago) and a reply sent to the
        first ten minutes ago: what the health panel's activity shows."""
        mapper = self.fakes.mapper
        recent = mapper.add_conversation(
            SANDBOX_PHONE_NUMBER_ID, "4915100000001", "Anna", last_customer_ago_s=3600
        )
        mapper.add_conversation(
            SANDBOX_PHONE_NUMBER_ID, "4915100000002", "Bruno", last_customer_ago_s=30 * 3600
        )
        reply = mapper_pb2.MessageLink(
            conversation_id=recent.id,
            direction=mapper_pb2.DIRECTION_OUTBOUND,
            wamid="wamid.reply1",
            member_id=self.member_id,
        )
        reply.created_at.seconds = int(time.time() - 600)
        mapper.links[reply.wamid] = reply

    def stop(self) -> None:
        stop_all(self.procs)
        self.fakes.stop()

    def dead_letter(self, reason: str, n: int = 1) -> str:
        """A customer message of the bound number that ended in the dead-letter topic; returns its event id."""
        env = new_envelope(
            f"wa:wamid.page{n}.{uuid.uuid4().hex[:6]}",
            f"{SANDBOX_PHONE_NUMBER_ID}:49151000{n}",
            events_pb2.PLATFORM_WHATSAPP,
            customer_message=events_pb2.CustomerMessage(
                phone_number_id=SANDBOX_PHONE_NUMBER_ID,
                wa_id=f"49151000{n}",
                wamid=f"wamid.page{n}",
                text="Hallo",
            ),
        )
        asyncio.run(self._send_dead(env, reason))
        return env.event_id

    async def _send_dead(self, env: events_pb2.Envelope, reason: str) -> None:
        topics = topics_for(Flow.WA_TO_B24, self.kafka.topic_prefix)
        key, value, headers = encode(env)
        headers += [
            (H_ATTEMPT, b"8"),
            (H_DLQ_REASON, reason.encode()),
            (H_DLQ_SOURCE, topics.retry.encode()),
            (H_DLQ_AT, b"2026-12-04T10:00:00+00:00"),
        ]
        producer = AIOKafkaProducer(bootstrap_servers=self.kafka.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(topics.dlq, value, key=key, headers=headers)
        finally:
            await producer.stop()


def _sandbox_portal(bitrix: str) -> dict[str, Any]:
    portal: dict[str, Any] = httpx.get(f"{bitrix}/_sandbox/portals/{SANDBOX_MEMBER_ID}", timeout=10).json()
    return portal


def start_settings_stack(kafka_bootstrap: str, logs: Path) -> SettingsStack:
    """Everything started, the app installed into the sandbox portal; stop() ends it."""
    bitrix_port, graph_port, web_port, meta_port = free_port(), free_port(), free_port(), free_port()
    bitrix, graph = f"http://127.0.0.1:{bitrix_port}", f"http://127.0.0.1:{graph_port}"
    web, meta = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{meta_port}"
    procs = start_processes(
        Spec(
            [console_script("sandbox-bitrix")],
            {
                "SANDBOX_BITRIX_PORT": str(bitrix_port),
                "SANDBOX_BITRIX_OUTBOUND_URL": f"{web}/webhooks/bitrix24/outbound",
                "SANDBOX_BITRIX_INSTALL_URL": f"{web}/webhooks/bitrix24/install",
            },
            f"{bitrix}/_sandbox/health",
            logs / "sandbox-bitrix.log",
        ),
        Spec(
            [console_script("sandbox-graph")],
            {
                "SANDBOX_GRAPH_PORT": str(graph_port),
                "SANDBOX_GRAPH_WEBHOOK_URL": f"{meta}/webhooks/meta",
                "SANDBOX_GRAPH_WEBHOOK_RETRY_DELAYS_S": "[]",
            },
            f"{graph}/_sandbox/health",
            logs / "sandbox-graph.log",
        ),
    )
    portal = _sandbox_portal(bitrix)
    tk = FakeTokenKeeper(bitrix, CLIENT_ID, CLIENT_SECRET)
    tk.add(
        Portal(
            SANDBOX_MEMBER_ID,
            portal["application_token"],
            access_token=portal["access_token"],
            refresh_token=portal["refresh_token"],
            client_endpoint=portal["client_endpoint"],
            domain=portal["domain"],
        )
    )
    fakes = start_fakes_in_thread(tk=tk)
    prefix = f"zt-page-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    names = [t for flow in Flow for t in topics_for(flow, prefix).all()]
    asyncio.run(ensure_topics(kafka, [*names, audit_topic(prefix)], partitions=1))
    common = {
        "ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ZAPTRIX_KAFKA_TOPIC_PREFIX": prefix,
        "ZAPTRIX_ALLOW_INSECURE_HTTP": "true",
        "ZAPTRIX_EGRESS_ALLOW_NETWORKS": '["127.0.0.1/32"]',
        "ZAPTRIX_ENVIRONMENT": "test",
        "ZAPTRIX_GRAPH_API_BASE_URL": graph,
        "OTEL_TRACES_EXPORTER": "none",
        **fakes.env(),
    }
    try:
        procs += start_processes(
            Spec(
                [console_script("meta-ingress-web")],
                {
                    **common,
                    "ZAPTRIX_WEB_PORT": str(meta_port),
                    "ZAPTRIX_PUBLIC_BASE_URL": meta,
                    "ZAPTRIX_MEDIA_URL_SECRET": "test-media-secret-0123456789abcdef",
                },
                f"{meta}/ready",
                logs / "meta-ingress-web.log",
            ),
            Spec(
                [console_script("bitrix-ingress-web")],
                {
                    **common,
                    "ZAPTRIX_WEB_PORT": str(web_port),
                    "ZAPTRIX_PUBLIC_BASE_URL": web,
                    "ZAPTRIX_BITRIX_CLIENT_ID": CLIENT_ID,
                    "ZAPTRIX_BITRIX_CLIENT_SECRET": CLIENT_SECRET,
                    "ZAPTRIX_BITRIX_OAUTH_SERVER_ENDPOINT": f"{bitrix}/oauth/rest/",
                    "ZAPTRIX_BITRIX_OAUTH_URL": f"{bitrix}/oauth/token/",
                    "ZAPTRIX_BITRIX_JS_SDK_URL": f"{bitrix}/api/v1/",
                    "ZAPTRIX_META_WEBHOOK_URL": f"{meta}/webhooks/meta",
                    "ZAPTRIX_SETTINGS_SESSION_SECRET": "page-session-secret-0123456789abcdef",
                },
                f"{web}/ready",
                logs / "bitrix-ingress-web.log",
            ),
        )
        installed = httpx.post(f"{bitrix}/_sandbox/portals/{SANDBOX_MEMBER_ID}/install", timeout=30).json()
        if installed.get("gateway_status") != 200:
            raise RuntimeError(f"install failed: {json.dumps(installed)[:500]}")
    except BaseException:
        stop_all(procs)
        fakes.stop()
        raise
    return SettingsStack(bitrix, graph, web, meta, fakes, kafka, procs)


# --- what an administrator does (Selenium) -------------------------------------------------------------


def open_settings(driver: Any, url: str) -> None:
    """Open Contact Center's slider and switch into it; waits until the page (or a refusal) is there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(ec.frame_to_be_available_and_switch_to_it((By.NAME, "app")))
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_elements(By.ID, "main") or d.find_elements(By.ID, "refusal")
    )


def wait_sdk(driver: Any) -> None:
    """BX24.init answered (the close button is shown only then)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.ID, "close").is_displayed())


def bind(driver: Any, values: dict[str, str]) -> dict[str, str]:
    """Fill the bind form, submit, wait for the result; returns {check: outcome}."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for name, value in values.items():
        box = driver.find_element(By.ID, name)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "bind-submit").click()
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_elements(By.ID, "bind-result") or d.find_elements(By.CSS_SELECTOR, ".error-text")
    )
    return checks(driver, "#bind-result")


def checks(driver: Any, scope: str) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return {
        li.get_attribute("data-check"): li.get_attribute("data-outcome")
        for li in driver.find_elements(By.CSS_SELECTOR, f"{scope} li[data-check]")
    }


def click_and_wait(driver: Any, css: str, then: str) -> None:
    """Click the button at `css` (a form submit) and wait for the element `then` of the next page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.CSS_SELECTOR, css).click()
    WebDriverWait(driver, WAIT_S).until(ec.staleness_of(old))
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, then))


def screenshot(driver: Any, path: Path) -> None:
    """The whole slider: the top document, sized to the page inside the iframe."""
    driver.switch_to.default_content()
    height = driver.execute_script("return document.body.scrollHeight")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, min(max(height + 120, 600), 4000))
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.switch_to.frame("app")
