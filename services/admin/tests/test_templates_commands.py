"""`zaptrix-admin templates`: sync reads every page of the Graph API stand-in (dev/sandbox, a real process)
into the catalogue, list shows it (table and --json); unknown channels are a usage error. The gRPC peers are
the kit's fakes (checked against the real services by tests/contract)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from zaptrix_admin.cli import main
from zaptrix_testing.fakes import FakeMapper, FakeTokenKeeper, GrpcFakes
from zaptrix_testing.fakes.serve import start_fakes_in_thread
from zaptrix_testing.ports import free_port
from zaptrix_testing.processes import console_script, start_process, wait_http

PNID, WABA = "100000000000001", "200000000000001"


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory, processes: None) -> Iterator[str]:
    port = free_port()
    proc = start_process(
        [console_script("sandbox-graph")],
        {"SANDBOX_GRAPH_HOST": "127.0.0.1", "SANDBOX_GRAPH_PORT": str(port)},
        Path(tmp_path_factory.mktemp("graph")) / "graph.log",
    )
    url = f"http://127.0.0.1:{port}"
    asyncio.run(wait_http(f"{url}/_sandbox/health", proc, ok=lambda s: s == 200))
    yield url
    proc.stop()


@pytest.fixture
def fakes(graph: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[GrpcFakes]:
    mapper, tk = FakeMapper(), FakeTokenKeeper()
    mapper.bind(PNID, "portal-a", 1)
    tk.add_channel(PNID, access_token="sandbox-wa-token", waba_id=WABA)
    served = start_fakes_in_thread(mapper, tk)
    for k, v in {
        **served.env(),
        "ZAPTRIX_GRAPH_API_BASE_URL": graph,
        "ZAPTRIX_ALLOW_INSECURE_HTTP": "true",
        "ZAPTRIX_ENVIRONMENT": "test",
    }.items():
        monkeypatch.setenv(k, v)
    yield served
    served.stop()


def test_sync_then_list(fakes: GrpcFakes, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "templates", "sync", "--channel", PNID]) == 0
    result = json.loads(capsys.readouterr().out)
    # the stand-in's default catalogue: 5 templates, order_update in two languages
    assert result == {"channel": PNID, "waba_id": WABA, "stored": 6, "removed": 0}
    assert main(["--json", "templates", "list", "--channel", PNID]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [(r["name"], r["language"]) for r in rows]
    assert ("winter_sale", "en_US") not in names  # PAUSED: not offered
    order = next(r for r in rows if (r["name"], r["language"]) == ("order_update", "pt_BR"))
    assert (order["status"], order["category"], order["variables"], order["header"]) == (
        "APPROVED",
        "UTILITY",
        "header:1, 1, 2",
        "text",
    )
    assert main(["--json", "templates", "list", "--channel", PNID, "--all"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert {r["status"] for r in every} == {"APPROVED", "PAUSED"} and len(every) == 6
    assert main(["templates", "list", "--channel", PNID]) == 0
    table = capsys.readouterr().out
    assert "approved templates of" in table and "summer_sale" in table and "named:" in table


def test_unknown_channel_and_missing_credentials_are_usage_errors(
    fakes: GrpcFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["templates", "list", "--channel", "999"]) == 1
    assert "not bound" in capsys.readouterr().err
    fakes.token_keeper.channels.clear()
    assert main(["templates", "sync", "--channel", PNID]) == 1
    assert "no credentials" in capsys.readouterr().err


def test_a_graph_refusal_is_reported(fakes: GrpcFakes, capsys: pytest.CaptureFixture[str]) -> None:
    fakes.token_keeper.add_channel(PNID, access_token="not-the-token", waba_id=WABA)
    assert main(["templates", "sync", "--channel", PNID]) == 2
    assert "Graph API refused" in capsys.readouterr().err and not fakes.mapper.templates
