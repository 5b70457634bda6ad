"""free_port hands out ports the machine's outgoing connections cannot take in the meantime: none from the
kernel's ephemeral range (make bench's backlog_drain lost its mapper to "Address already in use" when a
client connection took the metrics port the kernel had picked for it)."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from zaptrix_testing import ports
from zaptrix_testing.ports import LOWEST, free_port, ports_outside_ephemeral


def test_ports_come_from_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert all(LOWEST <= p < low for p in ports)
    assert len(set(ports)) == 50  # none handed out twice


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    candidates = ports_outside_ephemeral()
    assert candidates is not None
    held: list[socket.socket] = []
    try:
        for port in candidates:  # three ports someone else listens on, then one nobody holds
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            if len(held) == 3:
                s.close()
                spare = port
                break
            s.listen()
            held.append(s)
        offered = iter([s.getsockname()[1] for s in held] + [spare])
        monkeypatch.setattr(ports, "_pick", SimpleNamespace(choice=lambda _range: next(offered)))
        assert free_port() == spare
    finally:
        for s in held:
            s.close()


def test_the_range_reads_the_kernel_setting(tmp_path: Path) -> None:
    f = tmp_path / "range"
    f.write_text("32768\t60999\n")
    assert ports_outside_ephemeral(f) == range(LOWEST, 32768)
    f.write_text("20500 60999\n")
    assert ports_outside_ephemeral(f) is None  # too few ports below: the kernel picks
    assert ports_outside_ephemeral(tmp_path / "missing") is None
