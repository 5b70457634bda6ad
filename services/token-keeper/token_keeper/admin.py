"""`token-keeper-admin` (deprecated: `zaptrix-admin portals|tokens|channels`; goes away in the next release):
the token-keeper commands, which zaptrix-admin runs through the functions below (add_portal, status, ...).

It talks to PostgreSQL directly through the same repository/service code as the server (same encryption, same
row locks), so it works before any server runs (first portal), while servers are down, and for rotate-keys,
which is no RPC. Run it where the server's environment is (e.g. `kubectl exec deploy/token-keeper --
token-keeper-admin status`): it needs ZAPTRIX_DATABASE_URL and ZAPTRIX_TOKEN_KEEPER_KEYS.

Secrets are never taken from argv (visible in `ps` and shell history): `--client-secret-env VAR` names an
environment variable; without it the CLI prompts (no echo) or reads one line from a non-terminal stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr
from zaptrix.database import DatabaseUnavailable, SchemaMissing
from zaptrix.logging import configure_logging
from zaptrix.settings import DatabaseSettings

from token_keeper.crypto import KeyConfigError, generate_key
from token_keeper.errors import TokenKeeperError
from token_keeper.keys import load_keyring
from token_keeper.model import ChannelUpsert, PortalUpsert, utcnow
from token_keeper.oauth import BitrixOAuthClient
from token_keeper.repository import STATE_UNINSTALLED, Repository, database
from token_keeper.service import TokenService
from token_keeper.settings import TokenKeeperSettings


class UsageError(Exception):
    pass


def say(message: str, *, err: bool = False) -> None:
    """CLI output (stdout; errors to stderr). Logs go to stdout as JSON only with -v."""
    (sys.stderr if err else sys.stdout).write(message + "\n")


def read_secret(env_var: str | None, label: str, *, required: bool) -> SecretStr | None:
    """From the named environment variable, else a prompt (tty) or one stdin line. Never from argv."""
    if env_var:
        value = os.environ.get(env_var)
        if value is None:
            raise UsageError(f"environment variable {env_var} (for {label}) is not set")
        return SecretStr(value.strip()) if value.strip() else None
    if not required:
        return None
    if sys.stdin.isatty():
        value = getpass.getpass(f"{label}: ")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise UsageError(f"{label} is required (set --{label.replace(' ', '-')}-env or type it)")
    return SecretStr(value)


def _age(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "-"
    seconds = (now - then).total_seconds()
    if abs(seconds) >= 86400:
        return f"{seconds / 86400:.1f}d"
    if abs(seconds) >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 60:.0f}m"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def add_portal_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--member-id", required=True)
    ap.add_argument("--domain", help="portal domain, e.g. example.bitrix24.com (new portals)")
    ap.add_argument("--client-endpoint", help="https://<portal>/rest/ (new portals)")
    ap.add_argument(
        "--server-endpoint", default="", help="OAuth server, e.g. https://oauth.bitrix.info/rest/"
    )
    ap.add_argument("--client-id", help="application client_id (local.xxx.yyy)")
    ap.add_argument("--scope", default="")
    ap.add_argument("--client-secret-env", metavar="VAR", help="env var holding client_secret (else prompt)")
    ap.add_argument(
        "--refresh-token-env", metavar="VAR", help="env var holding the refresh token (else prompt)"
    )
    ap.add_argument(
        "--access-token-env", metavar="VAR", help="env var holding a current access token (optional)"
    )
    ap.add_argument(
        "--access-expires-in", type=int, default=0, metavar="S", help="seconds the access token has left"
    )
    ap.add_argument(
        "--application-token-env", metavar="VAR", help="env var holding application_token (optional)"
    )
    ap.add_argument(
        "--keep-secrets",
        action="store_true",
        help="update an existing portal's non-secret fields; do not ask for client secret / refresh token",
    )
    ap.add_argument("--verify", action="store_true", help="refresh once now to prove the credentials work")


def add_channel_arguments(ac: argparse.ArgumentParser) -> None:
    ac.add_argument("--phone-number-id", required=True)
    ac.add_argument("--waba-id", default="")
    ac.add_argument("--access-token-env", metavar="VAR", help="env var holding the Graph API access token")
    ac.add_argument("--app-secret-env", metavar="VAR", help="env var holding the Meta app secret")
    ac.add_argument("--verify-token-env", metavar="VAR", help="env var holding the webhook verify token")
    ac.add_argument(
        "--prompt", action="store_true", help="prompt for every secret not given by an env var (empty keeps)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="token-keeper-admin", description="Zaptrix token-keeper operator CLI")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO (default WARNING)")
    sub = p.add_subparsers(dest="cmd", required=True)

    add_portal_arguments(
        sub.add_parser("add-portal", help="add or update a Bitrix24 portal (secrets from env vars or prompt)")
    )
    add_channel_arguments(
        sub.add_parser("add-channel", help="add or update a WhatsApp channel's credentials")
    )

    st = sub.add_parser("status", help="portals and channels: state, token ages, last error (no secrets)")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    rf = sub.add_parser("refresh", help="refresh one portal's token now (same lock as the servers)")
    rf.add_argument("--member-id", required=True)

    un = sub.add_parser("mark-uninstalled", help="mark a portal uninstalled (GetAccessToken then refuses it)")
    un.add_argument("--member-id", required=True)

    rk = sub.add_parser("rotate-keys", help="re-encrypt every row under the active key")
    rk.add_argument("--dry-run", action="store_true", help="only count rows not yet under the active key")

    sub.add_parser(
        "generate-key", help="print a new random AES-256 key (base64) for ZAPTRIX_TOKEN_KEEPER_KEYS"
    )
    return p


DEPRECATED = "token-keeper-admin is deprecated and goes away in the next release: use `zaptrix-admin portals|tokens|channels`"
# What the admin CLIs catch and print as `error: ...` (exit code 1).
ERRORS = (UsageError, KeyConfigError, SchemaMissing, DatabaseUnavailable, TokenKeeperError)


@contextlib.asynccontextmanager
async def open_service(name: str = "token-keeper-admin") -> AsyncIterator[TokenService]:
    """token-keeper's service on its database (ZAPTRIX_DATABASE_URL, ZAPTRIX_TOKEN_KEEPER_KEYS), as the
    server has it: same encryption, same row locks."""
    settings = TokenKeeperSettings()
    keyring = load_keyring(settings)
    db = database(DatabaseSettings(), name)
    await db.open_until_ready(within_s=5.0)
    oauth = BitrixOAuthClient(settings)
    try:
        yield TokenService(db, Repository(keyring), oauth, settings)
    finally:
        await oauth.aclose()
        await db.close()


async def _run(args: argparse.Namespace) -> int:
    async with open_service() as service:
        handler = {
            "add-portal": add_portal,
            "add-channel": add_channel,
            "status": status,
            "refresh": refresh,
            "mark-uninstalled": mark_uninstalled,
            "rotate-keys": rotate_keys,
        }[args.cmd]
        return await handler(args, service)


async def add_portal(args: argparse.Namespace, service: TokenService) -> int:
    required = not args.keep_secrets
    client_secret = read_secret(args.client_secret_env, "client secret", required=required)
    refresh_token = read_secret(args.refresh_token_env, "refresh token", required=required)
    access_token = read_secret(args.access_token_env, "access token", required=False)
    application_token = read_secret(args.application_token_env, "application token", required=False)
    expires_at = (
        utcnow() + timedelta(seconds=args.access_expires_in)
        if access_token and args.access_expires_in
        else None
    )
    row = await service.upsert_portal(
        PortalUpsert(
            member_id=args.member_id,
            domain=args.domain or "",
            client_endpoint=args.client_endpoint or "",
            server_endpoint=args.server_endpoint,
            client_id=args.client_id or "",
            client_secret=client_secret,
            refresh_token=refresh_token,
            access_token=access_token,
            access_expires_at=expires_at,
            application_token=application_token,
            scope=args.scope,
        )
    )
    say(f"portal {row.member_id} ({row.domain}) saved: state={row.state}, key_id={row.key_id}")
    if args.verify:
        tok = await service.force_refresh(row.member_id)
        say(f"refresh ok: new access token valid until {tok.expires_at.isoformat()}")
    return 0


async def add_channel(args: argparse.Namespace, service: TokenService) -> int:
    def secret(env: str | None, label: str) -> SecretStr | None:
        return read_secret(env, label, required=args.prompt and env is None) if (env or args.prompt) else None

    access_token = secret(args.access_token_env, "access token")
    app_secret = secret(args.app_secret_env, "app secret")
    verify_token = secret(args.verify_token_env, "verify token")
    row = await service.upsert_channel(
        ChannelUpsert(
            phone_number_id=args.phone_number_id,
            waba_id=args.waba_id,
            access_token=access_token,
            app_secret=app_secret,
            verify_token=verify_token,
        )
    )
    flags = ", ".join(
        f"{name}={'yes' if blob is not None else 'no'}"
        for name, blob in (
            ("access_token", row.access_token_enc),
            ("app_secret", row.app_secret_enc),
            ("verify_token", row.verify_token_enc),
        )
    )
    say(f"channel {row.phone_number_id} (waba {row.waba_id or '-'}) saved: {flags}, key_id={row.key_id}")
    return 0


async def status(args: argparse.Namespace, service: TokenService) -> int:
    now = utcnow()
    portals = await service.list_portals()
    async with service.db.connection() as conn:
        channels = await service.repo.list_channels(conn)
        usage = await service.repo.key_usage(conn)
    if args.json:
        out: dict[str, Any] = {
            "portals": [
                {
                    "member_id": p.member_id,
                    "domain": p.domain,
                    "client_endpoint": p.client_endpoint,
                    "state": p.state,
                    "access_expires_at": p.access_expires_at.isoformat(),
                    "refresh_obtained_at": p.refresh_obtained_at.isoformat(),
                    "refresh_token_age_days": round((now - p.refresh_obtained_at).total_seconds() / 86400, 2),
                    "last_refresh_at": p.last_refresh_at.isoformat() if p.last_refresh_at else None,
                    "refresh_count": p.refresh_count,
                    "last_error": p.last_error,
                    "key_id": p.key_id,
                }
                for p in portals
            ],
            "channels": [
                {
                    "phone_number_id": c.phone_number_id,
                    "waba_id": c.waba_id,
                    "has_access_token": c.access_token_enc is not None,
                    "has_app_secret": c.app_secret_enc is not None,
                    "has_verify_token": c.verify_token_enc is not None,
                    "key_id": c.key_id,
                    "updated_at": c.updated_at.isoformat(),
                }
                for c in channels
            ],
            "keys": {"active": service.repo.keyring.active_id, "rows_by_key_id": usage},
        }
        say(json.dumps(out, indent=2))
        return 0
    say(f"PORTALS ({len(portals)})")
    say(
        _table(
            [
                [
                    p.member_id,
                    p.domain,
                    p.state.upper(),
                    _expiry(p.access_expires_at, now),
                    _age(p.refresh_obtained_at, now),
                    _age(p.last_refresh_at, now) + (" ago" if p.last_refresh_at else ""),
                    str(p.refresh_count),
                    p.key_id,
                    p.last_error or "-",
                ]
                for p in portals
            ],
            [
                "MEMBER_ID",
                "DOMAIN",
                "STATE",
                "ACCESS",
                "REFRESH_AGE",
                "LAST_REFRESH",
                "N",
                "KEY",
                "LAST_ERROR",
            ],
        )
    )
    say(f"\nCHANNELS ({len(channels)})")
    say(
        _table(
            [
                [
                    c.phone_number_id,
                    c.waba_id or "-",
                    _yn(c.access_token_enc),
                    _yn(c.app_secret_enc),
                    _yn(c.verify_token_enc),
                    c.key_id,
                    _age(c.updated_at, now) + " ago",
                ]
                for c in channels
            ],
            ["PHONE_NUMBER_ID", "WABA_ID", "ACCESS_TOKEN", "APP_SECRET", "VERIFY_TOKEN", "KEY", "UPDATED"],
        )
    )
    stale = {k: n for k, n in usage.items() if k != service.repo.keyring.active_id}
    say(f"\nKEYS: active={service.repo.keyring.active_id}; rows by key id: {usage or '{}'}")
    if stale:
        say(
            f"      {sum(stale.values())} row(s) not under the active key: run `zaptrix-admin tokens rotate-keys`"
        )
    needs = [p.member_id for p in portals if p.state == "needs_reauth"]
    if needs:
        say(f"\n{len(needs)} portal(s) need re-authorisation: {', '.join(needs)} (see docs/token-keeper.md)")
    return 0


def _yn(blob: bytes | None) -> str:
    return "yes" if blob is not None else "no"


def _expiry(expires_at: datetime, now: datetime) -> str:
    left = (expires_at - now).total_seconds()
    if left <= 0:
        return "expired"
    return f"{left / 60:.0f}m left"


async def refresh(args: argparse.Namespace, service: TokenService) -> int:
    tok = await service.force_refresh(args.member_id)
    say(f"portal {args.member_id}: access token valid until {tok.expires_at.isoformat()}")
    return 0


async def mark_uninstalled(args: argparse.Namespace, service: TokenService) -> int:
    async with service.db.connection() as conn:
        row = await service.repo.set_portal_state(conn, args.member_id, STATE_UNINSTALLED, now=utcnow())
    if row is None:
        say(f"unknown portal {args.member_id}", err=True)
        return 1
    say(f"portal {args.member_id} marked uninstalled (a new install/add-portal re-activates it)")
    return 0


async def rotate_keys(args: argparse.Namespace, service: TokenService) -> int:
    repo = service.repo
    active = repo.keyring.active_id
    async with service.db.connection() as conn:
        portals, channels = await repo.rows_not_under(conn, active)
        if args.dry_run:
            say(f"{len(portals)} portal(s) and {len(channels)} channel(s) are not under key {active}")
            return 0
        done = 0
        for member_id in portals:
            done += await repo.rotate_portal(conn, member_id, now=datetime.now(UTC))
        for pid in channels:
            done += await repo.rotate_channel(conn, pid, now=datetime.now(UTC))
        usage = await repo.key_usage(conn)
    say(f"re-encrypted {done} row(s) under key {active}; rows by key id now: {usage}")
    left = {k: n for k, n in usage.items() if k != active}
    if left:
        say(f"still not under {active}: {left}", err=True)
        return 1
    say("no row depends on another key: old keys may now be removed from ZAPTRIX_TOKEN_KEEPER_KEYS")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    say(DEPRECATED, err=True)
    args = build_parser().parse_args(argv)
    if args.cmd == "generate-key":
        say(generate_key())
        return 0
    configure_logging("token-keeper-admin", "INFO" if args.verbose else "WARNING")
    try:
        return asyncio.run(_run(args))
    except ERRORS as exc:
        say(f"error: {exc}", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
