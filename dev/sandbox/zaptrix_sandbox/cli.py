"""`zaptrix-dev`: play customer and operator against the local stand-ins and see what each side got.

zaptrix-dev customer-says --from 491701234567 --name Anna "Hello"
zaptrix-dev customer-says --from 491701234567 --image [--file PATH] "caption"
zaptrix-dev customer-says --bsuid US.13491208655302741918 --username anna.s "Hi"   (no phone shared)
zaptrix-dev customer-changes-number --from 491701234567 --bsuid US.1349… --new-phone 491709999999 --new-bsuid US.77…
zaptrix-dev customer-changes-bsuid --bsuid US.1349… --new-bsuid US.77…
zaptrix-dev operator-says --chat <chat number or external chat id, from `chats`> "Hi Anna"
zaptrix-dev chats
zaptrix-dev customer-inbox --to 491701234567
zaptrix-dev marked-read --customer 491701234567        (what the business marked read on WhatsApp)
zaptrix-dev fail-reply --to 491701234567 [--code 131047] (the last reply fails: a system notice in the chat)
zaptrix-dev receipts                                   (every imconnector.send.status.* call, per message)
zaptrix-dev add-portal --member-id acme-1 --domain acme.bitrix24.com --line 3 --install
zaptrix-dev install-portal acme-1
zaptrix-dev add-number --phone-number-id 100000000000002 --display 15550000002 --bind acme-1:3
zaptrix-dev business-app echo --to 491701234567 "Sent from the phone"      (smb_message_echoes)
zaptrix-dev business-app edit --to 491701234567 --original <wamid> "fixed"  (customer edit)
zaptrix-dev business-app revoke --to 491701234567 --original <wamid>       (customer revoke)
zaptrix-dev business-app contact-sync --to 491701234567 "Anna Schmidt"     (smb_app_state_sync)
zaptrix-dev business-app history --to 491701234567 --chunk-size 2 "hi" "hello, Anna" "ok?" "yes"
                                                          (history: one webhook per chunk of 2)
zaptrix-dev business-app marketing --to 491701234567 stop|resume          (user_preferences)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

DEFAULT_GRAPH = "http://127.0.0.1:8090"
DEFAULT_BITRIX = "http://127.0.0.1:8091"


def _media(path: str | None, kind: str, caption: str) -> dict[str, Any]:
    media: dict[str, Any] = {}
    if caption and kind != "audio":
        media["caption"] = caption
    if path:
        file = Path(path)
        media["content_b64"] = base64.b64encode(file.read_bytes()).decode()
        media["filename"] = file.name
        ext = file.suffix.lower().lstrip(".")
        media["mime_type"] = {
            "png": "image/png",
            "jpg": "image/jpeg",
            "jpeg": "image/jpeg",
            "pdf": "application/pdf",
            "txt": "text/plain",
            "ogg": "audio/ogg; codecs=opus",
            "mp4": "video/mp4",
        }.get(ext, "application/octet-stream")
    return media


def customer_changes_identity(args: argparse.Namespace, client: httpx.Client) -> int:
    body: dict[str, Any] = {
        "type": args.change,
        "previous_user_id": args.bsuid,
        "user_id": args.new_bsuid,
        "name": args.name,
    }
    if getattr(args, "new_phone", None):
        body["new_wa_id"] = args.new_phone
    if args.phone_number_id:
        body["phone_number_id"] = args.phone_number_id
    who = args.sender or "-"
    response = client.post(f"{args.graph_url}/_sandbox/customers/{who}/identity-change", json=body)
    response.raise_for_status()
    data = response.json()
    print(f"system message {args.change} {data['wamid']}: gateway answered HTTP {data['gateway_status']}")
    return 0 if data["gateway_status"] == 200 else 1


def customer_says(args: argparse.Namespace, client: httpx.Client) -> int:
    text = " ".join(args.text)
    body: dict[str, Any] = {"name": args.name}
    if not args.sender and not args.bsuid:
        print("give --from (a phone) or --bsuid (a customer without one)")
        return 2
    if args.bsuid:
        body["user_id"] = args.bsuid
        body["phone_hidden"] = not args.sender
    if args.username:
        body["username"] = args.username
    args.sender = args.sender or args.bsuid
    if args.phone_number_id:
        body["phone_number_id"] = args.phone_number_id
    if args.reply_to:
        body["context"] = {"message_id": args.reply_to}
    if args.image or args.document:
        kind = "image" if args.image else "document"
        body.update(type=kind, media=_media(args.file, kind, text))
    elif args.location:
        lat, _, lon = args.location.partition(",")
        body.update(
            type="location",
            location={"latitude": float(lat), "longitude": float(lon), **({"name": text} if text else {})},
        )
    else:
        body.update(type="text", text=text)
    response = client.post(f"{args.graph_url}/_sandbox/customers/{args.sender}/messages", json=body)
    response.raise_for_status()
    data = response.json()
    print(f"customer {args.sender} sent {body['type']} {data['wamid']}")
    status = data["status_code_from_gateway"]
    print(
        f"gateway answered the webhook with HTTP {status}"
        if status
        else "gateway unreachable (see GET /_sandbox/webhooks)"
    )
    return 0 if data["status_code_from_gateway"] == 200 else 1


def external_chat_id(args: argparse.Namespace, client: httpx.Client) -> str:
    """--chat as `chats` prints it: the chat number (`== chat 12`) or the external id; an external id wins
    when both could match. Unknown ids pass through for the stand-in to refuse."""
    response = client.get(f"{args.bitrix_url}/_sandbox/portals/{args.portal}/chats")
    if response.status_code != 200:
        return str(args.chat)
    chats = response.json()["chats"]
    if any(c["external_chat_id"] == args.chat for c in chats):
        return str(args.chat)
    numbered = [c["external_chat_id"] for c in chats if str(c["chat_id"]) == args.chat.lstrip("#")]
    return str(numbered[0]) if numbered else str(args.chat)


def operator_says(args: argparse.Namespace, client: httpx.Client) -> int:
    chat = external_chat_id(args, client)
    body: dict[str, Any] = {"chat_id": chat, "text": " ".join(args.text), "operator": args.operator}
    if args.file:
        file = Path(args.file)
        body["files"] = [{"name": file.name, "content_b64": base64.b64encode(file.read_bytes()).decode()}]
    response = client.post(f"{args.bitrix_url}/_sandbox/portals/{args.portal}/operator-messages", json=body)
    if response.status_code != 200:
        print(f"not sent: {response.text}", file=sys.stderr)
        return 1
    data = response.json()
    print(f"operator message {data['im']['message_id']} in chat {data['im']['chat_id']}: {data['text']}")
    print(
        f"gateway answered the event with HTTP {data['status_code']}"
        + (f" ({data['error']})" if data["error"] else "")
    )
    return 0 if data["status_code"] == 200 else 1


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def chats(args: argparse.Namespace, client: httpx.Client) -> int:
    response = client.get(f"{args.bitrix_url}/_sandbox/portals/{args.portal}/chats")
    response.raise_for_status()
    items = response.json()["chats"]
    if not items:
        print("no Open Lines chats yet")
    for chat in items:
        user = chat["user"]
        who = " ".join(str(user.get(k) or "") for k in ("name", "last_name")).strip() or user.get("id")
        print(
            f"== chat {chat['chat_id']} (external {chat['external_chat_id']}), session {chat['session_id']}: {who}"
        )
        for m in chat["messages"]:
            marks = ""
            if m["direction"] == "operator":
                marks = " [delivered, read]" if m["delivered"] else " [not delivered]"
            extra = "".join(f"\n      file {f['name']} ({f.get('download', 'link')})" for f in m["files"])
            flags = (
                (" (edited)" if m["edited"] else "")
                + (" (deleted)" if m["deleted"] else "")
                + (f" (duplicate of {m['duplicate_of']})" if m["duplicate_of"] else "")
            )
            kind = "[system] " if m["direction"] == "system" else ""
            print(f"  {_when(m['date'])} {kind}{m['author']}: {m['text']}{flags}{marks}{extra}")
    return 0


def customer_inbox(args: argparse.Namespace, client: httpx.Client) -> int:
    response = client.get(f"{args.graph_url}/_sandbox/sent", params={"to": args.to})
    response.raise_for_status()
    items = response.json()["sent"]
    if not items:
        print(f"nothing sent to {args.to} yet")
    for s in items:
        payload = s["payload"] if isinstance(s["payload"], dict) else {}
        kind = payload.get("type", "?")
        obj = payload.get(kind, {})
        if kind == "text":
            content = obj.get("body", "")
        elif kind == "template":
            content = f"template {obj.get('name')} ({obj.get('language', {}).get('code')})"
        elif isinstance(obj, dict):
            content = f"{kind} {obj.get('caption') or obj.get('link') or obj.get('id') or json.dumps(obj)}"
        else:
            content = kind
        error = f" error {s['error_code']}" if s["error_code"] else ""
        print(f"  {_when(s['at'])} [{s['outcome']}{error}] {content}")
    return 0


def marked_read(args: argparse.Namespace, client: httpx.Client) -> int:
    """Mark-as-read calls for a customer's messages: the operator answered (or finished the dialog)."""
    response = client.get(f"{args.graph_url}/_sandbox/reads")
    response.raise_for_status()
    reads = [r for r in response.json()["reads"] if r["wa_id"] == args.customer]
    if not reads:
        print(f"nothing of {args.customer} marked read yet (the operator has not answered)")
    for r in reads:
        typing = " + typing indicator" if r["typing_indicator"] else ""
        print(f"  {_when(r['at'])} marked read {r['message_id']}{typing}")
    return 0


def fail_reply(args: argparse.Namespace, client: httpx.Client) -> int:
    """WhatsApp reports the customer's latest reply as failed: the operator gets a notice in the chat."""
    response = client.get(f"{args.graph_url}/_sandbox/sent", params={"to": args.to})
    response.raise_for_status()
    accepted = [s for s in response.json()["sent"] if s.get("wamid")]
    if not accepted:
        print(f"no reply to {args.to} was accepted yet (send one with operator-says)", file=sys.stderr)
        return 1
    wamid = accepted[-1]["wamid"]
    body = {"wamid": wamid, "status": "failed", "error_code": args.code, "details": args.details}
    response = client.post(f"{args.graph_url}/_sandbox/statuses", json=body)
    if response.status_code != 200:
        print(f"not posted: {response.text}", file=sys.stderr)
        return 1
    print(
        f"status failed ({args.code}) for {wamid}; gateway answered HTTP {response.json()['gateway_status']}"
    )
    print("the notice shows as a [system] message in `zaptrix-dev chats`")
    return 0


def receipts(args: argparse.Namespace, client: httpx.Client) -> int:
    """Every receipt Zaptrix reported to Bitrix24: each message should get one delivery and one reading."""
    response = client.get(f"{args.bitrix_url}/_sandbox/portals/{args.portal}/status-calls")
    response.raise_for_status()
    calls = response.json()["status-calls"]
    if not calls:
        print("no receipts reported yet")
    per_message: dict[str, list[str]] = {}
    for c in calls:
        per_message.setdefault(c["message_id"], []).append(c["method"])
        matched = "" if c["matched"] else " (no such operator message)"
        print(f"  {_when(c['at'])} {c['method']:8} message {c['message_id']} {','.join(c['ids'])}{matched}")
    twice = {m: kinds for m, kinds in per_message.items() if len(kinds) != len(set(kinds))}
    if twice:
        print(f"reported more than once: {twice}")
        return 1
    return 0


def trace(args: argparse.Namespace, client: httpx.Client) -> int:
    from zaptrix_sandbox.traces import find_trace, render

    found = find_trace(client, args.jaeger_url.rstrip("/"), args.ref)
    if found is None:
        print(
            f"no trace found for {args.ref} in Jaeger at {args.jaeger_url} (spans are exported in batches: "
            "wait a few seconds)",
            file=sys.stderr,
        )
        return 1
    print("\n".join(render(found)))
    return 0


def _install(args: argparse.Namespace, client: httpx.Client, member_id: str) -> int:
    response = client.post(f"{args.bitrix_url}/_sandbox/portals/{member_id}/install")
    if response.status_code != 200:
        print(f"not installed: {response.text}", file=sys.stderr)
        return 1
    data = response.json()
    status = data["status_code"]
    print(
        f"portal {member_id}: the gateway answered ONAPPINSTALL with HTTP {status}"
        + (f" ({data['error']})" if data["error"] else "")
    )
    return 0 if status == 200 else 1


def add_portal(args: argparse.Namespace, client: httpx.Client) -> int:
    spec = {
        "member_id": args.member_id,
        "domain": args.domain or f"{args.member_id}.bitrix24.com",
        "client_id": args.client_id,
        "client_secret": args.client_secret,
        "application_token": args.application_token or f"{args.member_id}-app-token",
        "line_id": args.line,
        "connector_id": args.connector,
    }
    response = client.post(f"{args.bitrix_url}/_sandbox/portals", json=spec)
    if response.status_code != 201:
        print(f"not added: {response.text}", file=sys.stderr)
        return 1
    print(
        f"portal {spec['member_id']} ({spec['domain']}) added, Open Line {spec['line_id']}, app {spec['client_id']}"
    )
    return _install(args, client, args.member_id) if args.install else 0


def install_portal(args: argparse.Namespace, client: httpx.Client) -> int:
    return _install(args, client, args.member_id)


def add_number(args: argparse.Namespace, client: httpx.Client) -> int:
    number = {
        "phone_number_id": args.phone_number_id,
        "display_phone_number": args.display,
        "access_token": args.access_token or f"sandbox-wa-token-{args.phone_number_id}",
        "waba_id": args.waba_id,
    }
    response = client.post(f"{args.graph_url}/_sandbox/numbers", json=number)
    if response.status_code != 201:
        print(f"not added: {response.text}", file=sys.stderr)
        return 1
    print(f"number {args.display} (phone_number_id {args.phone_number_id}) added to the Graph stand-in")
    if not args.bind:
        return 0
    member_id, _, line = args.bind.rpartition(":")
    if not member_id or not line.isdigit():
        print("--bind needs MEMBER_ID:LINE", file=sys.stderr)
        return 2
    import grpc

    try:
        asyncio.run(_bind(args, number, member_id, int(line)))
    except grpc.RpcError as exc:
        print(f"not bound: {exc} (is the system running? `make run`)", file=sys.stderr)
        return 1
    print(f"credentials stored in token-keeper; bound to portal {member_id}, Open Line {line}")
    return 0


def _grpc_channel(args: argparse.Namespace, addr: str, server_name: str) -> Any:
    """A mutual-TLS channel as the operator tooling identity (admin.zaptrix) when the local system's
    certificates are in --grpc-tls-dir (`make run` writes them there); plaintext otherwise."""
    import grpc

    tls = Path(args.grpc_tls_dir)
    cert, key, ca = tls / "admin.zaptrix.pem", tls / "admin.zaptrix.key", tls / "ca.pem"
    if not (cert.is_file() and key.is_file() and ca.is_file()):
        return grpc.aio.insecure_channel(addr)
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(), private_key=key.read_bytes(), certificate_chain=cert.read_bytes()
    )
    return grpc.aio.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", server_name)])


async def _bind(args: argparse.Namespace, number: dict[str, str], member_id: str, line: int) -> None:
    """What an operator does for a real number: its credentials to token-keeper, its binding to the mapper."""
    from zaptrix.v1 import mapper_pb2, mapper_pb2_grpc, token_keeper_pb2, token_keeper_pb2_grpc

    async with _grpc_channel(args, args.token_keeper_addr, "token-keeper.zaptrix") as channel:
        await token_keeper_pb2_grpc.TokenKeeperStub(channel).UpsertChannelCredentials(
            token_keeper_pb2.UpsertChannelCredentialsRequest(
                phone_number_id=number["phone_number_id"],
                access_token=number["access_token"],
                app_secret=args.app_secret,
                verify_token=args.verify_token,
                waba_id=number["waba_id"],
            ),
            timeout=5,
        )
    async with _grpc_channel(args, args.mapper_addr, "mapper.zaptrix") as channel:
        await mapper_pb2_grpc.MapperStub(channel).BindChannel(
            mapper_pb2.BindChannelRequest(
                channel=mapper_pb2.Channel(
                    phone_number_id=number["phone_number_id"],
                    display_phone_number=number["display_phone_number"],
                    member_id=member_id,
                    line_id=line,
                    connector_id=args.connector,
                    crm_mode=mapper_pb2.CRM_MODE_GATEWAY,
                    active=True,
                )
            ),
            timeout=5,
        )


def business_app(args: argparse.Namespace, client: httpx.Client) -> int:
    """Coexistence and consent webhooks of the Graph stand-in (graph_coexist.py)."""
    words = " ".join(args.text)
    body: dict[str, Any] = {}
    if args.phone_number_id:
        body["phone_number_id"] = args.phone_number_id
    route = args.case
    if args.case == "echo":
        body["text"] = words
    elif args.case in ("edit", "revoke"):
        if not args.original:
            print("--original <wamid> is required", file=sys.stderr)
            return 2
        body["original_message_id"] = args.original
        if args.case == "edit":
            body["text"] = words
    elif args.case == "contact-sync":
        body["full_name"] = words
    elif args.case == "history":
        body["texts"] = list(args.text)
        body["chunk_size"], body["declined"] = args.chunk_size, args.declined
    else:  # marketing stop|resume
        route, body["value"] = "preferences", words
    response = client.post(f"{args.graph_url}/_sandbox/customers/{args.to}/{route}", json=body)
    if response.status_code != 200:
        print(f"not sent: {response.text}", file=sys.stderr)
        return 1
    data = response.json()
    print(f"{args.case} webhook {data['delivery_id']}: gateway answered HTTP {data['gateway_status']}")
    return 0 if data["gateway_status"] == 200 else 1


def template(args: argparse.Namespace, client: httpx.Client) -> int:
    """Templates of the Graph stand-in (graph_templates.py): list them, or change one and post its webhook."""
    if args.change == "list":
        for t in client.get(f"{args.graph_url}/_sandbox/templates").json():
            print(
                f"{t['name']:<20} {t['language']:<6} {t['status']:<10} {t['category']:<14} {t['quality_score']['score']}"
            )
        return 0
    body: dict[str, Any] = {}
    if args.change == "status":
        body["event"] = args.value.upper()
    elif args.change == "quality":
        body["score"] = args.value.upper()
    else:
        body["category"], body["notice"] = args.value.lower(), args.notice
    if args.language:
        body["language"] = args.language
    response = client.post(f"{args.graph_url}/_sandbox/templates/{args.name}/{args.change}", json=body)
    if response.status_code != 200:
        print(f"not changed: {response.text}", file=sys.stderr)
        return 1
    hooks = response.json()["webhooks"]
    statuses = ", ".join(f"{h['delivery_id']} HTTP {h['gateway_status']}" for h in hooks)
    print(f"{args.name}: {args.change} webhook(s) {statuses}")
    return 0 if all(h["gateway_status"] == 200 for h in hooks) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zaptrix-dev", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--graph-url", default=os.environ.get("ZAPTRIX_DEV_GRAPH_URL", DEFAULT_GRAPH))
    parser.add_argument("--bitrix-url", default=os.environ.get("ZAPTRIX_DEV_BITRIX_URL", DEFAULT_BITRIX))
    parser.add_argument("--portal", default=os.environ.get("ZAPTRIX_DEV_PORTAL", "sandbox-member-1"))
    sub = parser.add_subparsers(dest="command", required=True)

    say = sub.add_parser("customer-says", help="a WhatsApp customer writes to the business")
    say.add_argument("--from", dest="sender", help="customer wa_id, e.g. 491701234567")
    say.add_argument("--bsuid", help="business-scoped user id; without --from the customer shares no phone")
    say.add_argument("--username", help="WhatsApp username (shown as the name when there is no profile name)")
    say.add_argument("--name", default="Sandbox Customer", help="WhatsApp profile name")
    say.add_argument("--phone-number-id", help="business number (default: the first channel)")
    say.add_argument("--reply-to", help="wamid the customer replies to")
    kind = say.add_mutually_exclusive_group()
    kind.add_argument("--image", action="store_true", help="send an image (a generated JPEG unless --file)")
    kind.add_argument(
        "--document", action="store_true", help="send a document (a generated PDF unless --file)"
    )
    kind.add_argument("--location", help="send a location LAT,LON (the text becomes its name)")
    say.add_argument("--file", help="own file for --image/--document")
    say.add_argument("text", nargs="*", help="message text (caption for media)")
    say.set_defaults(func=customer_says)

    for command, change in (
        ("customer-changes-number", "user_changed_number"),
        ("customer-changes-bsuid", "user_changed_user_id"),
    ):
        ch = sub.add_parser(command, help=f"Meta's {change} system message (the customer's identity changed)")
        ch.add_argument("--from", dest="sender", help="the customer's old phone, if they shared one")
        ch.add_argument("--bsuid", required=True, help="the customer's BSUID before the change")
        ch.add_argument("--new-bsuid", required=True, help="the BSUID after the change")
        if change == "user_changed_number":
            ch.add_argument("--new-phone", required=True, help="the new phone number (digits)")
        ch.add_argument("--name", default="Sandbox Customer")
        ch.add_argument("--phone-number-id", help="business number (default: the first channel)")
        ch.set_defaults(func=customer_changes_identity, change=change)

    op = sub.add_parser("operator-says", help="a Bitrix24 operator answers in an Open Lines chat")
    op.add_argument(
        "--chat",
        required=True,
        help="the chat number or the external chat id, as `zaptrix-dev chats` shows them",
    )
    op.add_argument("--operator", default="Sandbox Operator", help="operator name (signature prefix)")
    op.add_argument("--file", help="attach a file")
    op.add_argument("text", nargs="*")
    op.set_defaults(func=operator_says)

    sub.add_parser("chats", help="the Open Lines chats as the operator sees them").set_defaults(func=chats)

    ba = sub.add_parser("business-app", help="coexistence / consent webhooks (WhatsApp Business app)")
    cases = ba.add_subparsers(dest="case", required=True)
    for case, what in [
        ("echo", "the business writes from the app (smb_message_echoes)"),
        ("edit", "the customer edits a message (--original)"),
        ("revoke", "the customer revokes a message (--original)"),
        ("contact-sync", "the app's contact sync gives the customer a name (smb_app_state_sync)"),
        ("history", "the history import, one argument per message (--chunk-size: per webhook)"),
        ("marketing", "the customer stops or resumes marketing messages: stop|resume (user_preferences)"),
    ]:
        one = cases.add_parser(case, help=what)
        one.add_argument("--to", required=True, help="customer wa_id")
        one.add_argument("--original", help="edit/revoke: the wamid of the customer's message")
        one.add_argument("--phone-number-id", help="business number (default: the first channel)")
        if case == "history":
            one.add_argument("--chunk-size", type=int, default=0, help="messages per chunk (0: one chunk)")
            one.add_argument("--declined", action="store_true", help="the business declined sharing")
        one.add_argument("text", nargs="*")
        one.set_defaults(func=business_app)

    tp = sub.add_parser(
        "template", help="the Graph stand-in's message templates: list, or change one (webhook)"
    )
    changes = tp.add_subparsers(dest="change", required=True)
    changes.add_parser("list", help="every template, language, status, category and quality").set_defaults(
        func=template
    )
    for change, what in [
        ("status", "APPROVED, PAUSED, REJECTED, DISABLED, ... (message_template_status_update)"),
        ("quality", "GREEN, YELLOW, RED, UNKNOWN (message_template_quality_update)"),
        ("category", "utility, marketing, authentication (template_category_update; --notice: 24 h ahead)"),
    ]:
        one = changes.add_parser(change, help=what)
        one.add_argument("name")
        one.add_argument("value")
        one.add_argument("--language", help="only this language's webhook")
        if change == "category":
            one.add_argument("--notice", action="store_true", help="the advance notice, nothing changes yet")
        one.set_defaults(func=template)

    inbox = sub.add_parser("customer-inbox", help="what a customer received on WhatsApp")
    inbox.add_argument("--to", required=True, help="customer wa_id")
    inbox.set_defaults(func=customer_inbox)

    mr = sub.add_parser("marked-read", help="which of a customer's messages the business marked read")
    mr.add_argument("--customer", required=True, help="customer wa_id")
    mr.set_defaults(func=marked_read)

    fr = sub.add_parser("fail-reply", help="WhatsApp reports the customer's latest reply as failed")
    fr.add_argument("--to", required=True, help="customer wa_id")
    fr.add_argument("--code", type=int, default=131047, help="Graph error code (131047: 24 h window)")
    fr.add_argument("--details", default="Message failed to send because more than 24 hours have passed")
    fr.set_defaults(func=fail_reply)

    sub.add_parser("receipts", help="every receipt reported to Bitrix24, per message").set_defaults(
        func=receipts
    )

    ap = sub.add_parser(
        "add-portal", help="another Bitrix24 portal in the stand-in (installed with --install)"
    )
    ap.add_argument("--member-id", required=True)
    ap.add_argument("--domain", help="default: <member-id>.bitrix24.com")
    ap.add_argument(
        "--client-id", default="local.sandbox.app", help="the app installed there (our app by default)"
    )
    ap.add_argument("--client-secret", default="sandbox-client-secret")
    ap.add_argument("--application-token", help="default: <member-id>-app-token")
    ap.add_argument("--line", type=int, default=1, help="its Open Line id")
    ap.add_argument("--connector", default="zaptrix_whatsapp")
    ap.add_argument(
        "--install", action="store_true", help="then install the app (ONAPPINSTALL to the gateway)"
    )
    ap.set_defaults(func=add_portal)

    ip = sub.add_parser("install-portal", help="the stand-in posts ONAPPINSTALL for a portal to the gateway")
    ip.add_argument("member_id")
    ip.set_defaults(func=install_portal)

    an = sub.add_parser("add-number", help="another WhatsApp business number in the Graph stand-in")
    an.add_argument("--phone-number-id", required=True)
    an.add_argument("--display", required=True, help="display phone number, e.g. 15550000002")
    an.add_argument("--access-token", help="its Graph token (default: sandbox-wa-token-<phone-number-id>)")
    an.add_argument("--waba-id", default="200000000000001")
    an.add_argument(
        "--bind",
        metavar="MEMBER_ID:LINE",
        help="also store its credentials in token-keeper and bind it to a line",
    )
    an.add_argument("--app-secret", default="sandbox-app-secret", help="the Graph stand-in's app secret")
    an.add_argument("--verify-token", default="sandbox-verify-token")
    an.add_argument("--connector", default="zaptrix_whatsapp")
    an.add_argument(
        "--token-keeper-addr", default=os.environ.get("ZAPTRIX_TOKEN_KEEPER_ADDR", "127.0.0.1:50052")
    )
    an.add_argument("--mapper-addr", default=os.environ.get("ZAPTRIX_MAPPER_ADDR", "127.0.0.1:50051"))
    an.add_argument(
        "--grpc-tls-dir",
        default=os.environ.get("ZAPTRIX_DEV_GRPC_TLS_DIR", str(Path.cwd() / ".local" / "run" / "grpc-tls")),
        help="the local system's gRPC certificates (make run writes them to .local/run/grpc-tls)",
    )
    an.set_defaults(func=add_number)

    tr = sub.add_parser("trace", help="a message's trace from Jaeger, as a tree of spans across the services")
    tr.add_argument("ref", help="a wamid, an event id (wa:…, b24:…) or a trace id")
    tr.add_argument(
        "--jaeger-url", default=os.environ.get("ZAPTRIX_DEV_JAEGER_URL", "http://127.0.0.1:16686")
    )
    tr.set_defaults(func=trace)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with httpx.Client(timeout=30.0) as client:
            code: int = args.func(args, client)
    except httpx.HTTPError as exc:
        print(
            f"error: {exc} (are the stand-ins running? `make run` or sandbox-graph / sandbox-bitrix)",
            file=sys.stderr,
        )
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
