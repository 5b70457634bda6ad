"""Test doubles and helpers for meta-ingress tests: webhook builders, the kit's gRPC fakes (zaptrix_testing)
set up with the sandbox channel, a Kafka topic reader.

The gRPC peers (token-keeper, mapper) are a unit boundary; Kafka, the processes under test and the Graph
API stand-in (dev/sandbox) are real.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import zaptrix_testing.fakes as kit
from aiokafka import AIOKafkaConsumer
from zaptrix.v1 import events_pb2, mapper_pb2

PNID = "100000000000001"  # the sandbox's default channel
DISPLAY = "15550000001"
APP_SECRET = "sandbox-app-secret"
TOKEN = "sandbox-wa-token"
VERIFY_TOKEN = "verify-me"
MEMBER = "member-1"
WABA = "200000000000002"  # entry[].id (the WhatsApp Business Account) of the webhooks built below


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- webhook builders (shapes from whatsapp.md A2) ------------------------------------------------------
def webhook(*changes: dict[str, Any], entries: int = 1) -> dict[str, Any]:
    per = max(1, len(changes) // entries)
    out = []
    for i in range(0, len(changes), per):
        out.append({"id": WABA, "changes": [{"field": "messages", "value": v} for v in changes[i : i + per]]})
    return {"object": "whatsapp_business_account", "entry": out}


def value(
    messages: Sequence[dict[str, Any]] = (),
    statuses: Sequence[dict[str, Any]] = (),
    contacts: Sequence[dict[str, Any]] | None = None,
    pnid: str = PNID,
    errors: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    v: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": pnid},
    }
    if contacts is None:
        contacts = [{"profile": {"name": "Ana"}, "wa_id": m["from"]} for m in messages if "from" in m]
    if contacts:
        v["contacts"] = list({c.get("wa_id"): c for c in contacts}.values())
    if messages:
        v["messages"] = list(messages)
    if statuses:
        v["statuses"] = list(statuses)
    if errors:
        v["errors"] = list(errors)
    return v


def msg(kind: str, body: Any = None, frm: str = "16505551234", **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "from": frm,
        "id": f"wamid.{uuid.uuid4().hex}",
        "timestamp": "1749416383",
        "type": kind,
    }
    if body is not None:
        m[kind] = body
    m.update(extra)
    return m


def status(wamid: str, st: str, recipient: str = "16505551234", **extra: Any) -> dict[str, Any]:
    return {"id": wamid, "status": st, "timestamp": "1749416400", "recipient_id": recipient, **extra}


def operator_message(conv: mapper_pb2.Conversation, text: str = "", **fields: Any) -> events_pb2.Envelope:
    """An OperatorMessage of the conversation as bitrix-ingress produces it (a random Bitrix24 message id)."""
    msg_id = str(fields.pop("bitrix_message_id", uuid.uuid4().int % 10**9))
    om = events_pb2.OperatorMessage(
        member_id=MEMBER,
        connector_id="zaptrix",
        line_id=1,
        bitrix_chat_id="77",
        bitrix_message_id=msg_id,
        external_chat_id=conv.external_chat_id,
        text_bbcode=text,
        **fields,
    )
    return events_pb2.Envelope(
        event_id=f"b24:{MEMBER}:{msg_id}",
        conversation_key=f"{conv.phone_number_id}:{conv.wa_id}",
        source=events_pb2.PLATFORM_BITRIX24,
        operator_message=om,
    )


# --- gRPC fakes: the kit's, set up with the sandbox channel and portal ------------------------------------
class FakeTokenKeeper(kit.FakeTokenKeeper):
    def reset(self) -> None:
        self.clear()
        self.add_channel(
            PNID, access_token=TOKEN, app_secret=APP_SECRET, verify_token=VERIFY_TOKEN, waba_id=WABA
        )
        # The portal whose file links the dispatcher may fetch: its own host (127.0.0.1, the test servers).
        self.add(kit.Portal(MEMBER, "", domain="portal.test", client_endpoint="http://127.0.0.1/rest/"))


class FakeMapper(kit.FakeMapper):
    def reset(self) -> None:
        self.clear()
        self.bind(PNID, MEMBER, 1, display_phone_number="", connector_id="")

    def add_conversation(  # type: ignore[override]  # the sandbox channel's customer
        self, wa_id: str, last_customer_ago_s: float | None = 60.0
    ) -> mapper_pb2.Conversation:
        return super().add_conversation(
            PNID, wa_id, last_customer_ago_s=last_customer_ago_s, bitrix_chat_id="77"
        )

    @property
    def fail_mark(self) -> int:
        return max(len(self.fail["MarkProcessed"]), len(self.fail["RecordDelivery"]))

    @fail_mark.setter
    def fail_mark(self, n: int) -> None:
        """The next n calls that write a dedupe record (MarkProcessed, and RecordDelivery: a reply's link and
        record at once) answer UNAVAILABLE."""
        self.fail["MarkProcessed"] = [grpc.StatusCode.UNAVAILABLE] * n
        self.fail["RecordDelivery"] = [grpc.StatusCode.UNAVAILABLE] * n


class Fakes(kit.GrpcFakes):
    mapper: FakeMapper
    token_keeper: FakeTokenKeeper

    def reset(self) -> None:
        self.token_keeper.reset()
        self.mapper.reset()


def start_fakes() -> Fakes:
    """The fakes, reset, served from their own thread (tests block on subprocesses)."""
    mapper, tk = FakeMapper(), FakeTokenKeeper()
    mapper.reset()
    tk.reset()
    served = kit.start_fakes_in_thread(mapper, tk)
    return Fakes(**{f.name: getattr(served, f.name) for f in dataclasses.fields(served)})


def base_env(kafka: str, prefix: str, fakes_addr: str, graph_url: str) -> dict[str, str]:
    return {
        "ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "ZAPTRIX_KAFKA_TOPIC_PREFIX": prefix,
        "ZAPTRIX_TOKEN_KEEPER_ADDR": fakes_addr,
        "ZAPTRIX_MAPPER_ADDR": fakes_addr,
        "ZAPTRIX_GRAPH_API_BASE_URL": graph_url,
        "ZAPTRIX_ALLOW_INSECURE_HTTP": "true",
        "ZAPTRIX_EGRESS_ALLOW_NETWORKS": '["127.0.0.1/32"]',  # the local file servers, nothing else
        "ZAPTRIX_ENVIRONMENT": "test",
        "ZAPTRIX_MEDIA_URL_SECRET": "test-media-secret-0123456789abcdef",
        "ZAPTRIX_LOG_LEVEL": "INFO",
        "OTEL_TRACES_EXPORTER": "none",
    }


# --- Kafka ----------------------------------------------------------------------------------------------------
@dataclass
class Record:
    key: bytes | None
    headers: dict[str, str]
    envelope: events_pb2.Envelope


class TopicReader:
    """Reads a topic from the beginning; take(n) returns the next n records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=50,
        )

    async def start(self) -> TopicReader:
        await self.consumer.start()
        return self

    async def stop(self) -> None:
        await self.consumer.stop()

    async def take(self, n: int, within: float = 10.0) -> list[Record]:
        out: list[Record] = []
        deadline = time.monotonic() + within
        while len(out) < n and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=n - len(out))
            for records in batch.values():
                for rec in records:
                    env = events_pb2.Envelope()
                    env.ParseFromString(rec.value)
                    headers = {k: v.decode() for k, v in (rec.headers or [])}
                    out.append(Record(rec.key, headers, env))
        return out

    async def nothing_within(self, seconds: float) -> bool:
        return not await self.take(1, within=seconds)


async def wait_events(
    reader: TopicReader, *event_ids: str, within: float = 10.0
) -> dict[str, events_pb2.Envelope]:
    """The envelopes with these event ids (others read meanwhile are skipped); fails after ``within``."""
    seen: dict[str, events_pb2.Envelope] = {}
    deadline = time.monotonic() + within
    while len(seen) < len(set(event_ids)) and time.monotonic() < deadline:
        for rec in await reader.take(50, within=0.2):
            if rec.envelope.event_id in event_ids:
                seen[rec.envelope.event_id] = rec.envelope
    missing = sorted(set(event_ids) - set(seen))
    assert not missing, f"no events {missing}"
    return seen


def dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
