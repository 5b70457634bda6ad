"""Graph API error envelope: {"error": {message, type, code, error_data?, error_subcode?, fbtrace_id}}."""

from __future__ import annotations

import secrets
from typing import Any

from sanic.response import HTTPResponse, json

# code -> (title used in messages and status webhooks, details text)
TITLES: dict[int, str] = {
    100: "Invalid parameter",
    190: "Invalid OAuth access token",
    130429: "Rate limit hit",
    131026: "Message undeliverable",
    131047: "Re-engagement message",
    131050: "Unable to deliver the message: the user stopped marketing messages",
    131062: "BSUID recipient not supported",
    131053: "Media upload error",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    132000: "Number of parameters does not match the expected number of params",
    132001: "Template name does not exist in the translation",
    132012: "Parameter format does not match format in the created template",
    132015: "Template is Paused",
    132016: "Template is Disabled",
}


class GraphError(Exception):
    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        status: int = 400,
        details: str | None = None,
        subcode: int | None = None,
    ) -> None:
        self.code = code
        self.title = TITLES.get(code, "Invalid parameter")
        self.message = message or f"(#{code}) {self.title}"
        self.status = status
        self.details = details
        self.subcode = subcode
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": "OAuthException", "code": self.code}
        if self.details is not None:
            err["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        if self.subcode is not None:
            err["error_subcode"] = self.subcode
        err["fbtrace_id"] = "A" + secrets.token_urlsafe(16)
        return {"error": err}

    def response(self) -> HTTPResponse:
        return json(self.body(), status=self.status)


def param_error(message: str, details: str | None = None) -> GraphError:
    return GraphError(100, f"(#100) {message}", details=details)


def webhook_error(code: int, details: str) -> dict[str, Any]:
    """The `errors[]` item of a failed status webhook (whatsapp.md A2)."""
    title = TITLES.get(code, "Error")
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }


def no_object(object_id: str, method: str = "get") -> GraphError:
    return GraphError(
        100,
        f"Unsupported {method} request. Object with ID '{object_id}' does not exist, cannot be loaded due to "
        "missing permissions, or does not support this operation.",
        subcode=33,
    )
