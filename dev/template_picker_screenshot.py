"""Render the template picker against the sandbox and take its screenshot in headless Chromium.

    uv run python dev/template_picker_screenshot.py docs/template-picker.png

What runs (nothing else is needed, no PostgreSQL or Kafka): the Graph API and Bitrix24 stand-ins
(sandbox-graph, sandbox-bitrix), the kit's gRPC fakes of mapper and token-keeper, bitrix-ingress-web.
The sandbox Graph's default templates are synced into the fake mapper by meta-ingress's own catalogue sync;
the app is installed on the sandbox portal (which binds the IM_TEXTAREA placement); then Chromium opens the
placement as Bitrix24 does: the sandbox's /_sandbox/placements/open posts the operator's tokens and the
chat's dialogId into the handler, and the picker renders. Chromium: /usr/bin/chromium (Debian), or $CHROMIUM.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlencode

import httpx
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import MetaSettings
from meta_ingress.template_catalogue import sync_channel
from zaptrix.clients import Clients
from zaptrix.settings import GrpcClientSettings
from zaptrix_testing.browser import FLAGS
from zaptrix_testing.fakes import FakeMapper, FakeTokenKeeper, Portal
from zaptrix_testing.fakes.serve import start_fakes_in_thread
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import Proc, console_script, start_process, wait_http

MEMBER, PNID, WABA, CHAT = "sandbox-member-1", "100000000000001", "200000000000001", "1801"
CHROMIUM_FLAGS = [  # the browser tests' flags (no network, no first-run work), then the shot's own
    *FLAGS,
    "--hide-scrollbars",
    "--virtual-time-budget=8000",  # the opener's form POST and the picker's answer, then the shot
]


async def render(out: Path, logs: Path) -> None:
    graph_port, bitrix_port, web_port = free_port(), free_port(), free_port()
    graph_url, bitrix_url, web_url = (f"http://127.0.0.1:{p}" for p in (graph_port, bitrix_port, web_port))
    procs: list[Proc] = [
        start_process(
            [console_script("sandbox-graph")], {"SANDBOX_GRAPH_PORT": str(graph_port)}, logs / "graph.log"
        ),
        start_process(
            [console_script("sandbox-bitrix")], {"SANDBOX_BITRIX_PORT": str(bitrix_port)}, logs / "bitrix.log"
        ),
    ]
    fakes = None
    try:
        for url, proc in ((graph_url, procs[0]), (bitrix_url, procs[1])):
            await wait_http(f"{url}/_sandbox/health", proc, ok=lambda s: s == 200)
        async with httpx.AsyncClient(timeout=15) as http:
            portal = (await http.get(f"{bitrix_url}/_sandbox/portals/{MEMBER}")).json()
            tk = FakeTokenKeeper(bitrix_url, "local.sandbox.app", "sandbox-client-secret")
            tk.add(
                Portal(
                    MEMBER,
                    "sandbox-app-token",
                    access_token=portal["access_token"],
                    refresh_token=portal["refresh_token"],
                    client_endpoint=portal["client_endpoint"],
                    domain=portal["domain"],
                )
            )
            mapper = FakeMapper()
            mapper.bind(PNID, MEMBER, 1, display_phone_number="+1 555 000 0001")
            mapper.add_conversation(PNID, "4915100000001", "Ana Lima", bitrix_chat_id=CHAT)
            fakes = start_fakes_in_thread(mapper, tk)
            clients = Clients(GrpcClientSettings(mapper_addr=fakes.addr, token_keeper_addr=fakes.addr))
            graph = GraphClient(MetaSettings(graph_api_base_url=graph_url, allow_insecure_http=True))
            try:
                synced = await sync_channel(clients.mapper, graph, PNID, WABA, "sandbox-wa-token", 5.0)
            finally:
                await graph.aclose()
                await clients.close()
            print(f"templates synced from the Graph stand-in: {synced.stored}")
            web = start_process(
                [console_script("bitrix-ingress-web")],
                {
                    **fakes.env(),
                    "ZAPTRIX_WEB_PORT": str(web_port),
                    "ZAPTRIX_PUBLIC_BASE_URL": web_url,
                    "ZAPTRIX_ALLOW_INSECURE_HTTP": "true",
                    "ZAPTRIX_EGRESS_ALLOW_NETWORKS": '["127.0.0.1/32"]',
                    "ZAPTRIX_ENVIRONMENT": "test",
                    "ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # not needed to render the page
                    "ZAPTRIX_BITRIX_CLIENT_ID": "local.sandbox.app",
                    "ZAPTRIX_BITRIX_CLIENT_SECRET": "sandbox-client-secret",
                    "ZAPTRIX_BITRIX_OAUTH_SERVER_ENDPOINT": f"{bitrix_url}/oauth/rest/",
                    "ZAPTRIX_BITRIX_OAUTH_URL": f"{bitrix_url}/oauth/token/",
                },
                logs / "web.log",
            )
            procs.append(web)
            await wait_http(f"{web_url}/health", web, ok=lambda s: s == 200)
            await http.post(
                f"{bitrix_url}/_sandbox/config", json={"install_url": f"{web_url}/webhooks/bitrix24/install"}
            )
            install = (await http.post(f"{bitrix_url}/_sandbox/portals/{MEMBER}/install", json={})).json()
            if install.get("gateway_status") != 200:
                raise SystemExit(f"install failed: {install}\n{web.log()[-2000:]}")
        query = urlencode(
            {"member_id": MEMBER, "placement": "IM_TEXTAREA", "dialog": f"chat{CHAT}", "user_id": 1}
        )
        chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
        with tempfile.TemporaryDirectory(prefix="zaptrix-chromium-") as profile:
            cmd = [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={out}",
                "--window-size=560,1800",
                f"{bitrix_url}/_sandbox/placements/open?{query}",
            ]
            await asyncio.to_thread(subprocess.run, cmd, check=True, timeout=120, capture_output=True)
        print(f"screenshot: {out}")
    finally:
        for proc in procs:
            proc.stop()
        if fakes is not None:
            fakes.stop()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/template-picker.png").resolve()
    with tempfile.TemporaryDirectory(prefix="zaptrix-picker-") as logs:
        asyncio.run(render(out, Path(logs)))


if __name__ == "__main__":
    main()
