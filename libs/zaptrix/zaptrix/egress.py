"""The one guard for outgoing HTTP to addresses that tenants name (portal REST endpoints, operator file
links): the SSRF defence of docs/security.md ("anything a portal or Meta answers" is trusted for nothing beyond
its type).

Every request that goes through :class:`GuardedTransport` is checked before a socket is opened:

1. the scheme is https (plain http only where the sandbox is allowed: ``EgressPolicy.allow_http``);
2. the host is allowed for the tenant (:class:`HostAllowlist`: exact host names and host suffixes);
3. the name is resolved (``getaddrinfo``) and every address must be public: loopback, private (RFC 1918,
   ULA), link-local (169.254/16, fe80::/10, where cloud metadata lives), CGNAT (100.64/10), multicast,
   unspecified, reserved and the IPv4 forms hidden in IPv6 (mapped, 6to4, Teredo, NAT64) are refused,
   unless the address is inside ``EgressPolicy.allow_networks`` (the sandbox on 127.0.0.1 in local runs
   and tests; empty in production);
4. only the scheme's default port, except towards an explicitly allowed network;
5. the connection goes to the address that was checked (:class:`_PinnedBackend`): no second DNS lookup
   can swap in another address (DNS rebinding). TLS still verifies the certificate for the host *name*
   (httpcore passes the URL's host as SNI, whatever address the socket connects to).

The same module holds the https rule for every URL a service uses (configured endpoints, Graph media
URLs, endpoints in Bitrix24 answers): :func:`require_https` (plain http only with
ZAPTRIX_ALLOW_INSECURE_HTTP=true outside production, :func:`insecure_http_allowed`), and
:func:`check_url_now`, steps 1-4 without DNS, for a tenant-named URL checked when it arrives.

Redirects are never followed by httpx; :func:`open_stream` follows at most ``max_redirects`` hops itself,
and every hop is a new request through the same checks.

A refusal is :class:`EgressRefused` (deliberately not an ``httpx.HTTPError``: callers must not mistake it
for a transient network failure and retry). Its ``reason`` is a short fixed label (metrics, notices); the
details (host, address) are for logs only, never for an unauthenticated caller.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpcore
import httpx
from prometheus_client import Counter

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

# request.extensions key: the HostAllowlist of this one request (e.g. the conversation's portal).
ALLOW_EXTENSION = "zaptrix.egress_allow"
DEFAULT_PORTS = {"https": 443, "http": 80}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

EGRESS_REFUSED = Counter(
    "zaptrix_egress_refused_total",
    "Outgoing requests refused by the egress guard, by purpose (portal_rest, file) and reason "
    "(malformed, scheme, host, port, address, resolve, redirects)",
    ["purpose", "reason"],
)


class EgressRefused(Exception):
    """The guard refused a URL. ``reason`` is a fixed label; ``str()`` has the details (for logs)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"egress refused ({reason}): {detail}")
        self.reason = reason


class InsecureUrlError(ValueError):
    """A URL that may not be used: not absolute, or plain http where https is required."""


class HttpKnobs(Protocol):
    """The two settings the https rule reads (zaptrix.settings.CommonSettings has both)."""

    @property
    def allow_insecure_http(self) -> bool: ...

    @property
    def environment(self) -> str: ...


def insecure_http_allowed(settings: HttpKnobs) -> bool:
    """Plain http is for the local sandbox: only when asked for, and never in production."""
    return settings.allow_insecure_http and settings.environment != "production"


def require_https(url: str, settings: HttpKnobs, *, what: str) -> str:
    """``url`` if it is absolute and https (or http where :func:`insecure_http_allowed`), else
    InsecureUrlError naming ``what``."""
    parts = urlsplit(url)
    if not parts.netloc or not parts.hostname:
        raise InsecureUrlError(f"{what} is not an absolute URL")
    if parts.scheme == "https" or (parts.scheme == "http" and insecure_http_allowed(settings)):
        return url
    raise InsecureUrlError(
        f"{what} must use https (plain http only with ZAPTRIX_ALLOW_INSECURE_HTTP=true outside production)"
    )


def url_allowed(url: str, settings: HttpKnobs) -> bool:
    try:
        require_https(url, settings, what="url")
    except InsecureUrlError:
        return False
    return True


@dataclass(frozen=True)
class HostAllowlist:
    """Which host names a tenant's URLs may name: exact ``hosts`` or a ``suffixes`` entry (the entry
    itself or any name below it). ``any_host`` lets every name pass this step (the address checks still
    apply)."""

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    any_host: bool = False

    @classmethod
    def of(
        cls, hosts: Iterable[str] = (), suffixes: Iterable[str] = (), *, any_host: bool = False
    ) -> HostAllowlist:
        return cls(
            frozenset(h for h in (_norm_host(x) for x in hosts) if h),
            tuple(s for s in (_norm_host(x).lstrip(".") for x in suffixes) if s),
            any_host,
        )

    def allows(self, host: str) -> bool:
        host = _norm_host(host)
        if not host:
            return False
        if self.any_host or host in self.hosts:
            return True
        return any(host == s or host.endswith("." + s) for s in self.suffixes)


@dataclass(frozen=True)
class EgressPolicy:
    """Process-wide: networks let through although not public (sandbox only) and whether plain http
    is allowed (sandbox only)."""

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_http: bool = False

    @classmethod
    def of(cls, networks: Iterable[str] = (), *, allow_http: bool = False) -> EgressPolicy:
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks), allow_http)

    def explicitly_allowed(self, addr: IPAddress) -> bool:
        return any(addr.version == n.version and addr in n for n in self.allow_networks)


def _norm_host(host: str) -> str:
    return host.strip().lower().rstrip(".").strip("[]")


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """An IPv4 address carried inside an IPv6 one (mapped, 6to4, Teredo client, NAT64 well-known)."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def is_public(addr: IPAddress) -> bool:
    """True only for a globally routable unicast address (and any IPv4 hidden inside one)."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_v4(addr)
        if inner is not None and not is_public(inner):
            return False
        if addr.is_site_local:
            return False
    return bool(
        addr.is_global
        and not addr.is_multicast
        and not addr.is_reserved
        and not addr.is_loopback
        and not addr.is_link_local
        and not addr.is_private
        and not addr.is_unspecified
    )


def address_allowed(addr: IPAddress, policy: EgressPolicy) -> bool:
    return policy.explicitly_allowed(addr) or is_public(addr)


def literal_address(host: str) -> IPAddress | None:
    """The address a host names without DNS: an IP literal, or one of the numeric IPv4 spellings the C
    library accepts (`2130706433`, `127.1`, `0x7f.1`, `0177.0.0.1`), read by the C library itself."""
    host = _norm_host(host)
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


async def system_resolver(host: str, port: int) -> list[str]:
    """All addresses of ``host`` (glibc's getaddrinfo: it also reads `2130706433`, `127.1`, `0x7f.1`)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Pinned:
    """A checked URL: its host, port and the addresses the connection may use (in order)."""

    host: str
    port: int
    addresses: tuple[str, ...]


def parse_url(url: str | httpx.URL) -> httpx.URL:
    """An absolute URL or EgressRefused("malformed") (never httpx.InvalidURL)."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise EgressRefused("malformed", type(exc).__name__) from None
    if not parsed.raw_host or not parsed.scheme:
        raise EgressRefused("malformed", "not an absolute URL")
    return parsed


def _scheme_and_host(
    url: str | httpx.URL, allow: HostAllowlist, policy: EgressPolicy
) -> tuple[str, str, int]:
    """Steps 1 and 2: (scheme, host, port)."""
    parsed = parse_url(url)
    scheme = parsed.scheme
    if scheme != "https" and not (scheme == "http" and policy.allow_http):
        raise EgressRefused("scheme", f"scheme {scheme!r} is not allowed")
    # The ASCII (IDNA) form: what DNS resolves and what httpcore's connection is keyed by.
    host = _norm_host(parsed.raw_host.decode("ascii"))
    if not allow.allows(host):
        raise EgressRefused("host", f"host {host!r} is not allowed for this tenant")
    return scheme, host, parsed.port or DEFAULT_PORTS[scheme]


def _pin(host: str, port: int, scheme: str, addresses: list[IPAddress], policy: EgressPolicy) -> Pinned:
    """Steps 3 and 4 on the addresses ``host`` stands for."""
    bad = [a for a in addresses if not address_allowed(a, policy)]
    if bad:  # one bad address is enough: a name that also points inside is not a public host
        raise EgressRefused("address", f"{host!r} resolves to a non-public address {bad[0]}")
    if port != DEFAULT_PORTS[scheme] and not all(policy.explicitly_allowed(a) for a in addresses):
        raise EgressRefused("port", f"port {port} is not allowed (only {DEFAULT_PORTS[scheme]})")
    return Pinned(host, port, tuple(str(a) for a in addresses))


def check_url_now(url: str | httpx.URL, allow: HostAllowlist, policy: EgressPolicy) -> Pinned:
    """Steps 1-4 without DNS, for a URL checked when it arrives or fetched by someone else: a literal
    address is checked as an address, a name only against ``allow`` and the default port (no addresses
    pinned)."""
    scheme, host, port = _scheme_and_host(url, allow, policy)
    literal = literal_address(host)
    if literal is not None:
        return _pin(host, port, scheme, [literal], policy)
    if port != DEFAULT_PORTS[scheme]:
        raise EgressRefused("port", f"port {port} is not allowed (only {DEFAULT_PORTS[scheme]})")
    return Pinned(host, port, ())


async def check_url(
    url: str | httpx.URL,
    allow: HostAllowlist,
    policy: EgressPolicy,
    resolver: Resolver | None = system_resolver,
) -> Pinned:
    """Run steps 1-4 of the module docstring; returns what the connection is pinned to. Without a
    ``resolver`` this is :func:`check_url_now`."""
    if resolver is None:
        return check_url_now(url, allow, policy)
    scheme, host, port = _scheme_and_host(url, allow, policy)
    literal = literal_address(host)
    if literal is not None:
        return _pin(host, port, scheme, [literal], policy)
    try:
        texts = await resolver(host, port)
    except (OSError, UnicodeError) as exc:
        # Not a refusal: the name may resolve later. The caller treats it as a connect error.
        raise httpx.ConnectError(f"cannot resolve {host!r}: {type(exc).__name__}") from None
    if not texts:
        raise httpx.ConnectError(f"cannot resolve {host!r}: no address")
    addresses = [ipaddress.ip_address(t.split("%", 1)[0]) for t in texts]
    return _pin(host, port, scheme, addresses, policy)


# host name -> addresses the current request may connect to (set by GuardedTransport for one request;
# httpcore opens the connection in the task that sends the request, so the context reaches the backend).
_PINNED: contextvars.ContextVar[Mapping[str, tuple[str, ...]] | None] = contextvars.ContextVar(
    "zaptrix_egress_pinned", default=None
)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the checked addresses of a host, never to a fresh DNS answer."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = (_PINNED.get() or {}).get(_norm_host(host))
        if not addresses:  # fail closed: a connection nobody checked
            raise httpcore.ConnectError(f"egress: no checked address for {host!r}")
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("egress: unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@dataclass
class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that checks every request (steps 1-4) and pins its connection (step 5).

    ``allow`` is the default HostAllowlist; a request may carry its own in
    ``request.extensions[ALLOW_EXTENSION]`` (e.g. the conversation's portal). Build the client with
    ``trust_env=False`` and ``follow_redirects=False`` (see :func:`guarded_client`).
    """

    policy: EgressPolicy
    allow: HostAllowlist
    purpose: str
    limits: httpx.Limits = field(default_factory=lambda: httpx.Limits(max_connections=100))
    resolver: Resolver = system_resolver
    _inner: httpx.AsyncHTTPTransport = field(init=False)

    def __post_init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport(limits=self.limits, trust_env=False)
        # httpx has no public way to choose httpcore's network backend: replace its pool with the same
        # settings plus our backend (tests/test_egress.py proves the pinning works with this version).
        self._inner._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=self.limits.max_connections,
            max_keepalive_connections=self.limits.max_keepalive_connections,
            keepalive_expiry=self.limits.keepalive_expiry,
            network_backend=_PinnedBackend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        allow = request.extensions.get(ALLOW_EXTENSION, self.allow)
        try:
            pinned = await check_url(request.url, allow, self.policy, self.resolver)
        except EgressRefused as exc:
            EGRESS_REFUSED.labels(self.purpose, exc.reason).inc()
            raise
        token = _PINNED.set({pinned.host: pinned.addresses})
        try:
            return await self._inner.handle_async_request(request)
        finally:
            _PINNED.reset(token)

    async def aclose(self) -> None:
        await self._inner.aclose()


def guarded_client(transport: httpx.AsyncBaseTransport, **kwargs: Any) -> httpx.AsyncClient:
    """An AsyncClient that cannot leave the guard: no redirects followed, no proxies from the environment
    (a proxy transport would bypass the check)."""
    return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False, **kwargs)


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    url: str,
    *,
    allow: HostAllowlist | None = None,
    max_redirects: int = 3,
    purpose: str = "file",
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[httpx.Response]:
    """GET ``url`` as a stream, following up to ``max_redirects`` redirects by hand: every hop is a new
    request through the client's GuardedTransport, so it is checked and pinned again."""
    current = parse_url(url)
    extensions: dict[str, Any] = {ALLOW_EXTENSION: allow} if allow is not None else {}
    for hop in range(max_redirects + 1):
        request = client.build_request("GET", current, headers=headers, extensions=extensions)
        response = await client.send(request, stream=True)
        location = response.headers.get("location") if response.is_redirect else None
        if location is None:
            try:
                yield response
            finally:
                await response.aclose()
            return
        await response.aclose()
        if hop == max_redirects:
            break
        try:
            current = parse_url(current.join(location))
        except (httpx.InvalidURL, ValueError) as exc:
            EGRESS_REFUSED.labels(purpose, "malformed").inc()
            raise EgressRefused("malformed", f"redirect location: {type(exc).__name__}") from None
    EGRESS_REFUSED.labels(purpose, "redirects").inc()
    raise EgressRefused("redirects", f"more than {max_redirects} redirects")


def networks_setting(values: Sequence[str]) -> list[str]:
    """Validate a list of CIDRs (settings validators): refuses anything ipaddress cannot read."""
    for value in values:
        ipaddress.ip_network(value, strict=False)
    return list(values)
