"""The template picker (IM_TEXTAREA placement) of bitrix-ingress-web, as a process against the Bitrix24
stand-in (OAuth server, placement.bind, the operator's Drive) and real Kafka: install binds it, it lists the
approved templates of the chat's number for the portal whose token opened it, and a submitted template
becomes one OperatorMessage with the /template command (and the Drive file as its media header). Forged or
other-portal tokens get nothing; malformed forms are 400, never 500."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from zaptrix.kafka import Flow, decode, topics_for
from zaptrix.kafka.admin import ensure_topics
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2, mapper_pb2
from zaptrix_testing.fakes import FakeTokenKeeper, GrpcFakes, Portal, start_fakes
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import Proc, console_script, start_process, wait_http

MEMBER, OTHER = "sandbox-member-1", "sandbox-member-2"
PNID, OTHER_PNID = "100000000000001", "100000000000009"
CHAT = "1801"
BODY2 = [
    {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
    {"type": "BODY", "text": "Order {{1}} ships {{2}}"},
]
IMAGE = [{"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "Hi {{first_name}}"}]


def tpl(
    tid: str, name: str, components: list[Any], status: str = "APPROVED", **kw: Any
) -> mapper_pb2.MessageTemplate:
    return mapper_pb2.MessageTemplate(
        phone_number_id=kw.get("pnid", PNID),
        waba_id="200000000000001",
        template_id=tid,
        name=name,
        language="en_US",
        status=status,
        category=kw.get("category", "UTILITY"),
        quality="GREEN",
        components_json=json.dumps(components),
        parameter_format=kw.get("fmt", "POSITIONAL"),
    )


@dataclass
class Picker:
    sandbox: str
    web_url: str
    fakes: GrpcFakes
    http: httpx.AsyncClient
    web: Proc
    consumer: AIOKafkaConsumer

    async def token(
        self, user_id: int = 2, client_id: str | None = None, member: str = MEMBER
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"user_id": user_id}
        if client_id:
            body["client_id"] = client_id
        r = await self.http.post(f"{self.sandbox}/_sandbox/portals/{member}/tokens", json=body)
        r.raise_for_status()
        return dict(r.json())

    async def open(self, dialog: str = f"chat{CHAT}", **over: str) -> httpx.Response:
        tok = await self.token()
        form = {
            "member_id": MEMBER,
            "AUTH_ID": tok["access_token"],
            "REFRESH_ID": tok["refresh_token"],
            "PLACEMENT": "IM_TEXTAREA",
            "PLACEMENT_OPTIONS": json.dumps({"dialogId": dialog}),
            **over,
        }
        return await self.http.post(f"{self.web_url}/webhooks/bitrix24/templates", data=form)

    async def produced(self, within_ms: int = 5000) -> list[events_pb2.Envelope]:
        batch = await self.consumer.getmany(timeout_ms=within_ms)
        return [decode(r.value, list(r.headers)) for records in batch.values() for r in records]


def form_of(page: str, template: str) -> dict[str, str]:
    """The hidden fields of one template's form in the rendered page."""
    section = page[page.index(f">{template}</h2>") :]
    section = section[: section.index("</form>")]
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', section))


@pytest.fixture(scope="module")
async def picker(
    sandbox_bitrix: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Picker]:
    tmp: Path = tmp_path_factory.mktemp("picker")
    async with httpx.AsyncClient(timeout=15) as http:
        (await http.post(f"{sandbox_bitrix}/_sandbox/reset")).raise_for_status()
        portal = (await http.get(f"{sandbox_bitrix}/_sandbox/portals/{MEMBER}")).json()
        second = {
            "member_id": OTHER,
            "domain": "second.bitrix24.com",
            "application_token": "second-app-token",
        }
        (await http.post(f"{sandbox_bitrix}/_sandbox/portals", json=second)).raise_for_status()
        for name in (
            "summer_sale.png",
            "storefront.jpg",
            "invoice_1042.pdf",
        ):  # the operator's (user 2) Drive
            drive = await http.post(
                f"{sandbox_bitrix}/_sandbox/portals/{MEMBER}/drive", json={"user_id": 2, "name": name}
            )
            drive.raise_for_status()
        tk = FakeTokenKeeper(sandbox_bitrix, "local.sandbox.app", "sandbox-client-secret")
        tk.add(
            Portal(
                MEMBER,
                "sandbox-app-token",
                access_token=portal["access_token"],
                refresh_token=portal["refresh_token"],
                client_endpoint=portal["client_endpoint"],
                domain=portal["domain"],
            )
        )
        fakes = await start_fakes(tk=tk)
        fakes.mapper.bind(PNID, MEMBER, 1, display_phone_number="15550000001")
        fakes.mapper.bind(OTHER_PNID, OTHER, 1)
        fakes.mapper.add_conversation(PNID, "491701111", "Ana Lima", bitrix_chat_id=CHAT)
        fakes.mapper.add_conversation(OTHER_PNID, "491702222", "Other portal", bitrix_chat_id="1802")
        for t in (
            tpl("1", "order_update", BODY2),
            tpl("2", "summer_sale", IMAGE, category="MARKETING", fmt="NAMED"),
            tpl("3", "paused_one", [{"type": "BODY", "text": "x"}], status="PAUSED"),
            tpl("4", "theirs", [{"type": "BODY", "text": "x"}], pnid=OTHER_PNID),
        ):
            fakes.mapper.templates[(t.phone_number_id, t.template_id)] = t
        prefix = f"zt{uuid.uuid4().hex[:10]}"
        kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
        topic = topics_for(Flow.B24_TO_WA, prefix).main
        await ensure_topics(kafka, [t for flow in Flow for t in topics_for(flow, prefix).all()], 3)
        port = free_port()
        web = start_process(
            [console_script("bitrix-ingress-web")],
            {
                "ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "ZAPTRIX_KAFKA_TOPIC_PREFIX": prefix,
                "ZAPTRIX_ALLOW_INSECURE_HTTP": "true",
                "ZAPTRIX_EGRESS_ALLOW_NETWORKS": '["127.0.0.1/32"]',
                "ZAPTRIX_ENVIRONMENT": "test",
                "ZAPTRIX_WEB_PORT": str(port),
                "ZAPTRIX_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                "ZAPTRIX_BITRIX_CLIENT_ID": "local.sandbox.app",
                "ZAPTRIX_BITRIX_CLIENT_SECRET": "sandbox-client-secret",
                "ZAPTRIX_BITRIX_OAUTH_SERVER_ENDPOINT": f"{sandbox_bitrix}/oauth/rest/",
                "ZAPTRIX_BITRIX_OAUTH_URL": f"{sandbox_bitrix}/oauth/token/",
                **fakes.env(),
            },
            tmp / "web.log",
        )
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        web_url = f"http://127.0.0.1:{port}"
        try:
            await wait_http(f"{web_url}/ready", web, ok=lambda s: s == 200)
            await http.post(
                f"{sandbox_bitrix}/_sandbox/config",
                json={"install_url": f"{web_url}/webhooks/bitrix24/install"},
            )
            yield Picker(sandbox_bitrix, web_url, fakes, http, web, consumer)
        finally:
            await consumer.stop()
            await web.astop()
            await fakes.server.stop(None)


async def test_install_binds_the_picker_in_open_lines_and_asks_for_a_sync(picker: Picker) -> None:
    for _ in range(2):  # idempotent
        r = await picker.http.post(f"{picker.sandbox}/_sandbox/portals/{MEMBER}/install", json={})
        assert r.json()["gateway_status"] == 200, picker.web.log()[-2000:]
    portal = (await picker.http.get(f"{picker.sandbox}/_sandbox/portals/{MEMBER}")).json()
    (bound,) = portal["placements"]
    assert (
        bound["placement"] == "IM_TEXTAREA"
        and bound["handler"] == f"{picker.web_url}/webhooks/bitrix24/templates"
    )
    assert bound["options"]["context"] == "LINES"
    syncs = [e.template_sync_request for e in await picker.produced() if e.HasField("template_sync_request")]
    assert syncs and {(s.member_id, s.phone_number_id, s.reason) for s in syncs} == {
        (MEMBER, PNID, "install")
    }


async def test_the_page_lists_the_chats_approved_templates_with_their_variables(picker: Picker) -> None:
    r = await picker.open()
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "order_update" in page and "summer_sale" in page
    assert "paused_one" not in page and "theirs" not in page  # paused, and another portal's number
    assert 'label for="t0-header"' in page and "Body variable {{1}}" in page and "Body variable {{2}}" in page
    assert "Body variable first_name" in page and "named variables" in page and "header: image" in page
    # The operator's Drive (the stand-in's sample files): only images for an image header.
    assert "summer_sale.png" in page and "storefront.jpg" in page and "invoice_1042.pdf" not in page


async def test_a_submitted_template_is_one_operator_message_with_the_command(picker: Picker) -> None:
    page = (await picker.open()).text
    await picker.produced(500)  # drain
    form = {**form_of(page, "order_update"), "var_1": "12345", "var_2": "Friday", "header": "A-77"}
    r = await picker.http.post(f"{picker.web_url}/webhooks/bitrix24/templates/send", data=form)
    assert r.status_code == 200 and "is on its way" in r.text, r.text
    again = await picker.http.post(f"{picker.web_url}/webhooks/bitrix24/templates/send", data=form)
    assert again.status_code == 200
    events = [e for e in await picker.produced() if e.HasField("operator_message")]
    assert len({e.event_id for e in events}) == 1  # a double submit is one event id (deduped downstream)
    om = events[0].operator_message
    assert om.text_bbcode == "/template order_update@en_US 12345 | Friday | header=A-77"
    assert (om.member_id, om.bitrix_chat_id, om.bitrix_message_id) == (MEMBER, CHAT, "")
    assert events[0].conversation_key == f"{PNID}:491701111"


async def test_a_media_header_takes_a_drive_file_of_the_right_type(picker: Picker) -> None:
    page = (await picker.open()).text
    await picker.produced(500)
    portal = (await picker.http.get(f"{picker.sandbox}/_sandbox/portals/{MEMBER}")).json()
    png, _jpg, pdf = portal["drive"]["2"]
    form = {**form_of(page, "summer_sale"), "var_first_name": "Ana"}
    wrong = await picker.http.post(
        f"{picker.web_url}/webhooks/bitrix24/templates/send", data={**form, "disk_file": pdf}
    )
    assert wrong.status_code == 400 and "cannot be the template&#x27;s image header" in wrong.text, wrong.text
    ok = await picker.http.post(
        f"{picker.web_url}/webhooks/bitrix24/templates/send", data={**form, "disk_file": png}
    )
    assert ok.status_code == 200, ok.text
    (om,) = [e.operator_message for e in await picker.produced() if e.HasField("operator_message")]
    assert om.text_bbcode == "/template summer_sale@en_US first_name=Ana"
    (file,) = om.files
    assert file.name == "summer_sale.png" and file.mime_type == "image/png"
    assert file.link.startswith(picker.sandbox + "/upload/files/")


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"var_1": "1", "var_2": "", "header": "A"}, "is empty"),
        ({"var_1": "a | b", "var_2": "2", "header": "A"}, "cannot contain"),
        ({"var_1": "1", "var_2": "2", "header": "x" * 61}, "at most 60"),
    ],
)
async def test_values_that_do_not_fit_are_shown_not_sent(
    picker: Picker, values: dict[str, str], said: str
) -> None:
    page = (await picker.open()).text
    await picker.produced(300)
    r = await picker.http.post(
        f"{picker.web_url}/webhooks/bitrix24/templates/send", data={**form_of(page, "order_update"), **values}
    )
    assert r.status_code == 400 and said in r.text and 'role="alert"' in r.text
    assert [e for e in await picker.produced(500) if e.HasField("operator_message")] == []


async def test_forged_other_app_and_other_portal_requests_get_nothing(picker: Picker) -> None:
    forged = await picker.open(AUTH_ID="forged")
    assert forged.status_code == 401 and "order_update" not in forged.text
    other_app = await picker.token(client_id="local.other.app")
    r = await picker.open(AUTH_ID=other_app["access_token"], REFRESH_ID=other_app["refresh_token"])
    assert r.status_code == 403 and "order_update" not in r.text
    # A genuine token of this portal naming another portal's chat: not found, nothing listed.
    theirs = await picker.open(dialog="chat1802")
    assert theirs.status_code == 404 and "theirs" not in theirs.text
    # A token of portal 2 claiming portal 1: refused by the OAuth server's answer.
    second = await picker.token(member=OTHER, user_id=1)
    r = await picker.open(AUTH_ID=second["access_token"], REFRESH_ID=second["refresh_token"])
    assert r.status_code == 403 and "order_update" not in r.text
    send = await picker.http.post(
        f"{picker.web_url}/webhooks/bitrix24/templates/send",
        data={
            "member_id": MEMBER,
            "AUTH_ID": "forged",
            "dialog": f"chat{CHAT}",
            "template": "order_update",
            "nonce": "ab" * 12,
        },
    )
    assert send.status_code == 401


@pytest.mark.parametrize(
    "over",
    [
        {"PLACEMENT_OPTIONS": "{not json"},
        {"PLACEMENT_OPTIONS": json.dumps({"dialogId": "user7"})},
        {"PLACEMENT_OPTIONS": json.dumps(["chat1"])},
        {"PLACEMENT": "CRM_DEAL_DETAIL_TAB"},
        {"member_id": ""},
    ],
)
async def test_malformed_picker_requests_are_4xx(picker: Picker, over: dict[str, str]) -> None:
    r = await picker.open(**over)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
