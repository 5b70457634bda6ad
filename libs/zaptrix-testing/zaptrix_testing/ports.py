"""Free local TCP ports for the processes and servers a test starts.

Not one the kernel picks: it picks from its ephemeral range (``ip_local_port_range``), the range every
outgoing connection on the machine takes its source port from. Between the pick and the server's bind, a
client connection (to Kafka, PostgreSQL, any of the other processes) could take that very port, and the server
then fails with "Address already in use": it happened to the mapper's metrics port in `make bench`
(backlog_drain, which opens hundreds of connections). So the ports come from below that range, checked free.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 20_000  # below: well-known ports, and the fixed ones of the project's own Kafkas (19092-19196)
_pick = random.SystemRandom()  # never a seeded sequence: parallel test workers must not pick in step
_handed_out: set[int] = set()


def ports_outside_ephemeral(range_file: Path = EPHEMERAL_RANGE) -> range | None:
    """The ports between LOWEST and the kernel's ephemeral range, or None when that cannot be read or leaves
    fewer than 1,000 ports."""
    try:
        low = int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(LOWEST, low) if low - LOWEST >= 1_000 else None


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port free on 127.0.0.1 right now, outside the ephemeral range and not handed out before by this
    process. Another process that picks ports the same way could still bind it first (rare); where that
    range is unknown, the kernel picks."""
    candidates = ports_outside_ephemeral()
    if candidates is not None:
        for _ in range(100):
            port = _pick.choice(candidates)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
