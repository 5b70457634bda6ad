"""`make run`'s configuration (dev/run.py build_system): every port moves with its variable, and the
services are pointed at the Kafka and PostgreSQL that dev/stack started there (it used to point them at
Kafka 19092 whatever KAFKA_PORT said); listeners stay on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

DEV = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(DEV))
from localsystem import PORT_VARIABLES, Ports  # noqa: E402
from run import banner, build_system  # noqa: E402


def test_kafka_port_reaches_every_service(tmp_path: Path) -> None:
    env = {"KAFKA_PORT": "29092", "ZAPTRIX_STATE": str(tmp_path)}
    system = build_system(env, "postgresql://zaptrix:zaptrix@127.0.0.1:25432/zaptrix")
    for proc in system.definitions():
        if proc.name.startswith("sandbox"):
            continue
        assert proc.env["ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:29092", proc.name
    assert system.admin_env()["ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:29092"
    written = system.write_admin_env()  # what the banner tells the operator to source for zaptrix-admin
    assert "ZAPTRIX_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092" in written.read_text().splitlines()
    assert "ZAPTRIX_GRPC_TLS_CERT_FILE=" in written.read_text() and written.stat().st_mode & 0o077 == 0
    assert f"ZAPTRIX_DEV_BITRIX_URL=http://127.0.0.1:{system.ports.bitrix}" in written.read_text()


def test_every_port_moves_with_its_variable(tmp_path: Path) -> None:
    env = {var: str(30000 + i) for i, var in enumerate(PORT_VARIABLES.values())} | {
        "ZAPTRIX_STATE": str(tmp_path)
    }
    system = build_system(env, "postgresql://x@127.0.0.1:30000/zaptrix")
    ports = system.ports
    assert {name: getattr(ports, name) for name in PORT_VARIABLES} == {
        name: 30000 + i for i, name in enumerate(PORT_VARIABLES)
    }
    envs = {p.name: p.env for p in system.definitions()}
    assert envs["mapper"]["ZAPTRIX_GRPC_PORT"] == str(ports.mapper)
    assert envs["token-keeper"]["ZAPTRIX_METRICS_PORT"] == str(ports.token_keeper_metrics)
    assert envs["meta-ingress"]["ZAPTRIX_WEB_PORT"] == str(ports.meta_web)
    assert envs["bitrix-dispatcher"]["ZAPTRIX_MAPPER_ADDR"] == f"127.0.0.1:{ports.mapper}"
    assert envs["sandbox-graph"]["SANDBOX_GRAPH_PORT"] == str(ports.graph)
    assert envs["meta-ingress"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://127.0.0.1:{ports.otlp}"
    for proc_env in envs.values():
        if "ZAPTRIX_GRPC_BIND_ADDRESS" in proc_env:
            assert proc_env["ZAPTRIX_GRPC_BIND_ADDRESS"] == proc_env["ZAPTRIX_WEB_HOST"] == "127.0.0.1"
    text = banner(system, env)
    assert f"Kafka 127.0.0.1:{ports.kafka}" in text
    assert f"ZAPTRIX_DEV_BITRIX_URL=http://127.0.0.1:{ports.bitrix}" in text, "zaptrix-dev is told where"
    assert f"127.0.0.1:{ports.bitrix}/_sandbox/portals/sandbox-member-1/connector-settings" in text


def test_defaults_without_variables_and_bad_values_refused(tmp_path: Path) -> None:
    assert build_system({"ZAPTRIX_STATE": str(tmp_path)}, "").ports == Ports()
    assert "ZAPTRIX_DEV_GRAPH_URL" not in banner(build_system({"ZAPTRIX_STATE": str(tmp_path)}, ""), {})
    with pytest.raises(ValueError, match="MAPPER_PORT"):
        Ports.from_env({"MAPPER_PORT": "lots"})
