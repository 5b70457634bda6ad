"""Meta Cloud API webhooks as Meta sends them (the shape of dev/sandbox graph_webhooks/graph_inbound):
compact JSON with \\uXXXX escapes, signed with X-Hub-Signature-256 over the exact bytes."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

from bench.common import SANDBOX_APP_SECRET, SANDBOX_DISPLAY_NUMBER, SANDBOX_PHONE_NUMBER_ID, SANDBOX_WABA_ID


def wamid(run: str, n: int) -> str:
    """Unique, alphanumeric (so it can be found in any encoding of a request's parameters)."""
    return f"wamid.BENCH{run}X{n:07d}"


def customer(n: int) -> str:
    """wa_id of the n-th synthetic customer (a valid 12-digit number, unique per n)."""
    return f"4917{n:08d}"


def text_message_payload(
    wa_id: str, message_id: str, text: str, name: str = "Bench Customer", ts: int | None = None
) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": SANDBOX_WABA_ID,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": SANDBOX_DISPLAY_NUMBER,
                                "phone_number_id": SANDBOX_PHONE_NUMBER_ID,
                            },
                            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
                            "messages": [
                                {
                                    "from": wa_id,
                                    "id": message_id,
                                    "timestamp": str(ts or int(time.time())),
                                    "type": "text",
                                    "text": {"body": text},
                                }
                            ],
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode()


def sign(body: bytes, secret: str = SANDBOX_APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_text_webhook(
    wa_id: str, message_id: str, text: str, name: str = "Bench Customer"
) -> tuple[bytes, str]:
    body = encode(text_message_payload(wa_id, message_id, text, name))
    return body, sign(body)


_TEXTS = [
    "Hallo, ich habe eine Frage zu meiner Bestellung Nr. {n}. Wann wird sie geliefert?",
    "Guten Tag! Können Sie mir bitte die Rechnung für Auftrag {n} noch einmal schicken? Danke 🙏",
    "Is the store open on Sunday? Order {n}",
    "Ich möchte meinen Termin verschieben (Kundennr. {n}).",
]


def sample_text(n: int) -> str:
    return _TEXTS[n % len(_TEXTS)].format(n=n)


def write_wrk_corpus(path: Path, run: str, count: int, customers: int) -> int:
    """`count` distinct signed text webhooks (one message each, unique wamids) for the wrk Lua script:
    one line per webhook, `<signature>\\t<body>` (bodies are compact JSON: no tab, no newline).
    Returns the mean body size in bytes."""
    total = 0
    with path.open("w") as fh:
        for i in range(count):
            body, sig = signed_text_webhook(customer(i % customers), wamid(run, i), sample_text(i))
            text = body.decode()
            assert "\t" not in text and "\n" not in text
            fh.write(f"{sig}\t{text}\n")
            total += len(body)
    return total // max(count, 1)
