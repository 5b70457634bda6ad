"""System-level proof: the installed `mapper-server` console script as a separate process.

(`mapper-migrate` as a process is covered by test_migrations.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mapper import migrate
from zaptrix.v1 import mapper_pb2 as pb
from zaptrix.v1 import mapper_pb2_grpc
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import console_script


async def test_mapper_server_process(fresh_database: Callable[[], Awaitable[str]]) -> None:
    dsn = await fresh_database()
    await migrate.upgrade(dsn)
    env = {**os.environ, "ZAPTRIX_DATABASE_URL": dsn}

    grpc_port, metrics_port = free_port(), free_port()
    env |= {
        "ZAPTRIX_GRPC_PORT": str(grpc_port),
        "ZAPTRIX_METRICS_PORT": str(metrics_port),
        "ZAPTRIX_HEALTH_PERIOD_S": "0.2",
        "ZAPTRIX_SHUTDOWN_GRACE_S": "2",
    }
    proc = await asyncio.create_subprocess_exec(
        console_script("mapper-server"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):  # the process imports grpc, OpenTelemetry, asyncpg: allow a slow, busy box
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service="zaptrix.v1.Mapper"), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            assert proc.returncode is None, "mapper-server exited early"
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("mapper-server never reported SERVING")

        stub = mapper_pb2_grpc.MapperStub(channel)
        await stub.BindChannel(
            pb.BindChannelRequest(
                channel=pb.Channel(
                    phone_number_id="1001", member_id="portal-a", line_id=3, connector_id="c", active=True
                )
            )
        )
        created = await stub.GetOrCreateConversation(
            pb.GetOrCreateConversationRequest(phone_number_id="1001", wa_id="15550001111", contact_name="Ana")
        )
        assert created.created
        found = await stub.FindConversation(
            pb.FindConversationRequest(
                portal_external_chat=pb.PortalExternalChat(
                    member_id="portal-a", external_chat_id=created.conversation.external_chat_id
                )
            )
        )
        assert found == created.conversation
        try:
            await stub.GetChannel(pb.GetChannelRequest(phone_number_id=""))
            raise AssertionError("empty id accepted")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT

        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert 'zaptrix_mapper_rpcs_total{code="OK",method="GetOrCreateConversation"} 1.0' in metrics
        assert 'zaptrix_mapper_rpcs_total{code="INVALID_ARGUMENT",method="GetChannel"} 1.0' in metrics
        assert 'zaptrix_mapper_cache_lookups_total{cache="channel",result="miss"}' in metrics
        assert "zaptrix_mapper_conversations_created_total 1.0" in metrics
    finally:
        await channel.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    events = [line["event"] for line in lines]
    assert "grpc server started" in events and "mapper stopped" in events
    assert all(line["service"] == "mapper" for line in lines)
    assert "zaptrix:zaptrix@" not in out.decode() + err.decode()  # the DSN's password never reaches the logs
