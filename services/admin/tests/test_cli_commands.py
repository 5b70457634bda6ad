"""zaptrix-admin's command surface without a system: every group is there, every read command prints JSON
with --json, changes refuse to go ahead without a terminal or --yes, and mistakes are `error: ...`, exit 1."""

from __future__ import annotations

import io
import json

import pytest
from zaptrix_admin import cli
from zaptrix_admin.output import Output, UsageError, confirm

READS = [
    ["portals", "list"],
    ["portals", "show", "m1"],
    ["channels", "list"],
    ["channels", "show", "1"],
    ["tokens", "status"],
    ["tokens", "reauth"],
    ["dead-letters", "list", "--portal", "m1", "--event-type", "customer_message", "--reason", "x"],
    ["dead-letters", "show", "wa-to-b24:0:1"],
    ["dead-letters", "audit"],
]


def test_every_group_and_read_command_parses_with_json() -> None:
    parser = cli.build_parser()
    groups = {g.__name__.rsplit(".", 1)[-1] for g in cli.GROUPS}
    assert {"portals", "channels", "tokens", "dead_letters"} <= groups
    for argv in READS:
        args = parser.parse_args(["--json", *argv])
        assert args.json and callable(args.handler), argv


def test_generate_key_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--json", "tokens", "generate-key"]) == 0
    assert len(json.loads(capsys.readouterr().out)["key"]) == 44


def test_replay_takes_ids_or_filters_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dead-letters", "replay", "wa-to-b24:0:1", "--portal", "m1"]) == 1
    assert "ids or filters, not both" in capsys.readouterr().err


def test_confirmation_needs_a_terminal_or_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Output(as_json=False, stdout=io.StringIO(), stderr=io.StringIO())
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # not a terminal: never read as a yes
    with pytest.raises(UsageError, match="pass --yes"):
        confirm(out, "replay 3 dead letter(s)?", assume_yes=False)
    assert confirm(out, "replay?", assume_yes=True)


def test_secrets_are_never_arguments() -> None:
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(
            [
                "channels",
                "bind",
                "--portal",
                "m",
                "--line",
                "1",
                "--phone-number-id",
                "1",
                "--waba-id",
                "2",
                "--access-token",
                "EAAG...",
            ]
        )
