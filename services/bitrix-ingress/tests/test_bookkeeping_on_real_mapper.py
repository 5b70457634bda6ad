"""The dispatcher's bookkeeping against the real mapper (mapper-server process on real PostgreSQL).

Contract check: what the fakes accept, the real mapper must accept too — INBOUND links without a Bitrix24
message id, conversation updates, status updates in any order, dedupe records as the redelivery path reads
them. Bitrix24 is the scripted fake; token-keeper the in-test fake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from bitrix_ingress.bitrix_rest.client import BitrixRest
from bitrix_ingress.bitrix_rest.pacing import PacerRegistry
from bitrix_ingress.bitrix_rest.portal import PortalClient
from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher.batch_handler import BitrixDispatcher
from bitrix_ingress.settings import DispatcherSettings
from bitrix_support import FakeBitrix
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from zaptrix.clients import Clients
from zaptrix.kafka import Received, new_envelope
from zaptrix.settings import GrpcClientSettings
from zaptrix.v1 import events_pb2, mapper_pb2, mapper_pb2_grpc
from zaptrix_testing.fakes import GrpcFakes, Portal
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import console_script, start_process

tracer = trace.get_tracer("test")


@pytest.fixture
async def real_mapper(fresh_database: Callable[[], Awaitable[str]], tmp_path: Path) -> AsyncIterator[str]:
    from mapper import migrate

    dsn = await fresh_database()
    await migrate.upgrade(dsn)
    port, metrics = free_port(), free_port()
    proc = start_process(
        [console_script("mapper-server")],
        {"ZAPTRIX_DATABASE_URL": dsn, "ZAPTRIX_GRPC_PORT": str(port), "ZAPTRIX_METRICS_PORT": str(metrics)},
        tmp_path / "mapper.log",
    )
    addr = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(addr)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(400):
            assert proc.proc.poll() is None, proc.log()[-3000:]
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service="zaptrix.v1.Mapper"), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
        stub = mapper_pb2_grpc.MapperStub(channel)
        await stub.BindChannel(
            mapper_pb2.BindChannelRequest(
                channel=mapper_pb2.Channel(
                    phone_number_id="100",
                    member_id="m1",
                    line_id=7,
                    connector_id="zaptrix_whatsapp",
                    active=True,
                )
            )
        )
        yield addr
    finally:
        await channel.close()
        await proc.astop()


def customer(wa_id: str, n: int) -> Received:
    cm = events_pb2.CustomerMessage(
        phone_number_id="100",
        wa_id=wa_id,
        profile_name="Anna Schmidt",
        wamid=f"wamid.{wa_id}.{n}",
        type="text",
        text="hi",
    )
    cm.sent_at.FromSeconds(1_700_000_000 + n)
    env = new_envelope(f"wa:{cm.wamid}", f"100:{wa_id}", events_pb2.PLATFORM_WHATSAPP, customer_message=cm)
    return Received(env, "t", 0, n, b"k", env.SerializeToString(), [], 1, tracer.start_span("r"))


def status(wamid: str, value: str) -> Received:
    st = events_pb2.WhatsAppStatus(phone_number_id="100", wa_id="4917", wamid=wamid, status=value)
    st.at.FromSeconds(1_700_000_500)
    env = new_envelope(
        f"wa-status:{wamid}:{value}", "100:4917", events_pb2.PLATFORM_WHATSAPP, whatsapp_status=st
    )
    return Received(env, "t", 0, 0, b"k", env.SerializeToString(), [], 1, tracer.start_span("r"))


async def test_dispatcher_bookkeeping_on_the_real_mapper(real_mapper: str, fakes: GrpcFakes) -> None:
    fakes.token_keeper.add(Portal("m1", "apptok", access_token="access-1"))
    clients = Clients(GrpcClientSettings(mapper_addr=real_mapper, token_keeper_addr=fakes.addr))
    deps = Deps(clients)
    bitrix = FakeBitrix()
    settings = DispatcherSettings(bitrix_rate_per_s=100, bitrix_burst=50)
    rest = BitrixRest(transport=bitrix.transport())
    dispatcher = BitrixDispatcher(
        settings, deps, PortalClient(deps, rest, PacerRegistry(settings.rate_for), settings)
    )
    try:
        outcomes = await dispatcher.handle([customer("4917", n) for n in range(3)])
        assert [o.kind for o in outcomes] == ["ok"] * 3, [o.reason for o in outcomes]
        again = await dispatcher.handle([customer("4917", n) for n in range(3)])
        assert [o.kind for o in again] == ["duplicate"] * 3, [o.reason for o in again]
        assert len(bitrix.sent_messages()) == 3 and len(bitrix.contacts) == 1

        conv = await deps.find_conversation_by_customer("100", "4917")
        assert conv.bitrix_chat_id == "1000" and conv.bitrix_contact_id == "500"
        assert conv.contact_name == "Anna Schmidt" and conv.last_customer_message_at.seconds == 1_700_000_002
        link = await deps.find_message_link("wamid.4917.0")
        assert link.direction == mapper_pb2.DIRECTION_INBOUND and link.bitrix_chat_id == "1000"

        # An operator message the meta dispatcher sent: statuses in any order, reported once.
        await deps.link_message(
            mapper_pb2.MessageLink(
                conversation_id=conv.id,
                direction=mapper_pb2.DIRECTION_OUTBOUND,
                wamid="wamid.out",
                member_id="m1",
                bitrix_message_id="86497",
                bitrix_chat_id="1000",
                whatsapp_status="accepted",
            )
        )
        for value in ("read", "delivered", "sent"):
            (outcome,) = await dispatcher.handle([status("wamid.out", value)])
            assert outcome.kind == "ok", outcome.reason
        assert [c.method for c in bitrix.calls].count("imconnector.send.status.delivery") == 1
        link = await deps.find_message_link("wamid.out")
        assert (link.whatsapp_status, link.bitrix_status) == ("read", "read")
        unknown = status("wamid.unknown", "delivered")
        unknown.attempt = settings.status_link_attempts
        (outcome,) = await dispatcher.handle([unknown])
        assert outcome.kind == "ok"
    finally:
        await rest.aclose()
        await clients.close()
