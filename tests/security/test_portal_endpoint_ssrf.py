"""SSRF through a portal's REST endpoint (review finding M2): bitrix-ingress POSTs to whatever
client_endpoint an install or token-keeper names. The REST client both processes build
(bitrix_ingress.bitrix_rest.egress.portal_rest) must refuse internal addresses however they are spelled,
names that resolve inside, and ports other than 443, before any connection is made.

The "internal service" is a local HTTP server on 127.0.0.1; production settings (no allowed networks).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from bitrix_ingress.bitrix_rest.client import BitrixError, PermanentBitrixError
from bitrix_ingress.bitrix_rest.egress import portal_rest
from bitrix_ingress.settings import InsecureUrlError, WebSettings, check_portal_endpoint


class Internal:
    def __init__(self) -> None:
        self.hits: list[str] = []
        internal = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                internal.hits.append(self.path)
                body = b'{"result": {"secret": "internal"}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def internal() -> Iterator[Internal]:
    server = Internal()
    yield server
    server.httpd.shutdown()


def _settings(**kw: Any) -> WebSettings:
    # Sandbox-style plain http is allowed here so that only the address decides (not the scheme).
    return WebSettings(environment="test", allow_insecure_http=True, egress_allow_networks=[], **kw)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "host", ["2130706433", "127.1", "0x7f.1", "127.0.0.1", "[::ffff:127.0.0.1]", "localhost"]
)
async def test_internal_endpoint_spellings_are_never_called(internal: Internal, host: str) -> None:
    rest = portal_rest(_settings(), timeout_s=5)
    before = len(internal.hits)
    try:
        with pytest.raises(BitrixError) as caught:
            await rest.call(f"http://{host}:{internal.port}/rest/", "token", "app.info", {})
    finally:
        await rest.aclose()
    assert internal.hits[before:] == []
    assert isinstance(caught.value, PermanentBitrixError) and caught.value.code == "ENDPOINT_REFUSED"


async def test_portal_name_resolving_to_a_private_address_is_refused() -> None:
    # An allowed portal suffix whose name also points inside (internal DNS, *.nip.io and the like).
    async def resolver(host: str, port: int) -> list[str]:
        return {"inside.bitrix24.com": ["93.184.216.34", "10.0.0.1"]}[host]

    rest = portal_rest(
        _settings(bitrix_portal_host_suffixes=["bitrix24.com"]), timeout_s=5, resolver=resolver
    )
    try:
        with pytest.raises(PermanentBitrixError) as caught:
            await rest.call("https://inside.bitrix24.com/rest/", "token", "app.info", {})
    finally:
        await rest.aclose()
    assert caught.value.code == "ENDPOINT_REFUSED"


@pytest.mark.parametrize(
    ("endpoint", "suffixes"),
    [
        ("https://2130706433/rest/", []),  # no suffix list: any public host name, but not these
        ("https://127.1/rest/", []),
        ("https://0x7f.1/rest/", []),
        ("https://[::ffff:169.254.169.254]/rest/", []),
        ("https://portal.bitrix24.com:8443/rest/", ["bitrix24.com"]),
        ("https://portal.bitrix24.com.evil.example/rest/", ["bitrix24.com"]),
    ],
)
def test_install_endpoint_check_refuses_internal_and_foreign_endpoints(
    endpoint: str, suffixes: list[str]
) -> None:
    settings = WebSettings(
        environment="production", bitrix_portal_host_suffixes=suffixes, settings_session_secret="s" * 32
    )  # type: ignore[call-arg]
    with pytest.raises(InsecureUrlError):
        check_portal_endpoint(endpoint, settings)
