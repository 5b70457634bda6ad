"""The whole Zaptrix system as local processes, exactly the entrypoints the containers run.

Used by `make run` (dev/run.py) and by the end-to-end tests (tests/e2e). PostgreSQL and Kafka are started
by dev/stack; this module runs migrations, the sandbox stand-ins (when no real credentials are given),
mapper, token-keeper, both web services and both dispatchers, waits until each is ready, and seeds the
sandbox portal and WhatsApp channel through the real install flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import grpc
import httpx
from grpc_certs import CertFiles, DevCA
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zaptrix import grpcauth
from zaptrix_testing.ports import free_port
from zaptrix_testing.seeding import SANDBOX_MEMBER_ID, seed_sandbox_channel

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent

# The sandbox's well-known identities (dev/sandbox defaults; see docs/sandbox.md).
SANDBOX_CLIENT_ID = "local.sandbox.app"
SANDBOX_CLIENT_SECRET = "sandbox-client-secret"
# Development-only key material: refused when ZAPTRIX_ENVIRONMENT=production.
DEV_KEYS = "dev1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
DEV_MEDIA_SECRET = "dev-media-url-secret-change-me"
# The gRPC identity (client/server certificate CN) of each process; real mTLS locally as in the chart.
GRPC_IDENTITIES = {
    "mapper": grpcauth.MAPPER,
    "token-keeper": grpcauth.TOKEN_KEEPER,
    "meta-ingress": grpcauth.META_INGRESS_WEB,
    "meta-dispatcher": grpcauth.META_DISPATCHER,
    "bitrix-ingress": grpcauth.BITRIX_INGRESS_WEB,
    "bitrix-dispatcher": grpcauth.BITRIX_DISPATCHER,
}


@dataclass(frozen=True)
class Ports:
    pg: int = 55432
    kafka: int = 19092
    otlp: int | None = 4317
    meta_web: int = 8080
    bitrix_web: int = 8081
    mapper: int = 50051
    token_keeper: int = 50052
    mapper_metrics: int = 9101
    token_keeper_metrics: int = 9102
    meta_dispatcher: int = 9103
    bitrix_dispatcher: int = 9104
    graph: int = 8090
    bitrix: int = 8091

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Ports:
        """`make run`'s ports: each from its variable (PORT_VARIABLES) when set, else the default. PG_PORT,
        KAFKA_PORT and JAEGER_OTLP_GRPC_PORT are the ones dev/stack starts the infrastructure on."""
        given: dict[str, int] = {}
        for name, var in PORT_VARIABLES.items():
            value = env.get(var, "").strip()
            if not value:
                continue
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise ValueError(f"{var}={value!r} is not a port number")
            given[name] = int(value)
        return cls(**given)

    @classmethod
    def random(cls, pg: int, kafka: int) -> Ports:
        """Free ports for everything we start ourselves (tests run beside a `make run`)."""
        names = [f for f in cls.__dataclass_fields__ if f not in ("pg", "kafka", "otlp")]
        return cls(pg=pg, kafka=kafka, otlp=None, **{n: free_port() for n in names})


# The variable that moves each port of `make run` (docs/local-stack.md).
PORT_VARIABLES = {
    "pg": "PG_PORT",
    "kafka": "KAFKA_PORT",
    "otlp": "JAEGER_OTLP_GRPC_PORT",
    "meta_web": "META_INGRESS_PORT",
    "bitrix_web": "BITRIX_INGRESS_PORT",
    "mapper": "MAPPER_PORT",
    "token_keeper": "TOKEN_KEEPER_PORT",
    "mapper_metrics": "MAPPER_METRICS_PORT",
    "token_keeper_metrics": "TOKEN_KEEPER_METRICS_PORT",
    "meta_dispatcher": "META_DISPATCHER_PORT",
    "bitrix_dispatcher": "BITRIX_DISPATCHER_PORT",
    "graph": "SANDBOX_GRAPH_PORT",
    "bitrix": "SANDBOX_BITRIX_PORT",
}


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[], Awaitable[bool]] | None = None
    proc: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None


async def _http_ok(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return (await client.get(url)).status_code < 500
    except httpx.HTTPError:
        return False


def _health(port: int, path: str = "/health") -> Callable[[], Awaitable[bool]]:
    return lambda: _http_ok(f"http://127.0.0.1:{port}{path}")


async def _grpc_serving(channel: grpc.aio.Channel) -> bool:
    async with channel:
        try:
            resp = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class LocalSystem:
    ports: Ports
    state_dir: Path
    database_url: str
    topic_prefix: str = "zaptrix"
    sandbox: bool = True
    echo: bool = False
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)
    stop_grace_s: float = 10.0  # SIGTERM → SIGKILL per process on stop()
    grpc_certs: dict[str, CertFiles] = field(default_factory=dict)

    # ---- gRPC identities ----------------------------------------------------------------------------

    def grpc_tls(self, identity: str) -> CertFiles:
        """The certificate of `identity`, issued by a CA created (once) in the state dir."""
        if not self.grpc_certs:
            ca = DevCA(self.state_dir / "grpc-tls")
            for name in [*GRPC_IDENTITIES.values(), grpcauth.ADMIN]:
                self.grpc_certs[name] = ca.issue(name)
        return self.grpc_certs[identity]

    def grpc_channel(self, server: str, identity: str = grpcauth.ADMIN) -> grpc.aio.Channel:
        """A mutual-TLS channel to "mapper" or "token-keeper" as `identity` (default: operator tooling)."""
        cert, key, ca = self.grpc_tls(identity).read()
        port = self.ports.mapper if server == "mapper" else self.ports.token_keeper
        return grpc.aio.secure_channel(
            f"127.0.0.1:{port}",
            grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert),
            options=[("grpc.ssl_target_name_override", GRPC_IDENTITIES[server])],
        )

    # ---- configuration ------------------------------------------------------------------------------

    def base_env(self, service: str) -> dict[str, str]:
        p = self.ports
        # With the sandbox, settings come only from here; with real credentials, the caller's ZAPTRIX_*
        # variables (Graph URL, OAuth URL, secrets) pass through to every process.
        own = ("ZAPTRIX_", "OTEL_", "SANDBOX_") if self.sandbox else ("SANDBOX_",)
        env = {k: v for k, v in os.environ.items() if not k.startswith(own) or k.startswith("ZAPTRIX_CACHE")}
        env.update(
            {
                "OTEL_SERVICE_NAME": service,
                "ZAPTRIX_ENVIRONMENT": "dev",
                "ZAPTRIX_LOG_LEVEL": "INFO",
                "ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{p.kafka}",
                "ZAPTRIX_KAFKA_TOPIC_PREFIX": self.topic_prefix,
                "ZAPTRIX_MAPPER_ADDR": f"127.0.0.1:{p.mapper}",
                "ZAPTRIX_TOKEN_KEEPER_ADDR": f"127.0.0.1:{p.token_keeper}",
                # Everything is reached on 127.0.0.1: nothing listens on the machine's other interfaces.
                "ZAPTRIX_GRPC_BIND_ADDRESS": "127.0.0.1",
                "ZAPTRIX_METRICS_BIND_ADDRESS": "127.0.0.1",
                "ZAPTRIX_WEB_HOST": "127.0.0.1",
                # grpcurl and friends list and call the methods (with the operator certificate).
                "ZAPTRIX_GRPC_REFLECTION": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if p.otlp:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{p.otlp}"
        if self.sandbox:
            env["ZAPTRIX_ALLOW_INSECURE_HTTP"] = "true"
            # The sandbox portal (REST endpoint, file links) lives on 127.0.0.1: exactly that, nothing else.
            env["ZAPTRIX_EGRESS_ALLOW_NETWORKS"] = '["127.0.0.1/32"]'
        if service in GRPC_IDENTITIES:
            env.update(self.grpc_tls(GRPC_IDENTITIES[service]).env())
        env.update(self.extra_env.get(service, {}))
        return env

    def definitions(self) -> list[Process]:
        p = self.ports
        db = {"ZAPTRIX_DATABASE_URL": self.database_url}
        procs: list[Process] = []
        if self.sandbox:
            procs += [
                Process(
                    "sandbox-graph",
                    [str(BIN / "sandbox-graph")],
                    self.base_env("sandbox-graph")
                    | {
                        "SANDBOX_GRAPH_PORT": str(p.graph),
                        "SANDBOX_GRAPH_WEBHOOK_URL": f"http://127.0.0.1:{p.meta_web}/webhooks/meta",
                    },
                    lambda: _http_ok(f"http://127.0.0.1:{p.graph}/_sandbox/sent"),
                ),
                Process(
                    "sandbox-bitrix",
                    [str(BIN / "sandbox-bitrix")],
                    self.base_env("sandbox-bitrix")
                    | {
                        "SANDBOX_BITRIX_PORT": str(p.bitrix),
                        "SANDBOX_BITRIX_OUTBOUND_URL": f"http://127.0.0.1:{p.bitrix_web}/webhooks/bitrix24/outbound",
                        "SANDBOX_BITRIX_INSTALL_URL": f"http://127.0.0.1:{p.bitrix_web}/webhooks/bitrix24/install",
                    },
                    lambda: _http_ok(
                        f"http://127.0.0.1:{p.bitrix}/_sandbox/portals/{SANDBOX_MEMBER_ID}/stats"
                    ),
                ),
            ]
        tk_env = db | {
            "ZAPTRIX_TOKEN_KEEPER_KEYS": DEV_KEYS,
            "ZAPTRIX_TOKEN_KEEPER_ACTIVE_KEY_ID": "dev1",
            "ZAPTRIX_GRPC_PORT": str(p.token_keeper),
            "ZAPTRIX_METRICS_PORT": str(p.token_keeper_metrics),
        }
        if self.sandbox:
            tk_env["ZAPTRIX_BITRIX_OAUTH_URL"] = f"http://127.0.0.1:{p.bitrix}/oauth/token/"
        graph = {"ZAPTRIX_GRAPH_API_BASE_URL": f"http://127.0.0.1:{p.graph}"} if self.sandbox else {}
        meta = graph | {
            "ZAPTRIX_WEB_PORT": str(p.meta_web),
            "ZAPTRIX_PUBLIC_BASE_URL": f"http://127.0.0.1:{p.meta_web}",
            "ZAPTRIX_MEDIA_URL_SECRET": DEV_MEDIA_SECRET,
            "ZAPTRIX_METRICS_PORT": str(p.meta_dispatcher),
        }
        bitrix = {
            "ZAPTRIX_WEB_PORT": str(p.bitrix_web),
            "ZAPTRIX_PUBLIC_BASE_URL": f"http://127.0.0.1:{p.bitrix_web}",
            "ZAPTRIX_METRICS_PORT": str(p.bitrix_dispatcher),
        }
        if self.sandbox:  # the stand-in is also Bitrix24's OAuth server, which vouches for every install
            bitrix |= {
                # The Bitrix24 app's OAuth client (the sandbox portal's app); with real credentials the
                # caller's ZAPTRIX_BITRIX_CLIENT_ID/SECRET pass through instead.
                "ZAPTRIX_BITRIX_CLIENT_ID": SANDBOX_CLIENT_ID,
                "ZAPTRIX_BITRIX_CLIENT_SECRET": SANDBOX_CLIENT_SECRET,
                "ZAPTRIX_BITRIX_OAUTH_SERVER_ENDPOINT": f"http://127.0.0.1:{p.bitrix}/oauth/rest/",
                "ZAPTRIX_BITRIX_OAUTH_URL": f"http://127.0.0.1:{p.bitrix}/oauth/token/",
                # The settings page: the stand-in's BX24 SDK, its Graph API, and meta-ingress's webhook URL.
                "ZAPTRIX_BITRIX_JS_SDK_URL": f"http://127.0.0.1:{p.bitrix}/api/v1/",
                "ZAPTRIX_META_WEBHOOK_URL": f"http://127.0.0.1:{p.meta_web}/webhooks/meta",
                **graph,
            }
        procs += [
            self._service(
                "mapper",
                "mapper-server",
                # The retention sweep (the chart's CronJob) as the server's periodic task: every 10 minutes.
                db
                | {
                    "ZAPTRIX_GRPC_PORT": str(p.mapper),
                    "ZAPTRIX_METRICS_PORT": str(p.mapper_metrics),
                    "ZAPTRIX_RETENTION_INTERVAL_S": "600",
                },
                lambda: _grpc_serving(self.grpc_channel("mapper")),
            ),
            self._service(
                "token-keeper",
                "token-keeper-server",
                tk_env,
                lambda: _grpc_serving(self.grpc_channel("token-keeper")),
            ),
            self._service("meta-ingress", "meta-ingress-web", meta, _health(p.meta_web)),
            self._service("meta-dispatcher", "meta-dispatcher", meta, _health(p.meta_dispatcher, "/ready")),
            self._service("bitrix-ingress", "bitrix-ingress-web", bitrix, _health(p.bitrix_web)),
            self._service(
                "bitrix-dispatcher", "bitrix-dispatcher", bitrix, _health(p.bitrix_dispatcher, "/ready")
            ),
        ]
        return procs

    def admin_env(self) -> dict[str, str]:
        """The environment of `zaptrix-admin` against this system: the operator certificate (admin.zaptrix),
        token-keeper's database and keys, Kafka, and the URLs a bind and a register check and hand out."""
        p = self.ports
        return (
            self.base_env("zaptrix-admin")
            | self.grpc_tls(grpcauth.ADMIN).env()
            | {
                "ZAPTRIX_DATABASE_URL": self.database_url,
                "ZAPTRIX_TOKEN_KEEPER_KEYS": DEV_KEYS,
                "ZAPTRIX_TOKEN_KEEPER_ACTIVE_KEY_ID": "dev1",
                "ZAPTRIX_PUBLIC_BASE_URL": f"http://127.0.0.1:{p.bitrix_web}",
                "ZAPTRIX_META_WEBHOOK_URL": f"http://127.0.0.1:{p.meta_web}/webhooks/meta",
                "ZAPTRIX_LOG_LEVEL": "WARNING",
            }
            | ({"ZAPTRIX_GRAPH_API_BASE_URL": f"http://127.0.0.1:{p.graph}"} if self.sandbox else {})
        )

    def write_admin_env(self) -> Path:
        """admin.env in the state dir: `set -a; . admin.env; set +a` and zaptrix-admin (and zaptrix-dev) talk
        to this system."""
        path = self.state_dir / "admin.env"
        keep = ("ZAPTRIX_", "OTEL_")
        env = self.admin_env()
        if self.sandbox:  # zaptrix-dev too, wherever the stand-ins listen
            env |= {
                "ZAPTRIX_DEV_GRAPH_URL": f"http://127.0.0.1:{self.ports.graph}",
                "ZAPTRIX_DEV_BITRIX_URL": f"http://127.0.0.1:{self.ports.bitrix}",
            }
        lines = [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()) if k.startswith(keep)]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    def _service(
        self, name: str, script: str, env: dict[str, str], ready: Callable[[], Awaitable[bool]]
    ) -> Process:
        return Process(name, [str(BIN / script)], self.base_env(name) | env, ready)

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def migrate(self) -> None:
        for script in ("mapper-migrate", "token-keeper-migrate"):
            env = self.base_env(script) | {"ZAPTRIX_DATABASE_URL": self.database_url}
            proc = await asyncio.create_subprocess_exec(
                str(BIN / script), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"{script} failed:\n{out.decode(errors='replace')}")

    async def start(self, only: set[str] | None = None, ready_timeout_s: float = 60.0) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        await self.migrate()
        for proc in self.definitions():
            if only is None or proc.name in only:
                await self.start_process(proc, ready_timeout_s)

    async def start_process(self, proc: Process, ready_timeout_s: float = 60.0) -> None:
        proc.proc = await asyncio.create_subprocess_exec(
            *proc.argv,
            env=proc.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        proc.pump = asyncio.create_task(self._pump(proc))
        self.processes[proc.name] = proc
        if proc.ready is None:
            return
        deadline = asyncio.get_running_loop().time() + ready_timeout_s
        while not await proc.ready():
            if proc.proc.returncode is not None:
                raise RuntimeError(
                    f"{proc.name} exited with {proc.proc.returncode}:\n{self.log_tail(proc.name)}"
                )
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(
                    f"{proc.name} not ready after {ready_timeout_s}s:\n{self.log_tail(proc.name)}"
                )
            await asyncio.sleep(0.2)

    async def _pump(self, proc: Process) -> None:
        """Drain the child's output (stdout and stderr share one pipe) into its log file, and onto our stdout
        when echoing, until EOF. It never stops early, or the child would block on a full pipe: output is
        read in chunks (no line-length limit), and a log file or terminal that fails is given up."""
        assert proc.proc is not None and proc.proc.stdout is not None
        path = self.state_dir / "logs" / f"{proc.name}.log"
        log: BinaryIO | None = None
        with contextlib.suppress(OSError):
            log = path.open("ab")
        echo = _LineEcho(proc.name)
        try:
            while chunk := await proc.proc.stdout.read(PUMP_CHUNK):
                if log is not None:
                    try:
                        log.write(chunk)
                        log.flush()
                    except OSError:  # disk full, file removed: keep draining
                        log.close()
                        log = None
                if self.echo and not say(echo.lines(chunk)):
                    self.echo = False  # the terminal is gone (EPIPE/EIO): the log files keep everything
        finally:
            if log is not None:
                log.close()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.state_dir / "logs" / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    async def stop_process(self, name: str, grace_s: float = 10.0) -> None:
        """SIGTERM to the process's group (it runs in its own session), SIGKILL after ``grace_s``, and SIGKILL
        to whatever is left of the group (its own children) once it has gone."""
        proc = self.processes.get(name)
        if proc is None or proc.proc is None:
            self.processes.pop(name, None)
            return
        if proc.proc.returncode is None:
            _signal_group(proc.proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.proc.wait(), grace_s)
        _signal_group(proc.proc.pid, signal.SIGKILL)
        await proc.proc.wait()
        self.processes.pop(name, None)
        if proc.pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.pump, 2)

    def kill_all(self) -> None:
        """SIGKILL every process group we started, at once (a second Ctrl-C)."""
        for proc in self.processes.values():
            if proc.proc is not None:
                _signal_group(proc.proc.pid, signal.SIGKILL)

    async def stop(self) -> None:
        # Web and dispatchers first, state owners last, so in-flight work can finish cleanly.
        for name in reversed(list(self.processes)):
            await self.stop_process(name, self.stop_grace_s)

    async def seed(self) -> None:
        """Install the sandbox app into the sandbox portal (the real ONAPPINSTALL flow through bitrix-ingress,
        verified with the stand-in's OAuth server like any install), then give token-keeper the sandbox WhatsApp channel's credentials and bind it to the Open Line."""
        p = self.ports
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.post(
                f"http://127.0.0.1:{p.bitrix}/_sandbox/portals/{SANDBOX_MEMBER_ID}/install"
            )
            resp.raise_for_status()
            if resp.json().get("gateway_status") != 200:
                raise RuntimeError(f"app install failed: {resp.text}\n{self.log_tail('bitrix-ingress')}")
        async with self.grpc_channel("mapper") as mapper, self.grpc_channel("token-keeper") as token_keeper:
            await seed_sandbox_channel(mapper, token_keeper)

    def with_ports(self, **changes: int) -> LocalSystem:
        return replace(self, ports=replace(self.ports, **changes))


# ---- process and terminal machinery -----------------------------------------------------------------

PUMP_CHUNK = 64 * 1024
ECHO_LINE_MAX = 8 * 1024  # longer lines are cut on the terminal (the log file keeps them whole)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid`` (children run with start_new_session, so pgid == pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def say(text: str) -> bool:
    """Write to our stdout; False (and stdout becomes /dev/null) when the terminal is gone (EPIPE, EIO)."""
    if not text:
        return True
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
        return True
    except (OSError, ValueError):  # ValueError: stdout already closed
        sys.stdout = open(os.devnull, "w")  # stdout for the rest of the run
        return False


class _LineEcho:
    """Turns a child's output chunks into "<name> | <line>" lines, each cut to ECHO_LINE_MAX."""

    def __init__(self, name: str) -> None:
        self.prefix = f"{name:>18} | "
        self.partial = b""
        self.dropped = 0

    def _line(self, line: bytes, dropped: int) -> str:
        more = f" …[+{dropped} bytes]" if dropped else ""
        return f"{self.prefix}{line.decode(errors='replace')}{more}\n"

    def lines(self, chunk: bytes) -> str:
        out: list[str] = []
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            line = self.partial + piece
            dropped = self.dropped + max(0, len(line) - ECHO_LINE_MAX)
            out.append(self._line(line[:ECHO_LINE_MAX], dropped))
            self.partial, self.dropped = b"", 0
        room = ECHO_LINE_MAX - len(self.partial)
        self.partial += rest[: max(0, room)]
        self.dropped += max(0, len(rest) - max(0, room))
        return "".join(out)


async def serve_until_signalled(system: LocalSystem, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``start`` and keep everything up until SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal closed);
    then stop everything started, also when the signal comes during start-up or ``start`` fails. A second
    signal kills whatever is still running at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            system.kill_all()
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    work: asyncio.Task[None] = asyncio.create_task(start())
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            work.result()  # a failed start-up raises (after everything is stopped)
            await waiter
    finally:
        for task in (work, waiter):
            task.cancel()
        await asyncio.gather(work, waiter, return_exceptions=True)
        say("\nstopping services …\n")
        await system.stop()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
