"""`token-keeper-admin` as a subprocess: add a portal and a channel, status, refresh, rotate-keys."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess

import asyncpg
import pytest
from tk_support import PORTALS, Sandbox, find_secrets_in, keys_env, run_cli, scan_tables_for, server_env
from token_keeper.admin import main as admin_main


async def run_inprocess(
    args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """The same CLI entry point without a process start (the subprocess cases cover argv/stdin/env handling)."""
    assert args[0] == "token-keeper-admin"
    capsys.readouterr()
    with monkeypatch.context() as m:
        for key in [k for k in os.environ if k.startswith("ZAPTRIX_")]:
            m.delenv(key)
        for key, value in env.items():
            if key.startswith(("ZAPTRIX_", "TK_")):
                m.setenv(key, value)
        code = await asyncio.to_thread(admin_main, args[1:])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


async def test_admin_add_status_verify_and_rotate_keys(
    db_url: str,
    sandbox: Sandbox,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return await run_inprocess(args, env, monkeypatch, capsys)

    k1, k2 = os.urandom(32), os.urandom(32)
    spec, spec2 = PORTALS[4], PORTALS[5]
    live, live2 = await sandbox.portal(spec["member_id"]), await sandbox.portal(spec2["member_id"])
    env = server_env(
        db_url,
        sandbox.oauth_url,
        keys_env({"k1": k1}),
        TK_CLIENT_SECRET=spec["client_secret"],
        TK_REFRESH=live["refresh_token"],
        TK_APP_TOKEN=spec["application_token"],
        TK_GRAPH_TOKEN="EAAG-admin-graph-token",
        TK_APP_SECRET="admin-app-secret",
        TK_VERIFY="admin-verify-token",
    )
    portal_args = ["--domain", spec["domain"], "--client-endpoint", live["client_endpoint"], "--client-id"]

    # Secrets from env vars; --verify refreshes once through the sandbox with the servers' lock discipline.
    r = run_cli(
        [
            "token-keeper-admin",
            "add-portal",
            "--member-id",
            spec["member_id"],
            *portal_args,
            spec["client_id"],
            "--client-secret-env",
            "TK_CLIENT_SECRET",
            "--refresh-token-env",
            "TK_REFRESH",
            "--application-token-env",
            "TK_APP_TOKEN",
            "--verify",
        ],
        env,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "saved: state=active, key_id=k1" in r.stdout and "refresh ok" in r.stdout
    assert await sandbox.refresh_count(spec["member_id"]) == 1

    # Secrets from stdin (non-terminal): one line each, client secret then refresh token.
    r = run_cli(
        [
            "token-keeper-admin",
            "add-portal",
            "--member-id",
            spec2["member_id"],
            "--domain",
            spec2["domain"],
            "--client-endpoint",
            live2["client_endpoint"],
            "--client-id",
            spec2["client_id"],
        ],
        env,
        stdin=f"{spec2['client_secret']}\n{live2['refresh_token']}\n",
    )
    assert r.returncode == 0, r.stderr + r.stdout

    r = run_cli(
        [
            "token-keeper-admin",
            "add-channel",
            "--phone-number-id",
            "109876543210",
            "--waba-id",
            "200000000000001",
            "--access-token-env",
            "TK_GRAPH_TOKEN",
            "--app-secret-env",
            "TK_APP_SECRET",
            "--verify-token-env",
            "TK_VERIFY",
        ],
        env,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "access_token=yes, app_secret=yes, verify_token=yes" in r.stdout

    r = run_cli(
        ["token-keeper-admin", "add-channel", "--phone-number-id", "1", "--app-secret-env", "NOPE"], env
    )
    assert r.returncode == 1 and "NOPE" in r.stderr

    r = run_cli(["token-keeper-admin", "status"], env)
    assert r.returncode == 0, r.stderr
    assert spec["member_id"] in r.stdout and "ACTIVE" in r.stdout and "109876543210" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith(spec["member_id"] + " "))
    assert " 1 " in row and "m left" in row  # refreshed once, access expiry shown
    live = await sandbox.portal(spec["member_id"])
    secrets = [
        spec["client_secret"],
        spec2["client_secret"],
        live["refresh_token"],
        live["access_token"],
        live2["refresh_token"],
        spec["application_token"],
        "EAAG-admin-graph-token",
        "admin-app-secret",
        "admin-verify-token",
    ]
    assert find_secrets_in(r.stdout + r.stderr, secrets) == []
    assert await scan_tables_for(pool, secrets) == []

    r = run_cli(["token-keeper-admin", "status", "--json"], env)
    status = json.loads(r.stdout)
    by_id = {p["member_id"]: p for p in status["portals"]}
    assert by_id[spec["member_id"]]["refresh_count"] == 1
    assert by_id[spec2["member_id"]]["refresh_count"] == 0
    assert status["keys"] == {"active": "k1", "rows_by_key_id": {"k1": 3}}

    # Rotation: add k2 as the active key, rotate, drop k1.
    env12 = {
        **env,
        "ZAPTRIX_TOKEN_KEEPER_KEYS": keys_env({"k1": k1, "k2": k2}),
        "ZAPTRIX_TOKEN_KEEPER_ACTIVE_KEY_ID": "k2",
    }
    r = await cli(["token-keeper-admin", "rotate-keys", "--dry-run"], env12)
    assert "2 portal(s) and 1 channel(s) are not under key k2" in r.stdout
    r = await cli(["token-keeper-admin", "rotate-keys"], env12)
    assert r.returncode == 0, r.stderr
    assert "re-encrypted 3 row(s) under key k2" in r.stdout and "may now be removed" in r.stdout
    env2 = {**env, "ZAPTRIX_TOKEN_KEEPER_KEYS": keys_env({"k2": k2})}
    r = await cli(["token-keeper-admin", "refresh", "--member-id", spec2["member_id"]], env2)
    assert r.returncode == 0, r.stderr + r.stdout  # decrypts client secret + refresh token with k2 alone
    assert await sandbox.refresh_count(spec2["member_id"]) == 1
    assert json.loads((await cli(["token-keeper-admin", "status", "--json"], env2)).stdout)["keys"] == {
        "active": "k2",
        "rows_by_key_id": {"k2": 3},
    }

    # Operator fix of NEEDS_REAUTH: only a new refresh token, everything else kept; --verify proves it.
    await sandbox.expire_refresh_token(spec2["member_id"])
    r = await cli(["token-keeper-admin", "refresh", "--member-id", spec2["member_id"]], env2)
    assert r.returncode == 1 and "needs re-authorisation" in r.stderr
    r = await cli(["token-keeper-admin", "status"], env2)
    assert "NEEDS_REAUTH" in r.stdout and "1 portal(s) need re-authorisation" in r.stdout
    await sandbox.reset()  # the portal admin reinstalls: a new refresh token
    new_rt = (await sandbox.portal(spec2["member_id"]))["refresh_token"]
    r = await cli(
        [
            "token-keeper-admin",
            "add-portal",
            "--member-id",
            spec2["member_id"],
            "--keep-secrets",
            "--refresh-token-env",
            "TK_NEW_RT",
            "--verify",
        ],
        {**env2, "TK_NEW_RT": new_rt},
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "state=active" in r.stdout and "refresh ok" in r.stdout
    assert await sandbox.refresh_count(spec2["member_id"]) == 1  # counted since the reset

    # Without the right key, the refresh is refused with a clear error, no secret, no Bitrix24 call.
    r = await cli(["token-keeper-admin", "refresh", "--member-id", spec2["member_id"]], env)
    assert r.returncode == 1 and "k2" in r.stderr and "not configured" in r.stderr
    assert await sandbox.refresh_count(spec2["member_id"]) == 1
    assert find_secrets_in(r.stdout + r.stderr, [new_rt, spec2["client_secret"]]) == []


async def test_generate_key_and_dev_key_warning(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return await run_inprocess(args, env, monkeypatch, capsys)

    r = await cli(["token-keeper-admin", "generate-key"], {})
    assert r.returncode == 0 and len(base64.b64decode(r.stdout.strip(), validate=True)) == 32
    env = server_env(db_url, "https://oauth.bitrix.info/oauth/token/", None, ZAPTRIX_ENVIRONMENT="dev")
    r = await cli(["token-keeper-admin", "status"], env)
    assert r.returncode == 0, r.stderr
    assert "PUBLISHED DEV ENCRYPTION KEY" in r.stdout + r.stderr
    env["ZAPTRIX_ENVIRONMENT"] = "production"
    env.pop("ZAPTRIX_ALLOW_INSECURE_HTTP")
    r = await cli(["token-keeper-admin", "status"], env)
    assert r.returncode == 1 and "required in production" in r.stderr
