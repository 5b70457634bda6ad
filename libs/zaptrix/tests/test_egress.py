"""The egress guard (zaptrix.egress): address classification, host allowlists, pinning, redirects."""

from __future__ import annotations

import ipaddress
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from zaptrix.egress import (
    EgressPolicy,
    EgressRefused,
    GuardedTransport,
    HostAllowlist,
    InsecureUrlError,
    check_url,
    guarded_client,
    is_public,
    literal_address,
    open_stream,
    require_https,
    url_allowed,
)
from zaptrix.settings import CommonSettings

FORBIDDEN_NETWORKS = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",  # CGNAT
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local, cloud metadata
    "172.16.0.0/12",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved
    "::/128",
    "::1/128",
    "fc00::/7",  # ULA
    "fe80::/10",
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",
    "::ffff:127.0.0.0/104",  # IPv4-mapped loopback
    "::ffff:169.254.0.0/112",
    "::ffff:10.0.0.0/104",
    "64:ff9b::a9fe:0/112",  # NAT64 of 169.254/16
    "2002:7f00::/24",  # 6to4 of 127/8
    "2002:a9fe::/32",  # 6to4 of 169.254/16
]
OPEN = EgressPolicy()
SANDBOX = EgressPolicy.of(["127.0.0.1/32"], allow_http=True)
ANY = HostAllowlist(any_host=True)


def _samples(net: str, n: int = 40) -> Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    network = ipaddress.ip_network(net)
    rnd = random.Random(net)  # deterministic per network
    yield network.network_address
    yield network.broadcast_address
    for _ in range(n):
        yield network[rnd.randrange(network.num_addresses)]


@pytest.mark.parametrize("net", FORBIDDEN_NETWORKS)
def test_every_sampled_address_of_a_forbidden_network_is_refused(net: str) -> None:
    for addr in _samples(net):
        assert not is_public(addr), addr


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "104.16.0.1", "2606:4700::1111", "2a00:1450::1"])
def test_public_addresses_pass(addr: str) -> None:
    assert is_public(ipaddress.ip_address(addr))


async def _resolve_nothing(host: str, port: int) -> list[str]:
    raise AssertionError(f"an IP literal was sent to DNS: {host}")


@pytest.mark.parametrize(
    "url",
    [
        "https://2130706433/",  # 127.0.0.1 as one number
        "https://127.1/",
        "https://0x7f.1/",
        "https://0177.0.0.1/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::1]/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00::1]/",
        "https://100.64.1.1/",
        "https://localhost/",
    ],
)
async def test_odd_spellings_of_internal_addresses_are_refused(url: str) -> None:
    # The system resolver (glibc) reads the numeric forms the way curl or a browser would.
    with pytest.raises(EgressRefused) as caught:
        await check_url(url, ANY, OPEN)
    # httpx itself refuses some spellings (e.g. octal with a leading zero): malformed is a refusal too.
    assert caught.value.reason in ("address", "malformed")


async def test_name_resolving_to_a_private_address_is_refused() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return {"portal.example.com": ["93.184.216.34", "10.1.2.3"]}[host]

    with pytest.raises(EgressRefused) as caught:
        await check_url("https://portal.example.com/rest/", ANY, OPEN, resolver)
    assert caught.value.reason == "address"


async def test_public_name_is_pinned_to_its_checked_addresses() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    pinned = await check_url(
        "https://Portal.Bitrix24.com./rest/", HostAllowlist.of([], ["bitrix24.com"]), OPEN, resolver
    )
    assert (pinned.host, pinned.port, pinned.addresses) == ("portal.bitrix24.com", 443, ("93.184.216.34",))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://portal.bitrix24.com/", "scheme"),
        ("ftp://portal.bitrix24.com/", "scheme"),
        ("https://evil.example/", "host"),
        ("https://bitrix24.com.evil.example/", "host"),
        ("https://evilbitrix24.com/", "host"),
        ("https://portal.bitrix24.com:8443/", "port"),
        ("https://example.com:abc/", "malformed"),
        ("https://[::1/", "malformed"),
        ("/relative/only", "malformed"),
    ],
)
async def test_scheme_host_port_and_syntax(url: str, reason: str) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    with pytest.raises(EgressRefused) as caught:
        await check_url(url, HostAllowlist.of([], ["bitrix24.com"]), OPEN, resolver)
    assert caught.value.reason == reason


async def test_allowed_networks_let_the_sandbox_through_and_nothing_else() -> None:
    await check_url("http://127.0.0.1:8091/rest/", ANY, SANDBOX)
    for url in ("http://127.0.0.2:8091/", "http://[::1]:8091/", "https://10.0.0.1/"):
        with pytest.raises(EgressRefused):
            await check_url(url, ANY, SANDBOX)


# --- through a real socket -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A local server: /ok answers, /to?u=<url> redirects there, /chain/<n> redirects n more times."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/to?u="):
                self.send_response(302)
                self.send_header("Location", self.path[len("/to?u=") :])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path.startswith("/chain/"):
                n = int(self.path.rsplit("/", 1)[1])
                self.send_response(302)
                self.send_header("Location", f"/chain/{n + 1}" if n < 10 else "/ok")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = f"ok {self.headers.get('Host')}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


async def test_connection_goes_to_the_checked_address_and_keeps_the_host_name(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    asked: list[str] = []

    async def resolver(host: str, p: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    transport = GuardedTransport(SANDBOX, HostAllowlist.of(["files.portal.test"]), "file", resolver=resolver)
    async with guarded_client(transport) as client:
        # files.portal.test exists nowhere: only the pinned address can make this work.
        resp = await client.get(f"http://files.portal.test:{port}/ok")
    assert resp.text == f"ok files.portal.test:{port}"
    assert asked == ["files.portal.test"]


async def test_redirect_to_an_internal_address_is_not_followed(server: str) -> None:
    transport = GuardedTransport(SANDBOX, ANY, "file")
    async with guarded_client(transport) as client:
        for target in ("http://127.0.0.2/", "http://169.254.169.254/latest/meta-data/"):
            with pytest.raises(EgressRefused) as caught:
                async with open_stream(client, f"{server}/to?u={target}"):
                    pass
            assert caught.value.reason == "address"
        async with open_stream(client, f"{server}/to?u=/ok") as resp:
            assert (await resp.aread()).startswith(b"ok")


async def test_redirect_chains_end_after_three_hops(server: str) -> None:
    async with guarded_client(GuardedTransport(SANDBOX, ANY, "file")) as client:
        async with open_stream(client, f"{server}/chain/8") as resp:  # 8 -> 9 -> 10 -> ok
            assert resp.status_code == 200
        with pytest.raises(EgressRefused) as caught:
            async with open_stream(client, f"{server}/chain/7"):
                pass
    assert caught.value.reason == "redirects"


async def test_a_client_without_a_check_cannot_connect() -> None:
    # The pinned backend refuses a host nobody checked (fail closed), e.g. a proxied or direct pool use.
    transport = GuardedTransport(SANDBOX, ANY, "file")
    request = httpx.Request("GET", "http://127.0.0.1:9/")
    with pytest.raises(httpx.ConnectError):
        await transport._inner.handle_async_request(request)
    await transport.aclose()


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("portal.bitrix24.com", None),
        ("1.2.3.4.5", None),
    ],
)
def test_literal_address_reads_what_the_c_library_reads(host: str, expected: str | None) -> None:
    addr = literal_address(host)
    assert (str(addr) if addr is not None else None) == expected


@pytest.mark.parametrize(
    ("url", "allow_insecure_http", "environment", "ok"),
    [
        ("https://graph.facebook.com/v24.0", False, "production", True),
        ("http://127.0.0.1:18080", True, "dev", True),
        ("http://127.0.0.1:18080", False, "dev", False),
        ("http://127.0.0.1:18080", True, "production", False),  # never plain http in production
        ("ftp://example.com/", True, "dev", False),
        ("//example.com/", True, "dev", False),
        ("https:///path", False, "dev", False),  # no host
    ],
)
def test_one_https_rule_for_every_url(
    url: str, allow_insecure_http: bool, environment: str, ok: bool
) -> None:
    knobs = SimpleNamespace(allow_insecure_http=allow_insecure_http, environment=environment)
    assert url_allowed(url, knobs) is ok
    if ok:
        assert require_https(url, knobs, what="X") == url
    else:
        with pytest.raises(InsecureUrlError, match=r"^X "):
            require_https(url, knobs, what="X")


def test_the_egress_policy_follows_the_same_https_rule() -> None:
    assert CommonSettings(allow_insecure_http=True, environment="dev").egress_policy().allow_http
    assert not CommonSettings(allow_insecure_http=True, environment="production").egress_policy().allow_http
    assert not CommonSettings(allow_insecure_http=False, environment="dev").egress_policy().allow_http
