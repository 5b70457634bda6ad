"""`make run`: the whole system locally. Ctrl-C, SIGTERM or closing the terminal stops everything it started.

With no real credentials configured it starts the sandbox stand-ins for the Graph API and Bitrix24 and
seeds one portal and one WhatsApp channel, so that `zaptrix-dev customer-says …` works at once.
Real mode: set ZAPTRIX_GRAPH_API_BASE_URL and ZAPTRIX_BITRIX_OAUTH_URL (and the other settings of
docs/configuration.md) before `make run`; then add portals and channels with the admin CLIs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from localsystem import ROOT, LocalSystem, Ports, say, serve_until_signalled
from zaptrix_testing.seeding import SANDBOX_MEMBER_ID


def _stack(action: str) -> None:
    script = ROOT / "dev" / "stack" / ("up.sh" if action == "up" else "down.sh")
    args = [str(script), "--with-jaeger"] if action == "up" else [str(script)]
    subprocess.run(args, check=True)


async def main(pg_url: str) -> None:
    sandbox = not (os.environ.get("ZAPTRIX_GRAPH_API_BASE_URL") or os.environ.get("ZAPTRIX_BITRIX_OAUTH_URL"))
    ports = Ports()
    state = Path(os.environ.get("ZAPTRIX_STATE", ROOT / ".local" / "run"))
    system = LocalSystem(ports=ports, state_dir=state, database_url=pg_url, sandbox=sandbox, echo=True)

    async def up() -> None:
        await system.start()
        if sandbox:
            await system.seed()
        banner = [
            "",
            "Zaptrix is running.",
            f"  meta-ingress      http://127.0.0.1:{ports.meta_web}   (POST/GET /webhooks/meta, /media, /health, /ready, /metrics)",
            f"  bitrix-ingress    http://127.0.0.1:{ports.bitrix_web}   (/webhooks/bitrix24/outbound|install|settings)",
            f"  mapper            grpc 127.0.0.1:{ports.mapper}  metrics :{ports.mapper_metrics}",
            f"  token-keeper      grpc 127.0.0.1:{ports.token_keeper}  metrics :{ports.token_keeper_metrics}",
            f"  gRPC is mutual TLS: operator certificate admin.zaptrix.pem/.key, CA ca.pem in {state / 'grpc-tls'}",
            f"  dispatchers       metrics/health :{ports.meta_dispatcher} (meta), :{ports.bitrix_dispatcher} (bitrix)",
            f"  PostgreSQL        {ports.pg}    Kafka 127.0.0.1:{ports.kafka}",
            "  Jaeger            http://127.0.0.1:16686/api/traces (OTLP :4317)  — `zaptrix-dev trace <wamid>`",
        ]
        if sandbox:
            banner += [
                f"  sandbox Graph API http://127.0.0.1:{ports.graph}   sandbox Bitrix24 http://127.0.0.1:{ports.bitrix}"
                f" (portal {SANDBOX_MEMBER_ID})",
                "",
                "Try it (in another terminal, from this folder):",
                '  .venv/bin/zaptrix-dev customer-says --from 491701234567 --name "Anna Schmidt" "Hallo!"',
                "  .venv/bin/zaptrix-dev chats",
                '  .venv/bin/zaptrix-dev operator-says --chat <chat id from `chats`> "[b]Guten Tag[/b], wie kann ich helfen?"',
                "  .venv/bin/zaptrix-dev customer-inbox --to 491701234567",
                "  .venv/bin/zaptrix-dev trace <wamid from customer-says>",
            ]
        banner += ["", "Ctrl-C stops everything (a second Ctrl-C kills it).", ""]
        say("\n".join(banner) + "\n")

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
