"""Message templates in the Graph stand-in (research-2026-12.md 1.5, 1.12; whatsapp.md A5, A6).

- ``GET /<version>/<waba_id>/message_templates``: the WABA's templates, one item per name and language,
  with Meta's fields (id, name, language, status, category, components, quality_score, parameter_format),
  in pages of ``limit`` (default 25) with opaque ``paging.cursors`` and ``paging.next`` left out on the
  last page. Only a token of one of the WABA's numbers may read it (else 100 / subcode 33).
- ``check_send``: a ``type: template`` send judged as Graph does: unknown name or language, or not
  approved → 132001; paused → 132015; disabled → 132016; a parameter count that differs → 132000; a header
  parameter of the wrong kind → 132012.
- ``/_sandbox/templates/<name>/status|quality|category``: change a template and post the signed webhook
  (message_template_status_update, message_template_quality_update, template_category_update).
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from sanic import Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from .graph_errors import GraphError, no_object
from .graph_settings import Template
from .web import App

if TYPE_CHECKING:
    from .graph_app import GraphSandbox

MAX_LIMIT = 100
MEDIA_HEADERS = ("IMAGE", "VIDEO", "DOCUMENT")


def template_id(name: str, language: str) -> str:
    """A stable numeric id per name and language, as Meta's are."""
    return str(int(hashlib.sha256(f"{name}:{language}".encode()).hexdigest()[:13], 16))


def body_text(t: Template) -> str:
    if t.body_text:
        return t.body_text
    if t.named_params:
        return "Hello " + ", ".join("{{" + n + "}}" for n in t.named_params) + "."
    return "Message " + " ".join("{{" + str(i + 1) + "}}" for i in range(t.body_params))


def components(t: Template) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if t.header == "TEXT":
        out.append(
            {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}" if t.header_params else "Update"}
        )
    elif t.header:
        out.append({"type": "HEADER", "format": t.header})
    out.append({"type": "BODY", "text": body_text(t)})
    if t.url_button:
        out.append(
            {
                "type": "BUTTONS",
                "buttons": [{"type": "URL", "text": "Open", "url": "https://example.com/{{1}}"}],
            }
        )
    return out


def listing(t: Template) -> list[dict[str, Any]]:
    return [
        {
            "id": template_id(t.name, lang),
            "name": t.name,
            "language": lang,
            "status": t.status,
            "category": t.category.upper(),
            "components": components(t),
            "quality_score": {"score": t.quality, "date": int(time.time())},
            "parameter_format": "NAMED" if t.named_params else "POSITIONAL",
        }
        for lang in t.languages
    ]


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(cursor: str) -> int:
    try:
        kind, _, n = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind == "offset" and n.isdigit():
            return int(n)
    except (ValueError, UnicodeDecodeError):
        pass
    raise GraphError(100, "Invalid parameter", details="after: invalid cursor")


def check_send(templates: list[Template], obj: dict[str, Any]) -> Template:
    """The template a send names, judged as Graph does; raises GraphError."""
    name, lang = obj["name"], obj["language"]["code"]
    spec = next((t for t in templates if t.name == name), None)
    if spec is None or lang not in spec.languages or spec.status not in ("APPROVED", "PAUSED", "DISABLED"):
        raise GraphError(132001, details=f"template name ({name}) does not exist in {lang}")
    if spec.status == "PAUSED":
        raise GraphError(132015, details=f"Template {name} is paused due to low quality.")
    if spec.status == "DISABLED":
        raise GraphError(132016, details=f"Template {name} is disabled due to quality issues.")
    parts: dict[str, list[Any]] = {}
    for c in obj.get("components", []):
        parts.setdefault(str(c.get("type")), []).extend(c.get("parameters", []))
    body = parts.get("body", [])
    if spec.named_params:
        given_names = sorted(str(p.get("parameter_name", "")) for p in body if isinstance(p, dict))
        if given_names != sorted(spec.named_params):
            raise GraphError(
                132000,
                details=f"body: named parameters ({', '.join(given_names)}) do not match the template's "
                f"({', '.join(spec.named_params)})",
            )
    elif len(body) != spec.body_params:
        raise GraphError(
            132000,
            details=f"body: number of localizable_params ({len(body)}) does not match the expected number of "
            f"params ({spec.body_params})",
        )
    header = parts.get("header", [])
    expected = 1 if spec.header in MEDIA_HEADERS else spec.header_params
    if len(header) != expected:
        raise GraphError(
            132000,
            details=f"header: number of params ({len(header)}) does not match the expected number ({expected})",
        )
    if spec.header in MEDIA_HEADERS:
        kind = str(header[0].get("type", "")) if isinstance(header[0], dict) else ""
        if kind != spec.header.lower() or not isinstance(header[0].get(kind), dict):
            raise GraphError(
                132012,
                details=f"header: Format mismatch, expected {spec.header}, received {kind.upper() or 'nothing'}",
            )
    elif header and (not isinstance(header[0], dict) or header[0].get("type") != "text"):
        raise GraphError(132012, details="header: Format mismatch, expected TEXT")
    return spec


class _Change(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signature: Literal["valid", "invalid", "missing"] = "valid"
    language: str | None = None  # one language's webhook only (the change applies to the template)


class StatusChange(_Change):
    event: Literal[
        "APPROVED",
        "ARCHIVED",
        "DELETED",
        "DISABLED",
        "FLAGGED",
        "IN_APPEAL",
        "LIMIT_EXCEEDED",
        "LOCKED",
        "PAUSED",
        "PENDING",
        "PENDING_DELETION",
        "REINSTATED",
        "REJECTED",
    ]
    reason: str = "NONE"
    title: str = ""  # other_info.title, e.g. FIRST_PAUSE


class QualityChange(_Change):
    score: Literal["GREEN", "YELLOW", "RED", "UNKNOWN"]


class CategoryChange(_Change):
    category: Literal["utility", "marketing", "authentication"]
    notice: bool = False  # the 24-h advance notice (correct_category) instead of the completed change


def register(app: App, sb: GraphSandbox) -> None:
    @app.get("/<version>/<waba_id>/message_templates")
    async def message_templates(request: Request, version: str, waba_id: str) -> HTTPResponse:
        token = sb.token(request)
        if not any(c.waba_id == waba_id and c.access_token == token for c in sb.state.options.channels):
            raise no_object(waba_id)
        limit_text = request.args.get("limit", "25")
        if not limit_text.isdigit() or not 0 < int(limit_text) <= MAX_LIMIT:
            raise GraphError(100, details=f"limit must be between 1 and {MAX_LIMIT}")
        items = [item for t in sb.state.options.templates for item in listing(t)]
        start = _offset(request.args["after"][0]) if "after" in request.args else 0
        page = items[start : start + int(limit_text)]
        end = start + len(page)
        fields = [f for f in request.args.get("fields", "").split(",") if f]
        if fields:
            page = [{k: v for k, v in item.items() if k in fields or k == "id"} for item in page]
        paging: dict[str, Any] = {"cursors": {"before": _cursor(start), "after": _cursor(end)}}
        if end < len(items):
            base = f"{sb.settings.base_url()}/{version}/{waba_id}/message_templates"
            paging["next"] = f"{base}?limit={limit_text}&after={_cursor(end)}"
        return json_response({"data": page, "paging": paging})

    @app.get("/_sandbox/templates")
    async def list_templates(request: Request) -> HTTPResponse:
        return json_response([item for t in sb.state.options.templates for item in listing(t)])

    async def change(request: Request, name: str, model: type[_Change]) -> HTTPResponse:
        spec = next((t for t in sb.state.options.templates if t.name == name), None)
        if spec is None:
            return json_response({"error": f"no template {name}"}, 404)
        try:
            body = model.model_validate(request.json or {})
        except ValidationError as exc:
            return json_response({"error": "invalid request", "details": exc.errors(include_url=False)}, 400)
        field, value = _apply(spec, body)
        waba = sb.state.options.channels[0].waba_id
        deliveries = []
        for lang in [body.language] if body.language else spec.languages:
            v = {
                "message_template_id": int(template_id(spec.name, lang)),
                "message_template_name": spec.name,
                "message_template_language": lang,
                **value,
            }
            payload = {
                "object": "whatsapp_business_account",
                "entry": [{"id": waba, "time": int(time.time()), "changes": [{"field": field, "value": v}]}],
            }
            delivery, status = await sb.sender.send(field, payload, body.signature)
            deliveries.append({"delivery_id": delivery.id, "gateway_status": status, "payload": payload})
        return json_response({"template": listing(spec), "webhooks": deliveries})

    @app.post("/_sandbox/templates/<name>/status")
    async def status(request: Request, name: str) -> HTTPResponse:
        return await change(request, name, StatusChange)

    @app.post("/_sandbox/templates/<name>/quality")
    async def quality(request: Request, name: str) -> HTTPResponse:
        return await change(request, name, QualityChange)

    @app.post("/_sandbox/templates/<name>/category")
    async def category(request: Request, name: str) -> HTTPResponse:
        return await change(request, name, CategoryChange)


def _apply(spec: Template, body: _Change) -> tuple[str, dict[str, Any]]:
    """Change the template; the webhook field and the value's own keys (Meta's shapes)."""
    if isinstance(body, StatusChange):
        spec.status = "APPROVED" if body.event == "REINSTATED" else body.event
        value: dict[str, Any] = {
            "event": body.event,
            "reason": body.reason,
            "message_template_category": spec.category.upper(),
        }
        if body.title:
            value["other_info"] = {"title": body.title, "description": f"{body.title} ({body.reason})"}
        return "message_template_status_update", value
    if isinstance(body, QualityChange):
        previous = spec.quality
        spec.quality = body.score
        return "message_template_quality_update", {
            "previous_quality_score": previous,
            "new_quality_score": body.score,
        }
    assert isinstance(body, CategoryChange)
    if body.notice:
        return "template_category_update", {
            "correct_category": body.category.upper(),
            "category_update_timestamp": int(time.time()) + 86400,
        }
    old_category = spec.category
    spec.category = body.category
    return "template_category_update", {
        "previous_category": old_category.upper(),
        "new_category": body.category.upper(),
    }
