"""Test doubles of bitrix-ingress: a scriptable Bitrix24 REST fake for httpx.MockTransport. The fake mapper
and token-keeper, ports, processes and eventually() are the shared kit's (zaptrix_testing)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from bitrix_ingress.formparse import as_list, parse_form

# --- a Bitrix24 REST fake for httpx.MockTransport (unit tests) -------------------------------------


@dataclass
class Recorded:
    method: str
    params: dict[str, Any]
    token: str
    via_batch: bool = False


@dataclass
class FakeBitrix:
    """Enough of Bitrix24's REST for the dispatcher's unit tests: records calls, scripts failures."""

    valid_tokens: set[str] = field(default_factory=lambda: {"access-1"})
    expired_tokens: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)  # one per HTTP request
    calls: list[Recorded] = field(default_factory=list)  # one per method call (batch sub-calls too)
    script: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)  # method -> answers
    contacts: dict[int, str] = field(default_factory=dict)  # id -> phone digits
    chats: dict[str, int] = field(default_factory=dict)
    bad_message_ids: set[str] = field(default_factory=set)  # ERROR_ARGUMENT for calls containing these
    refuse_imconnector_in_batch: bool = False
    per_message_failures: set[str] = field(default_factory=set)
    stored: list[dict[str, Any]] = field(default_factory=list)  # messages that reached a chat

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def sent_messages(self) -> list[dict[str, Any]]:
        """Messages Bitrix24 stored (calls refused as a whole store nothing)."""
        return list(self.stored)

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def handle(self, request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        if request.headers.get("content-type", "").startswith("application/json"):
            params = json.loads(request.content)
        else:
            params = parse_form(request.content)
        token = str(params.pop("auth", ""))
        self.requests.append(Recorded(method, params, token))
        if token in self.expired_tokens:
            return httpx.Response(401, json={"error": "expired_token", "error_description": "expired"})
        if token not in self.valid_tokens:
            return httpx.Response(401, json={"error": "invalid_token", "error_description": "bad token"})
        if self.script.get(method):
            status, body = self.script[method].pop(0)
            if status != 200 or "error" in body:
                return httpx.Response(status, json=body)
        if method == "batch":
            return httpx.Response(200, json={"result": self._batch(params, token)})
        status, body = self._call(method, params, token, via_batch=False)
        return httpx.Response(status, json=body)

    def _batch(self, params: dict[str, Any], token: str) -> dict[str, Any]:
        results: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for key, cmd in params["cmd"].items():
            method, _, query = cmd.partition("?")
            sub = parse_form(query)
            if self.refuse_imconnector_in_batch and method.startswith("imconnector."):
                errors[key] = {"error": "ERROR_BATCH_METHOD_NOT_ALLOWED", "error_description": "not in batch"}
                continue
            _, body = self._call(method, sub, token, via_batch=True)
            if "error" in body:
                errors[key] = body
            else:
                results[key] = body["result"]
        return {"result": results or [], "result_error": errors or [], "result_total": [], "result_next": []}

    def _call(
        self, method: str, params: dict[str, Any], token: str, *, via_batch: bool
    ) -> tuple[int, dict[str, Any]]:
        self.calls.append(Recorded(method, params, token, via_batch))
        if method == "imconnector.send.messages":
            items = as_list(params.get("MESSAGES"))
            for item in items:
                if str(item["message"]["id"]) in self.bad_message_ids:
                    return 400, {"error": "ERROR_ARGUMENT", "error_description": "bad message"}
            out = []
            for item in items:
                chat = str(item["chat"]["id"])
                chat_id = self.chats.setdefault(chat, 1000 + len(self.chats))
                ok = str(item["message"]["id"]) not in self.per_message_failures
                if ok:
                    self.stored.append(item)
                out.append(
                    {
                        "user": "7",
                        "message": item["message"],
                        "chat": item["chat"],
                        "SUCCESS": ok,
                        "ERRORS": [] if ok else ["could not save the file"],
                        "session": {"ID": "55", "CHAT_ID": str(chat_id)},
                    }
                )
            return 200, {"result": {"SUCCESS": True, "DATA": {"RESULT": out}}}
        if method in ("imconnector.send.status.delivery", "imconnector.send.status.reading"):
            return 200, {"result": {"SUCCESS": True, "DATA": []}}
        if method == "crm.duplicate.findbycomm":
            digits = {"".join(ch for ch in str(v) if ch.isdigit()) for v in as_list(params.get("values"))}
            ids = [cid for cid, phone in self.contacts.items() if phone in digits]
            return 200, {"result": {"CONTACT": ids} if ids else []}
        if method == "crm.contact.add":
            new_id = 500 + len(self.contacts)
            phone = as_list(params["fields"]["PHONE"])[0]["VALUE"]
            self.contacts[new_id] = "".join(ch for ch in str(phone) if ch.isdigit())
            return 200, {"result": new_id}
        if method == "im.message.add":
            return 200, {"result": 9001}
        return 404, {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"}
