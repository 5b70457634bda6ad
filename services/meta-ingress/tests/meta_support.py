"""Test doubles and helpers for meta-ingress tests.

The gRPC peers (token-keeper, mapper) are in-test servicers built on the generated base classes and
served by a real grpc.aio server: a unit boundary. Kafka, the processes under test and the Graph API
stand-in (dev/sandbox) are real.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from aiokafka import AIOKafkaConsumer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from zaptrix.v1 import events_pb2, mapper_pb2, mapper_pb2_grpc, token_keeper_pb2, token_keeper_pb2_grpc

PNID = "100000000000001"  # the sandbox's default channel
DISPLAY = "15550000001"
APP_SECRET = "sandbox-app-secret"
TOKEN = "sandbox-wa-token"
VERIFY_TOKEN = "verify-me"
MEMBER = "member-1"
WABA = "200000000000002"  # entry[].id (the WhatsApp Business Account) of the webhooks built below
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


# --- gRPC fakes --------------------------------------------------------------------------------------------
class FakeTokenKeeper(token_keeper_pb2_grpc.TokenKeeperServicer):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.channels: dict[str, token_keeper_pb2.ChannelCredentials] = {
            PNID: token_keeper_pb2.ChannelCredentials(
                phone_number_id=PNID,
                access_token=TOKEN,
                app_secret=APP_SECRET,
                verify_token=VERIFY_TOKEN,
                waba_id=WABA,
            )
        }
        self.calls: list[str] = []
        self.down = False
        # The portal whose file links the dispatcher may fetch: its own host (127.0.0.1, the test servers).
        self.portals: dict[str, token_keeper_pb2.PortalStatus] = {
            MEMBER: token_keeper_pb2.PortalStatus(
                member_id=MEMBER, domain="portal.test", client_endpoint="http://127.0.0.1/rest/"
            )
        }

    async def GetPortalStatus(self, request: Any, context: Any) -> Any:
        self.calls.append(f"GetPortalStatus:{request.member_id}")
        portal = self.portals.get(request.member_id)
        if portal is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such portal")
        return portal

    async def GetChannelCredentials(self, request: Any, context: Any) -> Any:
        self.calls.append(f"GetChannelCredentials:{request.phone_number_id}")
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        creds = self.channels.get(request.phone_number_id)
        if creds is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such channel")
        return creds

    async def CheckVerifyToken(self, request: Any, context: Any) -> Any:
        self.calls.append("CheckVerifyToken")
        valid = any(c.verify_token == request.verify_token for c in self.channels.values())
        return token_keeper_pb2.CheckVerifyTokenResponse(valid=valid)


@dataclass
class FakeMapper(mapper_pb2_grpc.MapperServicer):
    conversations: dict[str, mapper_pb2.Conversation] = field(default_factory=dict)
    channels: dict[str, mapper_pb2.Channel] = field(default_factory=dict)
    links: dict[str, mapper_pb2.MessageLink] = field(default_factory=dict)
    processed: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail_mark: int = 0  # the next N MarkProcessed calls answer UNAVAILABLE

    def reset(self) -> None:
        self.conversations.clear()
        self.links.clear()
        self.processed.clear()
        self.calls.clear()
        self.fail_mark = 0
        self.channels = {
            PNID: mapper_pb2.Channel(phone_number_id=PNID, member_id=MEMBER, line_id=1, active=True)
        }

    def add_conversation(
        self, wa_id: str, last_customer_ago_s: float | None = 60.0
    ) -> mapper_pb2.Conversation:
        conv = mapper_pb2.Conversation(
            id=str(uuid.uuid4()),
            phone_number_id=PNID,
            wa_id=wa_id,
            member_id=MEMBER,
            external_chat_id=f"wa_{uuid.uuid4().hex}",  # opaque, as the mapper makes them
            bitrix_chat_id="77",
        )
        if last_customer_ago_s is not None:
            conv.last_customer_message_at.seconds = int(time.time() - last_customer_ago_s)
        self.conversations[conv.external_chat_id] = conv
        return conv

    async def GetChannel(self, request: Any, context: Any) -> Any:
        self.calls.append("GetChannel")
        channel = self.channels.get(request.phone_number_id)
        if channel is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "not bound")
        return channel

    async def FindConversation(self, request: Any, context: Any) -> Any:
        self.calls.append("FindConversation")
        if request.WhichOneof("by") == "channel_customer":
            cc = request.channel_customer
            found = (
                c
                for c in self.conversations.values()
                if (c.phone_number_id, c.wa_id) == (cc.phone_number_id, cc.wa_id)
            )
            conv = next(found, None)
        else:  # portal_external_chat: scoped like the mapper (another portal's chat is NOT_FOUND)
            chat = request.portal_external_chat
            conv = self.conversations.get(chat.external_chat_id)
            if conv is not None and conv.member_id != chat.member_id:
                conv = None
        if conv is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no conversation")
        return conv

    async def LinkMessage(self, request: Any, context: Any) -> Any:
        link = request.link
        self.calls.append(f"LinkMessage:{link.wamid}")
        for other in self.links.values():
            if (
                link.bitrix_message_id
                and other.member_id == link.member_id
                and other.bitrix_message_id == link.bitrix_message_id
                and other.wamid != link.wamid
            ):
                await context.abort(grpc.StatusCode.ALREADY_EXISTS, "bitrix message linked to another wamid")
        self.links[link.wamid] = link
        return link

    async def FindMessageLink(self, request: Any, context: Any) -> Any:
        which = request.WhichOneof("by")
        for link in self.links.values():
            if which == "wamid" and link.wamid == request.wamid:
                return link
            if (
                which == "bitrix_message"
                and link.member_id == request.bitrix_message.member_id
                and link.bitrix_message_id == request.bitrix_message.bitrix_message_id
            ):
                return link
        await context.abort(grpc.StatusCode.NOT_FOUND, "no link")

    async def CheckProcessed(self, request: Any, context: Any) -> Any:
        self.calls.append(f"CheckProcessed:{request.event_id}")
        result = self.processed.get(request.event_id)
        return mapper_pb2.CheckProcessedResponse(processed=result is not None, result=result or "")

    async def MarkProcessed(self, request: Any, context: Any) -> Any:
        self.calls.append(f"MarkProcessed:{request.event_id}")
        if self.fail_mark > 0:
            self.fail_mark -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "database down")
        already = request.event_id in self.processed
        self.processed.setdefault(request.event_id, request.result)
        return mapper_pb2.MarkProcessedResponse(already_processed=already)


@dataclass
class Fakes:
    token_keeper: FakeTokenKeeper
    mapper: FakeMapper
    server: grpc.aio.Server
    addr: str
    loop: asyncio.AbstractEventLoop

    def reset(self) -> None:
        self.token_keeper.reset()
        self.mapper.reset()

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(timeout=3)
        except (TimeoutError, concurrent.futures.TimeoutError):
            pass  # a daemon thread: it ends with the test process


def start_fakes() -> Fakes:
    """Serve the fakes from a thread with its own event loop: tests may block (subprocess start-up,
    synchronous waits) without starving the gRPC server."""
    loop = asyncio.new_event_loop()
    ready: concurrent.futures.Future[Fakes] = concurrent.futures.Future()

    async def serve() -> None:
        server = grpc.aio.server()
        tk, mapper = FakeTokenKeeper(), FakeMapper()
        mapper.reset()
        token_keeper_pb2_grpc.add_TokenKeeperServicer_to_server(tk, server)
        mapper_pb2_grpc.add_MapperServicer_to_server(mapper, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        ready.set_result(Fakes(tk, mapper, server, f"127.0.0.1:{port}", loop))
        await server.wait_for_termination()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    return ready.result(timeout=10)


# --- processes --------------------------------------------------------------------------------------------
@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_all([self])


def stop_all(procs: Sequence[Proc], grace_s: float = 10.0) -> None:
    """SIGTERM every process, then wait for all (graceful shutdown runs in parallel)."""
    for p in procs:
        if p.proc.poll() is None:
            p.proc.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(5)


@dataclass
class Spec:
    args: list[str]
    env: dict[str, str]
    health_url: str
    log_path: Path
    ready_status: tuple[int, ...] = (200,)


def start_processes(*specs: Spec) -> list[Proc]:
    """Start all processes at once (start-up is mostly imports: in parallel it costs one), then wait."""
    procs = []
    for spec in specs:
        with spec.log_path.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    spec.args, env={**os.environ, **spec.env}, stdout=out, stderr=subprocess.STDOUT
                )
            )
    started = [Proc(p, s.health_url.rsplit("/", 1)[0], s.log_path) for p, s in zip(procs, specs, strict=True)]
    deadline = time.monotonic() + 45
    pending = list(range(len(specs)))
    try:
        while pending:
            if time.monotonic() > deadline:
                names = [specs[i].args[0] for i in pending]
                logs = "\n".join(specs[i].log_path.read_text(errors="replace") for i in pending)
                raise RuntimeError(f"{names} did not become healthy:\n{logs}")
            for i in list(pending):
                spec, proc = specs[i], procs[i]
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{spec.args[0]} exited with {proc.returncode}:\n{spec.log_path.read_text(errors='replace')}"
                    )
                try:
                    if httpx.get(spec.health_url, timeout=0.5).status_code in spec.ready_status:
                        pending.remove(i)
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
    except BaseException:
        stop_all(started)
        raise
    return started


def start_process(
    args: list[str],
    env: dict[str, str],
    health_url: str,
    log_path: Path,
    ready_status: tuple[int, ...] = (200,),
) -> Proc:
    return start_processes(Spec(args, env, health_url, log_path, ready_status))[0]


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


async def wait_until(predicate: Any, within: float = 10.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(every)
    raise AssertionError("condition not met in time")
