"""zaptrix-dev against both stand-ins, with the stub playing the gateway in between."""

from __future__ import annotations

import httpx
import pytest
from zaptrix_sandbox import cli

from .conftest import GatewayStub, Received


def test_cli_round_trip(
    graph_url: str, bitrix_url: str, stub: GatewayStub, capsys: pytest.CaptureFixture[str]
) -> None:
    httpx.post(f"{graph_url}/_sandbox/reset").raise_for_status()
    httpx.post(f"{bitrix_url}/_sandbox/reset").raise_for_status()
    stub.clear()
    urls = ["--graph-url", graph_url, "--bitrix-url", bitrix_url]

    assert (
        cli.main([*urls, "customer-says", "--from", "491701234567", "--name", "Anna", "Hello", "there"]) == 0
    )
    assert "HTTP 200" in capsys.readouterr().out
    [hook] = stub.on("/webhooks/meta")
    assert hook.json()["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] == "Hello there"
    assert cli.main([*urls, "customer-says", "--from", "491701234567", "--image", "look"]) == 0
    image = stub.on("/webhooks/meta")[1].json()["entry"][0]["changes"][0]["value"]["messages"][0]
    assert image["type"] == "image" and image["image"]["caption"] == "look"

    # What the gateway would do: deliver to Bitrix24 and reply through Graph.
    token = httpx.get(f"{bitrix_url}/_sandbox/portals/sandbox-member-1").json()["access_token"]
    httpx.post(
        f"{bitrix_url}/rest/imconnector.send.messages",
        json={
            "auth": token,
            "CONNECTOR": "zaptrix_whatsapp",
            "LINE": 1,
            "MESSAGES": [
                {
                    "user": {"id": "491701234567", "name": "Anna"},
                    "chat": {"id": "pn:491701234567"},
                    "message": {"id": "wamid.x", "date": "1767225600", "text": "Hello there"},
                }
            ],
        },
    ).raise_for_status()
    httpx.post(
        f"{graph_url}/v23.0/100000000000001/messages",
        headers={"Authorization": "Bearer sandbox-wa-token"},
        json={
            "messaging_product": "whatsapp",
            "to": "491701234567",
            "type": "text",
            "text": {"body": "Hi Anna"},
        },
    ).raise_for_status()

    assert (
        cli.main([*urls, "operator-says", "--chat", "pn:491701234567", "--operator", "Klaus", "Hi", "Anna"])
        == 0
    )
    assert "[b]Klaus:[/b][br] Hi Anna" in capsys.readouterr().out
    assert cli.main([*urls, "chats"]) == 0
    out = capsys.readouterr().out
    assert "external pn:491701234567" in out and "Anna: Hello there" in out and "[not delivered]" in out
    assert cli.main([*urls, "customer-inbox", "--to", "491701234567"]) == 0
    assert "Hi Anna" in capsys.readouterr().out
    assert cli.main([*urls, "operator-says", "--chat", "nobody", "x"]) == 1
    # The chat number `chats` prints first works as well as the external id.
    number = out.split("== chat ", 1)[1].split(" ", 1)[0]
    capsys.readouterr()
    assert cli.main([*urls, "operator-says", "--chat", number, "--operator", "Klaus", "again"]) == 0, number
    assert "Klaus:[/b][br] again" in capsys.readouterr().out


def test_cli_adds_and_installs_a_portal_and_adds_a_number(
    graph_url: str, bitrix_url: str, stub: GatewayStub, capsys: pytest.CaptureFixture[str]
) -> None:
    httpx.post(f"{graph_url}/_sandbox/reset").raise_for_status()
    httpx.post(f"{bitrix_url}/_sandbox/reset").raise_for_status()
    stub.clear()
    urls = ["--graph-url", graph_url, "--bitrix-url", bitrix_url]
    assert cli.main([*urls, "add-portal", "--member-id", "cli-portal", "--line", "4", "--install"]) == 0
    out = capsys.readouterr().out
    assert "cli-portal (cli-portal.bitrix24.com) added, Open Line 4" in out and "HTTP 200" in out
    [install] = stub.on("/webhooks/bitrix24/install")
    assert b"auth%5Bmember_id%5D=cli-portal" in install.body or b"auth[member_id]=cli-portal" in install.body
    assert cli.main([*urls, "add-portal", "--member-id", "cli-portal"]) == 1  # exists
    assert cli.main([*urls, "install-portal", "cli-portal"]) == 0
    assert cli.main([*urls, "install-portal", "no-such-portal"]) == 1

    args = ["add-number", "--phone-number-id", "100000000000009", "--display", "15550000009"]
    assert cli.main([*urls, *args]) == 0
    numbers = httpx.get(f"{graph_url}/_sandbox/numbers").json()["numbers"]
    assert "100000000000009" in {n["phone_number_id"] for n in numbers}
    assert cli.main([*urls, *args]) == 1  # exists


def test_cli_marked_read_failed_reply_and_receipts(
    graph_url: str, bitrix_url: str, stub: GatewayStub, capsys: pytest.CaptureFixture[str]
) -> None:
    httpx.post(f"{graph_url}/_sandbox/reset").raise_for_status()
    httpx.post(f"{bitrix_url}/_sandbox/reset").raise_for_status()
    stub.clear()
    urls = ["--graph-url", graph_url, "--bitrix-url", bitrix_url]
    wa = "491709999001"
    assert cli.main([*urls, "marked-read", "--customer", wa]) == 0
    assert "nothing of" in capsys.readouterr().out
    assert cli.main([*urls, "customer-says", "--from", wa, "Hallo"]) == 0
    wamid = stub.on("/webhooks/meta")[0].json()["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    graph = f"{graph_url}/v23.0/100000000000001/messages"
    auth = {"Authorization": "Bearer sandbox-wa-token"}
    # What the gateway does when the operator replies: mark the customer's latest message read.
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
    httpx.post(graph, headers=auth, json={**read, "typing_indicator": {"type": "text"}}).raise_for_status()
    capsys.readouterr()
    assert cli.main([*urls, "marked-read", "--customer", wa]) == 0
    assert f"marked read {wamid} + typing indicator" in capsys.readouterr().out

    assert cli.main([*urls, "fail-reply", "--to", wa]) == 1  # nothing sent to them yet
    reply = {"messaging_product": "whatsapp", "to": wa, "type": "text", "text": {"body": "Hi"}}
    httpx.post(graph, headers=auth, json=reply).raise_for_status()
    assert cli.main([*urls, "fail-reply", "--to", wa]) == 0
    statuses = [
        s
        for hook in stub.on("/webhooks/meta")
        for s in hook.json()["entry"][0]["changes"][0]["value"].get("statuses", [])
    ]
    assert any(s["status"] == "failed" and s["errors"][0]["code"] == 131047 for s in statuses)

    assert cli.main([*urls, "receipts"]) == 0
    assert "no receipts reported yet" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["echo", "--to", "491701234567", "vom", "Handy"], "smb_message_echoes"),
        (["edit", "--to", "491701234567", "--original", "wamid.O", "neu"], "messages"),
        (["revoke", "--to", "491701234567", "--original", "wamid.O"], "messages"),
        (["contact-sync", "--to", "491701234567", "Anna", "Schmidt"], "smb_app_state_sync"),
        (["history", "--to", "491701234567", "hi", "hallo"], "history"),
        (["marketing", "--to", "491701234567", "stop"], "user_preferences"),
    ],
)
def test_business_app_cases(
    graph_url: str, stub: GatewayStub, capsys: pytest.CaptureFixture[str], args: list[str], field: str
) -> None:
    stub.clear()
    assert cli.main(["--graph-url", graph_url, "business-app", *args]) == 0
    assert "HTTP 200" in capsys.readouterr().out
    [hook] = _not_statuses(stub)
    assert hook.json()["entry"][0]["changes"][0]["field"] == field


def test_business_app_edit_needs_the_original(graph_url: str, stub: GatewayStub) -> None:
    stub.clear()
    assert cli.main(["--graph-url", graph_url, "business-app", "edit", "--to", "1", "x"]) == 2
    assert _not_statuses(stub) == []


def _not_statuses(stub: GatewayStub) -> list[Received]:
    """The webhooks the gateway got but status webhooks: those of an earlier test's sends may still arrive
    (the stand-in posts delivered and read later, as Meta does), after this test cleared the stub."""
    return [
        h for h in stub.on("/webhooks/meta") if "statuses" not in h.json()["entry"][0]["changes"][0]["value"]
    ]


def test_template_changes_post_the_webhooks(
    graph_url: str, stub: GatewayStub, capsys: pytest.CaptureFixture[str]
) -> None:
    httpx.post(f"{graph_url}/_sandbox/reset").raise_for_status()
    stub.clear()
    assert cli.main(["--graph-url", graph_url, "template", "status", "hello_world", "paused"]) == 0
    assert "status webhook(s)" in capsys.readouterr().out
    assert cli.main(["--graph-url", graph_url, "template", "quality", "hello_world", "red"]) == 0
    assert (
        cli.main(["--graph-url", graph_url, "template", "category", "hello_world", "marketing", "--notice"])
        == 0
    )
    fields = [h.json()["entry"][0]["changes"][0]["field"] for h in _not_statuses(stub)]
    assert fields == [
        "message_template_status_update",
        "message_template_quality_update",
        "template_category_update",
    ]
    assert cli.main(["--graph-url", graph_url, "template", "list"]) == 0
    assert (
        "hello_world" in capsys.readouterr().out
        and "PAUSED" in httpx.get(f"{graph_url}/_sandbox/templates").text
    )
    assert cli.main(["--graph-url", graph_url, "template", "status", "nope", "paused"]) == 1
