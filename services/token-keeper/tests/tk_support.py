"""Support code of token-keeper's tests (imported by conftest.py and the tests; the name is unique in the repo)."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
from pydantic import SecretStr
from token_keeper.crypto import Keyring
from token_keeper.model import PortalUpsert
from token_keeper.service import TokenService
from token_keeper.settings import TokenKeeperSettings
from zaptrix.v1 import token_keeper_pb2_grpc
from zaptrix_testing.processes import console_script

PORTALS = [
    {
        "member_id": f"tk-portal-{i}",
        "domain": f"tk{i}.bitrix24.test",
        "client_id": f"local.tk{i}.app",
        "client_secret": f"client-secret-{i}-{os.urandom(6).hex()}",
        "application_token": f"app-token-{i}-{os.urandom(6).hex()}",
    }
    for i in range(1, 9)
]


def new_keyring(*kids: str, active: str | None = None) -> tuple[Keyring, str]:
    """A keyring with fresh random keys and its ZAPTRIX_TOKEN_KEEPER_KEYS form."""
    keys = {kid: os.urandom(32) for kid in kids}
    return Keyring(keys, active or kids[-1]), keys_env(keys)


def keys_env(keys: dict[str, bytes]) -> str:
    return ",".join(f"{kid}:{base64.b64encode(k).decode()}" for kid, k in keys.items())


def make_settings(oauth_url: str, **overrides: Any) -> TokenKeeperSettings:
    return TokenKeeperSettings(
        environment="test", allow_insecure_http=True, bitrix_oauth_url=oauth_url, **overrides
    )


@dataclass
class Sandbox:
    url: str
    proc: subprocess.Popen[bytes]
    client: httpx.AsyncClient = field(default_factory=httpx.AsyncClient)

    @property
    def oauth_url(self) -> str:
        return f"{self.url}/oauth/token/"

    async def reset(self) -> None:
        (await self.client.post(f"{self.url}/_sandbox/reset")).raise_for_status()

    async def portal(self, member_id: str) -> dict[str, Any]:
        r = await self.client.get(f"{self.url}/_sandbox/portals/{member_id}")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    async def refresh_count(self, member_id: str) -> int:
        r = await self.client.get(f"{self.url}/_sandbox/portals/{member_id}/stats")
        r.raise_for_status()
        return int(r.json()["stats"]["refresh_count"])

    async def expire_refresh_token(self, member_id: str) -> None:
        r = await self.client.post(f"{self.url}/_sandbox/portals/{member_id}/expire-refresh-token")
        r.raise_for_status()


async def install_portal(
    service: TokenService, sandbox: Sandbox, member_id: str, *, expires_in_s: float = 3600
) -> dict[str, Any]:
    """Store the portal the way the app-install handler does, with the sandbox's current tokens."""
    spec = next(p for p in PORTALS if p["member_id"] == member_id)
    live = await sandbox.portal(member_id)
    await service.upsert_portal(
        PortalUpsert(
            member_id=member_id,
            domain=spec["domain"],
            client_endpoint=live["client_endpoint"],
            server_endpoint=f"{sandbox.url}/rest/",
            client_id=spec["client_id"],
            client_secret=SecretStr(spec["client_secret"]),
            access_token=SecretStr(live["access_token"]),
            refresh_token=SecretStr(live["refresh_token"]),
            access_expires_at=service.clock() + timedelta(seconds=expires_in_s),
            application_token=SecretStr(spec["application_token"]),
            scope="imopenlines,imconnector",
        )
    )
    return {**spec, **live}


@dataclass
class Server:
    """A `token-keeper-server` subprocess and a gRPC stub to it."""

    port: int
    metrics_port: int
    proc: subprocess.Popen[bytes]
    log: Path
    channel: grpc.aio.Channel
    stub: token_keeper_pb2_grpc.TokenKeeperAsyncStub

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as c:
            return (await c.get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text


def server_env(db_url: str, oauth_url: str, keys_raw: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZAPTRIX_", "OTEL_"))}
    env.update(
        ZAPTRIX_DATABASE_URL=db_url,
        ZAPTRIX_ENVIRONMENT="test",
        ZAPTRIX_ALLOW_INSECURE_HTTP="true",
        ZAPTRIX_BITRIX_OAUTH_URL=oauth_url,
        ZAPTRIX_LOG_LEVEL="DEBUG",
    )
    if keys_raw:
        env["ZAPTRIX_TOKEN_KEEPER_KEYS"] = keys_raw
    env.update(extra)
    return env


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process with stdout+stderr to `log` (Popen does not block the event loop)."""
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def run_cli(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(args[0]), *args[1:]],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def scan_tables_for(pool: asyncpg.Pool, secrets: Iterable[str]) -> list[str]:
    """Every text/bytea value of every table in schema token_keeper containing a secret (raw, hex or base64)."""
    needles: list[bytes] = []
    for s in secrets:
        if s:
            raw = s.encode()
            needles += [raw, raw.hex().encode(), base64.b64encode(raw)]
    assert needles
    found: list[str] = []
    async with pool.acquire() as conn:
        columns = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'token_keeper'"
        )
        assert len(columns) > 20, "schema token_keeper is missing: migrations did not run?"
        for c in columns:
            rows = await conn.fetch(
                f'SELECT "{c["column_name"]}"::text AS t, "{c["column_name"]}" AS v '
                f'FROM token_keeper."{c["table_name"]}"'
            )
            for r in rows:
                for value in (r["t"], r["v"]):
                    b = value if isinstance(value, bytes) else str(value).encode()
                    if any(n in b for n in needles):
                        found.append(f"{c['table_name']}.{c['column_name']}")
    return found


def find_secrets_in(text: str, secrets: Iterable[str]) -> list[str]:
    """Secrets (shown truncated) that occur in a text, raw or URL-encoded."""
    from urllib.parse import quote

    return [s[:6] + "…" for s in secrets if s and (s in text or quote(s, safe="") in text)]
