"""`make run`: the whole system locally. Ctrl-C, SIGTERM or closing the terminal stops everything it started.

With no real credentials configured it starts the sandbox stand-ins for the Graph API and Bitrix24 and
seeds one portal and one WhatsApp channel, so that `zaptrix-dev customer-says …` works at once.
Real mode: set ZAPTRIX_GRAPH_API_BASE_URL and ZAPTRIX_BITRIX_OAUTH_URL (and the other settings of
docs/configuration.md) before `make run`; then add portals and channels with `zaptrix-admin` (the banner says how).
Every port moves with an environment variable (localsystem.PORT_VARIABLES, docs/local-stack.md).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from localsystem import ROOT, LocalSystem, Ports, say, serve_until_signalled
from zaptrix_testing.seeding import SANDBOX_MEMBER_ID


def _stack(action: str) -> None:
    script = ROOT / "dev" / "stack" / ("up.sh" if action == "up" else "down.sh")
    args = [str(script), "--with-jaeger"] if action == "up" else [str(script)]
    subprocess.run(args, check=True)


def build_system(env: Mapping[str, str], pg_url: str) -> LocalSystem:
    """The system `make run` starts: sandbox unless real credentials are configured, ports from the
    environment (PORT_VARIABLES: KAFKA_PORT, PG_PORT, MAPPER_PORT, ...), state in ZAPTRIX_STATE."""
    sandbox = not (env.get("ZAPTRIX_GRAPH_API_BASE_URL") or env.get("ZAPTRIX_BITRIX_OAUTH_URL"))
    state = Path(env.get("ZAPTRIX_STATE") or ROOT / ".local" / "run")
    return LocalSystem(
        ports=Ports.from_env(env), state_dir=state, database_url=pg_url, sandbox=sandbox, echo=True
    )


def banner(system: LocalSystem, env: Mapping[str, str]) -> str:
    ports, state = system.ports, system.state_dir
    jaeger_ui = env.get("JAEGER_UI_PORT") or "16686"
    lines = [
        "",
        "Zaptrix is running.",
        f"  meta-ingress      http://127.0.0.1:{ports.meta_web}   (POST/GET /webhooks/meta, /media, /health, /ready, /metrics)",
        f"  bitrix-ingress    http://127.0.0.1:{ports.bitrix_web}   (/webhooks/bitrix24/outbound|install|settings)",
        f"  mapper            grpc 127.0.0.1:{ports.mapper}  metrics :{ports.mapper_metrics}",
        f"  token-keeper      grpc 127.0.0.1:{ports.token_keeper}  metrics :{ports.token_keeper_metrics}",
        f"  gRPC is mutual TLS (reflection on): operator certificate admin.zaptrix.pem/.key, CA ca.pem in {state / 'grpc-tls'}",
        f"  dispatchers       metrics/health :{ports.meta_dispatcher} (meta), :{ports.bitrix_dispatcher} (bitrix)",
        f"  PostgreSQL        {ports.pg}    Kafka 127.0.0.1:{ports.kafka}",
        f"  Jaeger            http://127.0.0.1:{jaeger_ui}/api/traces (OTLP :{ports.otlp})  — `zaptrix-dev trace <wamid>`",
        "",
        "Admin CLI against this system (in another terminal, from this folder):",
        f"  set -a; . {state / 'admin.env'}; set +a",
        "  .venv/bin/zaptrix-admin channels list      (also: portals, tokens, dead-letters; --help)",
    ]
    if system.sandbox:
        # zaptrix-dev finds the stand-ins on their default ports; moved ones it is told about.
        moved = (ports.graph, ports.bitrix) != (Ports().graph, Ports().bitrix)
        dev = [
            f"  export ZAPTRIX_DEV_GRAPH_URL=http://127.0.0.1:{ports.graph} "
            f"ZAPTRIX_DEV_BITRIX_URL=http://127.0.0.1:{ports.bitrix}"
        ]
        lines += [
            "",
            f"  sandbox Graph API http://127.0.0.1:{ports.graph}   sandbox Bitrix24 http://127.0.0.1:{ports.bitrix}"
            f" (portal {SANDBOX_MEMBER_ID})",
            "  The WhatsApp connector's settings page, as a portal admin sees it in Contact Center (open in a browser):",
            f"    http://127.0.0.1:{ports.bitrix}/_sandbox/portals/{SANDBOX_MEMBER_ID}/connector-settings",
            "",
            "Try it (in another terminal, from this folder):",
            *(dev if moved else []),
            '  .venv/bin/zaptrix-dev customer-says --from 491701234567 --name "Anna Schmidt" "Hallo!"',
            "  .venv/bin/zaptrix-dev chats",
            '  .venv/bin/zaptrix-dev operator-says --chat <chat number or external id from `chats`> "[b]Guten Tag[/b], wie kann ich helfen?"',
            "  .venv/bin/zaptrix-dev customer-inbox --to 491701234567",
            "  .venv/bin/zaptrix-dev trace <wamid from customer-says>",
        ]
    lines += ["", "Ctrl-C stops everything (a second Ctrl-C kills it).", ""]
    return "\n".join(lines)


async def main(pg_url: str) -> None:
    system = build_system(os.environ, pg_url)

    async def up() -> None:
        say("starting the services (migrations, then each process until it is ready; under a minute)...\n")
        await system.start()
        if system.sandbox:
            await system.seed()
        system.write_admin_env()
        say(banner(system, os.environ) + "\n")

    # Ctrl-C, SIGTERM and a closed terminal (SIGHUP) stop every process started, even during start-up.
    await serve_until_signalled(system, up)


if __name__ == "__main__":
    _stack("up")
    try:
        url = subprocess.run(
            [str(ROOT / "dev" / "stack" / "postgres.sh"), "url"], check=True, capture_output=True, text=True
        ).stdout.strip()
        asyncio.run(main(url))
    finally:
        _stack("down")
