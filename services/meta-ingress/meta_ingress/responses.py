"""HTTP answers of the web process that are not the happy path: JSON errors, never cached or sniffed."""

from __future__ import annotations

from typing import Any

from sanic import HTTPResponse
from sanic import json as json_response

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def error_response(status: int, reason: str, **extra: Any) -> HTTPResponse:
    return json_response({"error": reason, **extra}, status=status, headers=SECURITY_HEADERS)
