"""Internal gRPC (review M7): mutual TLS and a per-caller method allowlist on mapper and token-keeper.

The real `mapper-server` and `token-keeper-server` processes run with certificates from a throwaway CA
(dev/grpc_certs.py). Before the fix they served plaintext to anyone and every caller could call every
method: the internet-facing meta-ingress-web could store a portal, read any portal's access token, or
rewrite the mapper's channel bindings.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zaptrix import grpcauth
from zaptrix.v1 import mapper_pb2, mapper_pb2_grpc, token_keeper_pb2, token_keeper_pb2_grpc

BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dev"))
from grpc_certs import CertFiles, DevCA  # noqa: E402
from localsystem import DEV_KEYS  # noqa: E402
from zaptrix_testing.ports import free_port  # noqa: E402

PORTAL = "sec-portal-1"
PNID = "190000000000001"
APP_SECRET = "sec-app-secret-0123456789"


@dataclass
class Servers:
    ca: DevCA
    mapper_port: int
    tk_port: int
    tk_metrics_port: int
    tk_health_port: int
    certs: dict[str, CertFiles]
    # Every channel handed out stays referenced until teardown: a stub does not keep its channel alive once
    # the grpc instrumentation wraps it, and a collected channel closes under the call ("Channel is closed").
    opened: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(
        self, server: str, identity: str | None, *, certs: CertFiles | None = None
    ) -> grpc.aio.Channel:
        """A TLS channel to "mapper"/"token-keeper" presenting `identity`'s certificate (None: no certificate)."""
        port = self.mapper_port if server == "mapper" else self.tk_port
        own = certs or (self.certs[identity] if identity else None)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca.ca_file.read_bytes(),
            private_key=own.key.read_bytes() if own else None,
            certificate_chain=own.cert.read_bytes() if own else None,
        )
        name = grpcauth.MAPPER if server == "mapper" else grpcauth.TOKEN_KEEPER
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", name)]
        )
        self.opened.append(channel)
        return channel

    def tk(self, identity: str | None = grpcauth.ADMIN) -> token_keeper_pb2_grpc.TokenKeeperAsyncStub:
        return token_keeper_pb2_grpc.TokenKeeperStub(self.channel("token-keeper", identity))  # type: ignore[return-value]

    def mapper(self, identity: str | None = grpcauth.ADMIN) -> mapper_pb2_grpc.MapperAsyncStub:
        return mapper_pb2_grpc.MapperStub(self.channel("mapper", identity))  # type: ignore[return-value]

    async def refusals(self, caller: str, method: str) -> float:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{self.tk_metrics_port}/metrics")).text
        for line in text.splitlines():
            if line.startswith("zaptrix_grpc_refusals_total{") and f'caller="{caller}"' in line:
                if f'method="{method}"' in line:
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


def _env(database_url: str, certs: CertFiles, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZAPTRIX_", "OTEL_"))}
    env.update(
        ZAPTRIX_DATABASE_URL=database_url,
        ZAPTRIX_ENVIRONMENT="test",
        ZAPTRIX_ALLOW_INSECURE_HTTP="true",
        ZAPTRIX_TOKEN_KEEPER_KEYS=DEV_KEYS,
        ZAPTRIX_BITRIX_OAUTH_URL="http://127.0.0.1:9/oauth/token/",
        **certs.env(),
        **extra,
    )
    return env


def _spawn(script: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([str(BIN / script)], env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
async def servers(
    pg_server_url: str, tmp_path_factory: pytest.TempPathFactory, processes: None
) -> AsyncIterator[Servers]:
    """One mapper and one token-keeper for the module (the tests only add rows; _seed is idempotent)."""
    tmp_path = tmp_path_factory.mktemp("internal-grpc")
    name = f"sec_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(pg_server_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    database_url = pg_server_url.rsplit("/", 1)[0] + f"/{name}"
    ca = DevCA(tmp_path / "tls")
    identities = [
        grpcauth.MAPPER,
        grpcauth.TOKEN_KEEPER,
        grpcauth.ADMIN,
        grpcauth.META_INGRESS_WEB,
        grpcauth.BITRIX_INGRESS_WEB,
        grpcauth.META_DISPATCHER,
        "stranger.zaptrix",  # signed by the right CA, but no row in the table
    ]
    certs = {name: ca.issue(name) for name in identities}
    for script in ("mapper-migrate", "token-keeper-migrate"):
        done = await asyncio.to_thread(
            subprocess.run,
            [str(BIN / script)],
            env=_env(database_url, certs[grpcauth.ADMIN]),
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    s = Servers(ca, free_port(), free_port(), free_port(), free_port(), certs)
    procs = [
        _spawn(
            "mapper-server",
            _env(
                database_url,
                certs[grpcauth.MAPPER],
                ZAPTRIX_GRPC_PORT=str(s.mapper_port),
                ZAPTRIX_METRICS_PORT="0",
            ),
            tmp_path / "mapper.log",
        ),
        _spawn(
            "token-keeper-server",
            _env(
                database_url,
                certs[grpcauth.TOKEN_KEEPER],
                ZAPTRIX_GRPC_PORT=str(s.tk_port),
                ZAPTRIX_METRICS_PORT=str(s.tk_metrics_port),
                ZAPTRIX_GRPC_HEALTH_PORT=str(s.tk_health_port),
            ),
            tmp_path / "token-keeper.log",
        ),
    ]
    try:
        for server, log in (("mapper", "mapper.log"), ("token-keeper", "token-keeper.log")):
            await _wait_serving(s, server, tmp_path / log)
        yield s
    finally:
        for channel in s.opened:
            await channel.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        conn = await asyncpg.connect(pg_server_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def _serving(channel: grpc.aio.Channel) -> bool:
    async with channel:
        try:
            resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


async def _wait_serving(s: Servers, server: str, log: Path) -> None:
    """SERVING over mTLS, or over plaintext (so that the tests show what a plaintext server lets through)."""
    port = s.mapper_port if server == "mapper" else s.tk_port
    for _ in range(200):
        if await _serving(s.channel(server, grpcauth.ADMIN)) or await _serving(
            grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        ):
            return
        await asyncio.sleep(0.1)
    text = await asyncio.to_thread(log.read_text, errors="replace")
    pytest.fail(f"{server} did not become SERVING:\n{text[-3000:]}")


async def _seed(s: Servers) -> None:
    """A portal, a channel's credentials and its binding, stored by the operator identity."""
    await s.tk().UpsertPortal(
        token_keeper_pb2.UpsertPortalRequest(
            member_id=PORTAL,
            domain="sec.bitrix24.test",
            client_endpoint="https://sec.bitrix24.test/rest/",
            server_endpoint="https://oauth.bitrix.info/rest/",
            client_id="local.sec.app",
            client_secret="sec-client-secret",
            access_token="sec-access-token",
            refresh_token="sec-refresh-token",
            application_token="sec-application-token",
            scope="imopenlines,imconnector",
        ),
        timeout=5,
    )
    await s.tk().UpsertChannelCredentials(
        token_keeper_pb2.UpsertChannelCredentialsRequest(
            phone_number_id=PNID,
            access_token="sec-wa-token",
            app_secret=APP_SECRET,
            verify_token="sec-verify",
        ),
        timeout=5,
    )
    await s.mapper().BindChannel(
        mapper_pb2.BindChannelRequest(
            channel=mapper_pb2.Channel(
                phone_number_id=PNID,
                display_phone_number="15550009999",
                member_id=PORTAL,
                line_id=3,
                connector_id="zaptrix_whatsapp",
                active=True,
            )
        ),
        timeout=5,
    )


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


async def test_plaintext_caller_is_refused(servers: Servers) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers.tk_port}") as channel:
        stub = token_keeper_pb2_grpc.TokenKeeperStub(channel)
        code = await _code(
            stub.GetChannelCredentials(
                token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=PNID), timeout=5
            )
        )
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_client_without_certificate_is_refused(servers: Servers) -> None:
    await _seed(servers)  # the operator identity's certificate works
    stub = servers.tk(identity=None)
    code = await _code(
        stub.GetChannelCredentials(
            token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=PNID), timeout=5
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails: require_client_auth


async def test_certificate_from_another_ca_is_refused(servers: Servers, tmp_path: Path) -> None:
    await _seed(servers)
    genuine = servers.tk(grpcauth.META_INGRESS_WEB)
    request = token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=PNID)
    assert (await genuine.GetChannelCredentials(request, timeout=5)).app_secret == APP_SECRET
    # A perfect copy of meta-ingress-web's name, signed by a CA the servers do not trust.
    forged = DevCA(tmp_path / "other-ca", name="zaptrix-dev-ca").issue(grpcauth.META_INGRESS_WEB)
    channel = servers.channel("token-keeper", None, certs=forged)
    stub = token_keeper_pb2_grpc.TokenKeeperStub(channel)
    code = await _code(
        stub.GetChannelCredentials(
            token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=PNID), timeout=5
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_meta_ingress_web_cannot_upsert_a_portal(servers: Servers) -> None:
    await _seed(servers)
    before = await servers.refusals(grpcauth.META_INGRESS_WEB, "UpsertPortal")
    code = await _code(
        servers.tk(grpcauth.META_INGRESS_WEB).UpsertPortal(
            token_keeper_pb2.UpsertPortalRequest(
                member_id="attacker-portal",
                domain="evil.example",
                client_endpoint="https://evil.example/rest/",
                server_endpoint="https://evil.example/oauth/",
                client_id="evil",
                client_secret="evil",
                access_token="evil",
                refresh_token="evil",
                application_token="evil",
            ),
            timeout=5,
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert (
        await _code(
            servers.tk().GetPortalStatus(
                token_keeper_pb2.GetPortalStatusRequest(member_id="attacker-portal"), timeout=5
            )
        )
        == grpc.StatusCode.NOT_FOUND
    ), "the refused UpsertPortal must not have stored anything"
    assert await servers.refusals(grpcauth.META_INGRESS_WEB, "UpsertPortal") == before + 1


async def test_meta_ingress_web_cannot_read_a_portal_access_token(servers: Servers) -> None:
    await _seed(servers)
    code = await _code(
        servers.tk(grpcauth.META_INGRESS_WEB).GetAccessToken(
            token_keeper_pb2.GetAccessTokenRequest(member_id=PORTAL), timeout=5
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_meta_ingress_web_cannot_change_channel_credentials(servers: Servers) -> None:
    await _seed(servers)
    code = await _code(
        servers.tk(grpcauth.META_INGRESS_WEB).UpsertChannelCredentials(
            token_keeper_pb2.UpsertChannelCredentialsRequest(
                phone_number_id=PNID, app_secret="attacker-secret"
            ),
            timeout=5,
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    creds = await servers.tk().GetChannelCredentials(
        token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=PNID), timeout=5
    )
    assert creds.app_secret == APP_SECRET


async def test_meta_ingress_web_cannot_call_the_mapper(servers: Servers) -> None:
    await _seed(servers)
    stub = servers.mapper(grpcauth.META_INGRESS_WEB)
    rebind = mapper_pb2.BindChannelRequest(
        channel=mapper_pb2.Channel(
            phone_number_id=PNID,
            member_id="attacker-portal",
            line_id=99,
            connector_id="zaptrix_whatsapp",
            active=True,
        )
    )
    assert await _code(stub.BindChannel(rebind, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    lookup = stub.GetChannel(mapper_pb2.GetChannelRequest(phone_number_id=PNID), timeout=5)
    assert await _code(lookup) == grpc.StatusCode.PERMISSION_DENIED
    channel = await servers.mapper().GetChannel(mapper_pb2.GetChannelRequest(phone_number_id=PNID), timeout=5)
    assert (channel.member_id, channel.line_id) == (PORTAL, 3), "the refused BindChannel changed nothing"


async def test_bitrix_ingress_web_cannot_read_access_tokens(servers: Servers) -> None:
    """bitrix-ingress-web calls Bitrix24 during install with the installer's own token, never a stored one."""
    await _seed(servers)
    code = await _code(
        servers.tk(grpcauth.BITRIX_INGRESS_WEB).GetAccessToken(
            token_keeper_pb2.GetAccessTokenRequest(member_id=PORTAL), timeout=5
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_meta_ingress_web_allowed_calls_work(servers: Servers) -> None:
    await _seed(servers)
    stub = servers.tk(grpcauth.META_INGRESS_WEB)
    creds = await stub.GetChannelCredentials(
        token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=PNID), timeout=5
    )
    assert creds.app_secret == APP_SECRET
    verdict = await stub.CheckVerifyToken(
        token_keeper_pb2.CheckVerifyTokenRequest(verify_token="sec-verify"), timeout=5
    )
    assert verdict.valid
    # Health checking stays open to every authenticated caller.
    async with servers.channel("mapper", grpcauth.META_INGRESS_WEB) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_unknown_identity_of_the_right_ca_is_refused(servers: Servers) -> None:
    await _seed(servers)
    before = await servers.refusals("unknown", "GetChannelCredentials")
    stub = servers.tk("stranger.zaptrix")
    request = token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=PNID)
    assert await _code(stub.GetChannelCredentials(request, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    # The metric's caller label comes from the fixed table only: an unknown name cannot grow it.
    assert await servers.refusals("unknown", "GetChannelCredentials") == before + 1


async def test_plaintext_health_port_serves_nothing_but_health(servers: Servers) -> None:
    """The kubelet's probes need plaintext; that port must not become a way around mTLS."""
    await _seed(servers)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers.tk_health_port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="liveness"), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = token_keeper_pb2_grpc.TokenKeeperStub(channel)
        request = token_keeper_pb2.GetChannelCredentialsRequest(phone_number_id=PNID)
        assert await _code(stub.GetChannelCredentials(request, timeout=5)) == grpc.StatusCode.UNIMPLEMENTED


async def test_meta_ingress_web_records_send_confirmations_only(servers: Servers) -> None:
    """meta-ingress-web may record that Meta took a send (a "sent:" record from a status webhook), never
    mark another event processed: that would silently drop an operator's or a customer's message."""
    await _seed(servers)
    stub = servers.mapper(grpcauth.META_INGRESS_WEB)
    event = f"b24:{PORTAL}:{uuid.uuid4().int % 10**9}"
    forged = mapper_pb2.MarkProcessedRequest(event_id=event, result="wamid.forged")
    assert await _code(stub.MarkProcessed(forged, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    check = await servers.mapper().CheckProcessed(mapper_pb2.CheckProcessedRequest(event_id=event), timeout=5)
    assert not check.processed
    confirmation = mapper_pb2.MarkProcessedRequest(event_id=f"sent:{PNID}:{event}", result="wamid.ok")
    await stub.MarkProcessed(confirmation, timeout=5)
    check = await servers.mapper().CheckProcessed(
        mapper_pb2.CheckProcessedRequest(event_id=f"sent:{PNID}:{event}"), timeout=5
    )
    assert check.result == "wamid.ok"


async def test_meta_dispatcher_records_a_delivery_but_cannot_change_the_conversation(
    servers: Servers,
) -> None:
    """meta-dispatcher may record a sent reply's link and dedupe record in one RecordDelivery call (it may
    make both alone), but never change the conversation through it: UpdateConversation is not its to call
    (a forged contact name or timestamp would mislead the operator or the 24-h window)."""
    await _seed(servers)
    wa = str(10**11 + uuid.uuid4().int % 10**9)
    conv = (
        await servers.mapper().GetOrCreateConversation(
            mapper_pb2.GetOrCreateConversationRequest(phone_number_id=PNID, wa_id=wa), timeout=5
        )
    ).conversation
    stub = servers.mapper(grpcauth.META_DISPATCHER)

    def delivery(event: str, **changes: str) -> mapper_pb2.RecordDeliveryRequest:
        link = mapper_pb2.MessageLink(
            conversation_id=conv.id,
            direction=mapper_pb2.DIRECTION_OUTBOUND,
            wamid=f"wamid.{event}",
            member_id=PORTAL,
        )
        return mapper_pb2.RecordDeliveryRequest(
            link=mapper_pb2.LinkMessageRequest(link=link),
            conversation=mapper_pb2.UpdateConversationRequest(id=conv.id, **changes),
            processed=mapper_pb2.MarkProcessedRequest(event_id=event, result=f"wamid.{event}"),
        )

    forged = f"b24:{PORTAL}:{uuid.uuid4().int % 10**9}"
    refused = stub.RecordDelivery(delivery(forged, contact_name="Forged"), timeout=5)
    assert await _code(refused) == grpc.StatusCode.PERMISSION_DENIED
    check = await servers.mapper().CheckProcessed(
        mapper_pb2.CheckProcessedRequest(event_id=forged), timeout=5
    )
    assert not check.processed
    event = f"b24:{PORTAL}:{uuid.uuid4().int % 10**9}"
    done = await stub.RecordDelivery(delivery(event), timeout=5)
    assert done.link.wamid == f"wamid.{event}" and not done.already_processed
    assert done.conversation.contact_name == conv.contact_name


async def test_an_uninstall_and_a_reinstall_come_each_from_their_own_caller(servers: Servers) -> None:
    """Only the meta dispatcher (consuming a verified ONAPPUNINSTALL) schedules a portal's data for removal,
    and only bitrix-ingress-web (a verified install) cancels it: a process that could do both could keep a
    removed portal's data or schedule a live portal's removal."""
    member = f"portal-{uuid.uuid4().hex[:8]}"
    gone = mapper_pb2.SetPortalInstalledRequest(member_id=member, installed=False)
    back = mapper_pb2.SetPortalInstalledRequest(member_id=member, installed=True)
    web, dispatcher = servers.mapper(grpcauth.BITRIX_INGRESS_WEB), servers.mapper(grpcauth.META_DISPATCHER)
    assert await _code(web.SetPortalInstalled(gone, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert await _code(dispatcher.SetPortalInstalled(back, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    other = servers.mapper(grpcauth.META_INGRESS_WEB)
    assert await _code(other.SetPortalInstalled(gone, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert (await dispatcher.SetPortalInstalled(gone, timeout=5)).HasField("purge_after")
    assert not (await web.SetPortalInstalled(back, timeout=5)).HasField("uninstalled_at")
