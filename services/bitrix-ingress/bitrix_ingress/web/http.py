"""Request and response helpers of the web process: a Bitrix24 POST's form, the query string, a JSON problem."""

from __future__ import annotations

from typing import Any

from sanic import HTTPResponse, Request, json

from bitrix_ingress.formparse import FormError, parse_form

# Everything is parsed before the request is authenticated: caps well below formparse.MAX_FIELDS. A real
# event has a few dozen fields per message (bitrix24.md), and events.MAX_MESSAGES messages at most.
BODY_MAX_FIELDS = 2000
QUERY_MAX_FIELDS = 100


def problem(status: int, reason: str) -> HTTPResponse:
    return json({"ok": False, "error": reason}, status=status)


def read_body(request: Request) -> dict[str, Any]:
    """The form of a Bitrix24 POST. Only form-encoded bodies: Bitrix24 sends nothing else, and JSON would
    skip every limit of the form parser (field count, depth; a deep document raised RecursionError)."""
    ctype = (request.content_type or "").split(";", 1)[0].strip().lower()
    if ctype not in ("", "application/x-www-form-urlencoded"):
        raise FormError(
            f"unsupported content type {ctype[:60]!r}: Bitrix24 posts form-encoded bodies "
            "(application/x-www-form-urlencoded)"
        )
    return parse_form(request.body or b"", BODY_MAX_FIELDS)


def query(request: Request) -> dict[str, Any]:
    try:
        return parse_form(request.query_string or "", QUERY_MAX_FIELDS)
    except FormError:
        return {}
