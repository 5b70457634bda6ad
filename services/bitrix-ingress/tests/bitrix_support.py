"""Test doubles for bitrix-ingress: in-memory mapper and token-keeper (real grpc.aio servers, generated base
classes), a scriptable Bitrix24 REST fake for httpx.MockTransport, process helpers.

The fakes follow the contracts in protos/zaptrix/v1 and the behaviour the real services document
(NOT_FOUND for unknown things, idempotent MarkProcessed/LinkMessage/RecordDelivery, atomic get-or-create).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
from bitrix_ingress.formparse import as_list, parse_form
from google.protobuf.timestamp_pb2 import Timestamp
from zaptrix.v1 import mapper_pb2, mapper_pb2_grpc, token_keeper_pb2, token_keeper_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def console_script(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.exists(), f"console script {name} is not installed ({path})"
    return str(path)


def ts(dt: datetime | None = None) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(dt or datetime.now(UTC))
    return out


# --- mapper ----------------------------------------------------------------------------------------


class FakeMapper(mapper_pb2_grpc.MapperServicer):
    def __init__(self) -> None:
        self.channels: dict[str, mapper_pb2.Channel] = {}
        self.conversations: dict[str, mapper_pb2.Conversation] = {}
        self.links: dict[str, mapper_pb2.MessageLink] = {}
        self.processed: dict[str, str] = {}
        self.calls: list[tuple[str, Any]] = []
        self.fail: dict[str, list[grpc.StatusCode]] = defaultdict(list)
        # single-use: (method, predicate on the request, status code)
        self.fail_if: list[tuple[str, Callable[[Any], bool], grpc.StatusCode]] = []
        self._lock = asyncio.Lock()

    def bind(self, phone_number_id: str, member_id: str, line_id: int, **kw: Any) -> mapper_pb2.Channel:
        channel = mapper_pb2.Channel(
            phone_number_id=phone_number_id,
            display_phone_number=kw.pop("display_phone_number", "15550000001"),
            member_id=member_id,
            line_id=line_id,
            connector_id=kw.pop("connector_id", "zaptrix_whatsapp"),
            active=kw.pop("active", True),
            **kw,
        )
        self.channels[phone_number_id] = channel
        return channel

    def add_conversation(self, phone_number_id: str, wa_id: str, name: str = "") -> mapper_pb2.Conversation:
        channel = self.channels[phone_number_id]
        conv = mapper_pb2.Conversation(
            id=str(uuid.uuid4()),
            phone_number_id=phone_number_id,
            wa_id=wa_id,
            member_id=channel.member_id,
            external_chat_id=f"wa_{uuid.uuid4().hex}",  # opaque, as the mapper makes them
            contact_name=name,
        )
        conv.created_at.CopyFrom(ts())
        self.conversations[conv.id] = conv
        return conv

    def by_customer(self, phone_number_id: str, wa_id: str) -> mapper_pb2.Conversation | None:
        for conv in self.conversations.values():
            if conv.phone_number_id == phone_number_id and conv.wa_id == wa_id:
                return conv
        return None

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.calls if m == method)

    async def _enter(self, method: str, request: Any, context: Any) -> None:
        self.calls.append((method, request))
        for rule in self.fail_if:
            if rule[0] == method and rule[1](request):
                self.fail_if.remove(rule)
                await context.abort(rule[2], f"injected {rule[2].name}")
        if self.fail[method]:
            code = self.fail[method].pop(0)
            await context.abort(code, f"injected {code.name}")

    async def GetChannel(self, request: Any, context: Any) -> mapper_pb2.Channel:
        await self._enter("GetChannel", request, context)
        channel = self.channels.get(request.phone_number_id)
        if channel is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such channel")
        return channel

    async def ListChannels(self, request: Any, context: Any) -> mapper_pb2.ListChannelsResponse:
        await self._enter("ListChannels", request, context)
        return mapper_pb2.ListChannelsResponse(
            channels=[
                c for c in self.channels.values() if not request.member_id or c.member_id == request.member_id
            ]
        )

    async def GetOrCreateConversation(
        self, request: Any, context: Any
    ) -> mapper_pb2.GetOrCreateConversationResponse:
        await self._enter("GetOrCreateConversation", request, context)
        async with self._lock:
            if request.phone_number_id not in self.channels:
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such channel")
            conv = self.by_customer(request.phone_number_id, request.wa_id)
            if conv is not None:
                return mapper_pb2.GetOrCreateConversationResponse(conversation=conv, created=False)
            conv = self.add_conversation(request.phone_number_id, request.wa_id, request.contact_name)
            return mapper_pb2.GetOrCreateConversationResponse(conversation=conv, created=True)

    async def FindConversation(self, request: Any, context: Any) -> mapper_pb2.Conversation:
        await self._enter("FindConversation", request, context)
        by = request.WhichOneof("by")
        found = None
        for conv in self.conversations.values():
            if (
                (by == "id" and conv.id == request.id)
                or (  # scoped like the mapper: another portal's chat is NOT_FOUND
                    by == "portal_external_chat"
                    and conv.external_chat_id == request.portal_external_chat.external_chat_id
                    and conv.member_id == request.portal_external_chat.member_id
                )
                or (
                    by == "channel_customer"
                    and conv.phone_number_id == request.channel_customer.phone_number_id
                    and conv.wa_id == request.channel_customer.wa_id
                )
            ):
                found = conv
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such conversation")
        return found

    async def UpdateConversation(self, request: Any, context: Any) -> mapper_pb2.Conversation:
        await self._enter("UpdateConversation", request, context)
        conv = self.conversations.get(request.id)
        if conv is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such conversation")
        return self._update(conv, request)

    @staticmethod
    def _update(conv: mapper_pb2.Conversation, request: Any) -> mapper_pb2.Conversation:
        for name in ("bitrix_contact_id", "bitrix_chat_id", "contact_name"):
            if request.HasField(name):
                setattr(conv, name, getattr(request, name))
        for name in ("last_message_at", "last_customer_message_at"):
            if (
                request.HasField(name)
                and getattr(request, name).ToDatetime() > getattr(conv, name).ToDatetime()
            ):
                getattr(conv, name).CopyFrom(getattr(request, name))
        return conv

    async def LinkMessage(self, request: Any, context: Any) -> mapper_pb2.MessageLink:
        await self._enter("LinkMessage", request, context)
        return self._link(request)

    def _link(self, request: Any) -> mapper_pb2.MessageLink:
        link = self.links.get(request.link.wamid)
        if link is None:
            link = mapper_pb2.MessageLink()
            link.CopyFrom(request.link)
            link.created_at.CopyFrom(ts())
            self.links[link.wamid] = link
        return link

    async def FindMessageLink(self, request: Any, context: Any) -> mapper_pb2.MessageLink:
        await self._enter("FindMessageLink", request, context)
        if request.WhichOneof("by") == "wamid":
            link = self.links.get(request.wamid)
        else:
            link = next(
                (
                    lk
                    for lk in self.links.values()
                    if lk.member_id == request.bitrix_message.member_id
                    and lk.bitrix_message_id == request.bitrix_message.bitrix_message_id
                ),
                None,
            )
        if link is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such link")
        return link

    async def UpdateMessageStatus(self, request: Any, context: Any) -> mapper_pb2.MessageLink:
        await self._enter("UpdateMessageStatus", request, context)
        link = self.links.get(request.wamid)
        if link is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such link")
        if request.HasField("whatsapp_status"):
            link.whatsapp_status = request.whatsapp_status
        if request.HasField("bitrix_status"):
            link.bitrix_status = request.bitrix_status
        return link

    async def CheckProcessed(self, request: Any, context: Any) -> mapper_pb2.CheckProcessedResponse:
        await self._enter("CheckProcessed", request, context)
        result = self.processed.get(request.event_id)
        return mapper_pb2.CheckProcessedResponse(processed=result is not None, result=result or "")

    async def MarkProcessed(self, request: Any, context: Any) -> mapper_pb2.MarkProcessedResponse:
        await self._enter("MarkProcessed", request, context)
        return mapper_pb2.MarkProcessedResponse(already_processed=self._mark(request))

    def _mark(self, request: Any) -> bool:
        already = request.event_id in self.processed
        self.processed.setdefault(request.event_id, request.result)
        return already

    async def RecordDelivery(self, request: Any, context: Any) -> mapper_pb2.RecordDeliveryResponse:
        """LinkMessage + UpdateConversation + MarkProcessed, all or nothing (checked before any change)."""
        await self._enter("RecordDelivery", request, context)
        conv = self.conversations.get(request.conversation.id)
        if conv is None or request.link.link.conversation_id != conv.id:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such conversation")
        link = self._link(request.link)
        already = self._mark(request.processed)
        return mapper_pb2.RecordDeliveryResponse(
            link=link, conversation=self._update(conv, request.conversation), already_processed=already
        )


# --- token-keeper ----------------------------------------------------------------------------------


@dataclass
class Portal:
    member_id: str
    application_token: str
    access_token: str = "access-1"
    refresh_token: str = "refresh-1"
    client_endpoint: str = "https://portal.example.com/rest/"
    domain: str = "portal.example.com"


class FakeTokenKeeper(token_keeper_pb2_grpc.TokenKeeperServicer):
    """Static portals; with ``sandbox_url`` it takes tokens from the Bitrix24 stand-in and refreshes through
    its OAuth server on ReportTokenRejected, as the real token-keeper does."""

    def __init__(self, sandbox_url: str = "", client_id: str = "", client_secret: str = "") -> None:
        self.portals: dict[str, Portal] = {}
        self.upserts: list[token_keeper_pb2.UpsertPortalRequest] = []
        self.calls: list[tuple[str, Any]] = []
        self.rejections: list[token_keeper_pb2.ReportTokenRejectedRequest] = []
        self.fail: dict[str, list[grpc.StatusCode]] = defaultdict(list)
        self.sandbox_url = sandbox_url
        self.client_id = client_id
        self.client_secret = client_secret
        self._lock = asyncio.Lock()

    def add(self, portal: Portal) -> Portal:
        self.portals[portal.member_id] = portal
        return portal

    async def _enter(self, method: str, request: Any, context: Any) -> None:
        self.calls.append((method, request))
        if self.fail[method]:
            code = self.fail[method].pop(0)
            await context.abort(code, f"injected {code.name}")

    def _token(self, p: Portal) -> token_keeper_pb2.AccessToken:
        out = token_keeper_pb2.AccessToken(
            member_id=p.member_id, access_token=p.access_token, client_endpoint=p.client_endpoint
        )
        out.expires_at.FromSeconds(int(time.time()) + 3000)
        return out

    async def _portal(self, member_id: str, context: Any) -> Portal:
        p = self.portals.get(member_id)
        if p is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown portal")
        return p

    async def VerifyApplicationToken(self, request: Any, context: Any) -> Any:
        await self._enter("VerifyApplicationToken", request, context)
        p = self.portals.get(request.member_id)
        return token_keeper_pb2.VerifyApplicationTokenResponse(
            known_portal=p is not None,
            valid=p is not None and p.application_token == request.application_token,
        )

    async def GetAccessToken(self, request: Any, context: Any) -> Any:
        await self._enter("GetAccessToken", request, context)
        return self._token(await self._portal(request.member_id, context))

    async def ReportTokenRejected(self, request: Any, context: Any) -> Any:
        await self._enter("ReportTokenRejected", request, context)
        self.rejections.append(request)
        async with self._lock:
            p = await self._portal(request.member_id, context)
            if request.access_token == p.access_token:
                if self.sandbox_url:
                    async with httpx.AsyncClient() as http:
                        resp = await http.get(
                            f"{self.sandbox_url}/oauth/token/",
                            params={
                                "grant_type": "refresh_token",
                                "client_id": self.client_id,
                                "client_secret": self.client_secret,
                                "refresh_token": p.refresh_token,
                            },
                        )
                        resp.raise_for_status()
                        body = resp.json()
                    p.access_token, p.refresh_token = body["access_token"], body["refresh_token"]
                else:
                    p.access_token = f"{p.access_token}-r"
            return self._token(p)

    async def UpsertPortal(self, request: Any, context: Any) -> Any:
        await self._enter("UpsertPortal", request, context)
        self.upserts.append(request)
        old = self.portals.get(request.member_id)
        self.portals[request.member_id] = Portal(
            member_id=request.member_id,
            application_token=request.application_token or (old.application_token if old else ""),
            access_token=request.access_token,
            refresh_token=request.refresh_token,
            client_endpoint=request.client_endpoint,
            domain=request.domain,
        )
        return token_keeper_pb2.PortalStatus(
            member_id=request.member_id, domain=request.domain, client_endpoint=request.client_endpoint
        )

    async def GetPortalStatus(self, request: Any, context: Any) -> Any:
        await self._enter("GetPortalStatus", request, context)
        p = await self._portal(request.member_id, context)
        return token_keeper_pb2.PortalStatus(
            member_id=p.member_id,
            domain=p.domain,
            client_endpoint=p.client_endpoint,
            state=token_keeper_pb2.PORTAL_STATE_ACTIVE,
        )


@dataclass
class GrpcFakes:
    mapper: FakeMapper
    token_keeper: FakeTokenKeeper
    server: grpc.aio.Server
    port: int

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"ZAPTRIX_MAPPER_ADDR": self.addr, "ZAPTRIX_TOKEN_KEEPER_ADDR": self.addr}


async def start_fakes(mapper: FakeMapper | None = None, tk: FakeTokenKeeper | None = None) -> GrpcFakes:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    mapper = mapper or FakeMapper()
    tk = tk or FakeTokenKeeper()
    server = grpc.aio.server()
    mapper_pb2_grpc.add_MapperServicer_to_server(mapper, server)
    token_keeper_pb2_grpc.add_TokenKeeperServicer_to_server(tk, server)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return GrpcFakes(mapper, tk, server, port)


# --- a Bitrix24 REST fake for httpx.MockTransport (unit tests) -------------------------------------


@dataclass
class Recorded:
    method: str
    params: dict[str, Any]
    token: str
    via_batch: bool = False


@dataclass
class FakeBitrix:
    """Enough of Bitrix24's REST for the dispatcher's unit tests: records calls, scripts failures."""

    valid_tokens: set[str] = field(default_factory=lambda: {"access-1"})
    expired_tokens: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)  # one per HTTP request
    calls: list[Recorded] = field(default_factory=list)  # one per method call (batch sub-calls too)
    script: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)  # method -> answers
    contacts: dict[int, str] = field(default_factory=dict)  # id -> phone digits
    chats: dict[str, int] = field(default_factory=dict)
    bad_message_ids: set[str] = field(default_factory=set)  # ERROR_ARGUMENT for calls containing these
    refuse_imconnector_in_batch: bool = False
    per_message_failures: set[str] = field(default_factory=set)
    stored: list[dict[str, Any]] = field(default_factory=list)  # messages that reached a chat

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def sent_messages(self) -> list[dict[str, Any]]:
        """Messages Bitrix24 stored (calls refused as a whole store nothing)."""
        return list(self.stored)

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def handle(self, request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        if request.headers.get("content-type", "").startswith("application/json"):
            params = json.loads(request.content)
        else:
            params = parse_form(request.content)
        token = str(params.pop("auth", ""))
        self.requests.append(Recorded(method, params, token))
        if token in self.expired_tokens:
            return httpx.Response(401, json={"error": "expired_token", "error_description": "expired"})
        if token not in self.valid_tokens:
            return httpx.Response(401, json={"error": "invalid_token", "error_description": "bad token"})
        if self.script.get(method):
            status, body = self.script[method].pop(0)
            if status != 200 or "error" in body:
                return httpx.Response(status, json=body)
        if method == "batch":
            return httpx.Response(200, json={"result": self._batch(params, token)})
        status, body = self._call(method, params, token, via_batch=False)
        return httpx.Response(status, json=body)

    def _batch(self, params: dict[str, Any], token: str) -> dict[str, Any]:
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for key, cmd in params["cmd"].items():
            method, _, query = cmd.partition("?")
            sub = parse_form(query)
            if self.refuse_imconnector_in_batch and method.startswith("imconnector."):
                errors[key] = {"error": "ERROR_BATCH_METHOD_NOT_ALLOWED", "error_description": "not in batch"}
                continue
            _, body = self._call(method, sub, token, via_batch=True)
            if "error" in body:
                errors[key] = body
            else:
                results[key] = body["result"]
        return {"result": results or [], "result_error": errors or [], "result_total": [], "result_next": []}

    def _call(
        self, method: str, params: dict[str, Any], token: str, *, via_batch: bool
    ) -> tuple[int, dict[str, Any]]:
        self.calls.append(Recorded(method, params, token, via_batch))
        if method == "imconnector.send.messages":
            items = as_list(params.get("MESSAGES"))
            for item in items:
                if str(item["message"]["id"]) in self.bad_message_ids:
                    return 400, {"error": "ERROR_ARGUMENT", "error_description": "bad message"}
            out = []
            for item in items:
                chat = str(item["chat"]["id"])
                chat_id = self.chats.setdefault(chat, 1000 + len(self.chats))
                ok = str(item["message"]["id"]) not in self.per_message_failures
                if ok:
                    self.stored.append(item)
                out.append(
                    {
                        "user": "7",
                        "message": item["message"],
                        "chat": item["chat"],
                        "SUCCESS": ok,
                        "ERRORS": [] if ok else ["could not save the file"],
                        "session": {"ID": "55", "CHAT_ID": str(chat_id)},
                    }
                )
            return 200, {"result": {"SUCCESS": True, "DATA": {"RESULT": out}}}
        if method in ("imconnector.send.status.delivery", "imconnector.send.status.reading"):
            return 200, {"result": {"SUCCESS": True, "DATA": []}}
        if method == "crm.duplicate.findbycomm":
            digits = {"".join(ch for ch in str(v) if ch.isdigit()) for v in as_list(params.get("values"))}
            ids = [cid for cid, phone in self.contacts.items() if phone in digits]
            return 200, {"result": {"CONTACT": ids} if ids else []}
        if method == "crm.contact.add":
            new_id = 500 + len(self.contacts)
            phone = as_list(params["fields"]["PHONE"])[0]["VALUE"]
            self.contacts[new_id] = "".join(ch for ch in str(phone) if ch.isdigit())
            return 200, {"result": new_id}
        if method == "im.message.add":
            return 200, {"result": 9001}
        return 404, {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"}


# --- processes -------------------------------------------------------------------------------------


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def astop(self, timeout_s: float = 10.0) -> None:
        """Stop without blocking the event loop (the process may still be talking to our in-test fakes)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            deadline = time.monotonic() + timeout_s
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> Proc:
    log_file = log_path.open("wb")
    proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT)
    return Proc(proc, log_path)


async def wait_http(
    url: str, proc: Proc, timeout_s: float = 40.0, ok: Callable[[int], bool] = lambda s: s < 500
) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise AssertionError(f"process exited ({proc.proc.returncode}):\n{proc.log()[-4000:]}")
            try:
                resp = await http.get(url, timeout=1.0)
                if ok(resp.status_code):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not come up:\n{proc.log()[-4000:]}")


async def eventually(check: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s (last: {last!r})")
