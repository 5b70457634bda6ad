"""placement.bind/get/unbind (app embedding, admin only; a placement needs its own scope) and the
operator's Bitrix24 Drive: disk.storage.getlist, disk.storage.getchildren, disk.file.get (scope disk).

Each user's Drive is a flat root folder; files are served by the portal's /upload/files/ links (what
DOWNLOAD_URL names). A user reads only their own storage (ACCESS_DENIED otherwise). Every portal starts with
three sample files in user 1's Drive (a PNG, a JPEG and a PDF: the template picker's media headers);
POST /_sandbox/portals/<member_id>/drive adds more."""

from __future__ import annotations

import base64
import html
import json
from typing import TYPE_CHECKING, Any

from sanic import Request
from sanic.response import HTTPResponse
from sanic.response import html as html_response
from sanic.response import json as json_response

from .bitrix_rest import Ctx, RestError, method, ok
from .bitrix_state import PortalState
from .media_samples import for_mime, mime_from_filename
from .web import App

if TYPE_CHECKING:
    from .bitrix_app import BitrixSandbox

# The embedding places the sandbox knows, with the scope each needs (b24restdocs widgets/*).
PLACEMENTS = {
    "IM_TEXTAREA": "im",
    "IM_SIDEBAR": "im",
    "IM_CONTEXT_MENU": "im",
    "CRM_CONTACT_DETAIL_TAB": "crm",
    "CRM_DEAL_DETAIL_TAB": "crm",
}
SAMPLE_FILES = (
    ("summer_sale.png", "image/png"),
    ("storefront.jpg", "image/jpeg"),
    ("invoice_1042.pdf", "application/pdf"),
)
STORAGE_BASE = 100  # storage id = STORAGE_BASE + user id


def seed_drive(portal: PortalState, user_id: int = 1) -> None:
    for name, mime in SAMPLE_FILES:
        add_file(portal, user_id, name, for_mime(mime).data, mime)


def add_file(portal: PortalState, user_id: int, name: str, data: bytes, mime: str = "") -> str:
    file_id = str(portal.next_id("file"))
    portal.files[file_id] = (data, mime or mime_from_filename(name), name)
    portal.drive.setdefault(user_id, []).append(file_id)
    return file_id


def _admin(ctx: Ctx) -> None:
    if not ctx.portal.is_admin(ctx.user_id):
        raise RestError("ACCESS_DENIED", "Access denied! Application administrator rights required", 403)


def _scopes(ctx: Ctx) -> list[str]:
    return ctx.portal.spec.scope.split(",")


@method("placement.bind", "placement")
def placement_bind(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    _admin(ctx)
    placement, handler = str(p.get("PLACEMENT") or "").upper(), str(p.get("HANDLER") or "")
    if not placement or not handler:
        raise RestError("ERROR_ARGUMENT", "PLACEMENT and HANDLER are required")
    if placement not in PLACEMENTS:
        raise RestError("ERROR_PLACEMENT_NOT_FOUND", f"Placement {placement} not found")
    if PLACEMENTS[placement] not in _scopes(ctx):
        raise RestError(
            "ERROR_PLACEMENT_PERMISSION", f"Application has no access to placement {placement}", 403
        )
    if not handler.startswith(("https://", "http://")):
        raise RestError("ERROR_WRONG_HANDLER_URL", "Wrong handler URL")
    if any(b["placement"] == placement and b["handler"] == handler for b in ctx.portal.placements):
        raise RestError("ERROR_PLACEMENT_HANDLER_ALREADY_BINDED", "Handler already binded")
    options = p.get("OPTIONS")
    ctx.portal.placements.append(
        {
            "placement": placement,
            "handler": handler,
            "title": str(p.get("TITLE") or ""),
            "description": str(p.get("DESCRIPTION") or ""),
            "options": options if isinstance(options, dict) else {},
        }
    )
    return ok(True)


@method("placement.get", "placement")
def placement_get(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    _admin(ctx)
    return ok([dict(b) for b in ctx.portal.placements])


@method("placement.unbind", "placement")
def placement_unbind(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    _admin(ctx)
    placement, handler = str(p.get("PLACEMENT") or "").upper(), p.get("HANDLER")
    before = len(ctx.portal.placements)
    ctx.portal.placements = [
        b
        for b in ctx.portal.placements
        if not (b["placement"] == placement and (handler is None or b["handler"] == handler))
    ]
    return ok({"count": before - len(ctx.portal.placements)})


def _storage(user_id: int) -> dict[str, Any]:
    return {
        "ID": str(STORAGE_BASE + user_id),
        "NAME": f"User {user_id}",
        "CODE": None,
        "MODULE_ID": "disk",
        "ENTITY_TYPE": "user",
        "ENTITY_ID": str(user_id),
        "ROOT_OBJECT_ID": str(STORAGE_BASE * 10 + user_id),
    }


def _file(ctx: Ctx, file_id: str) -> dict[str, Any]:
    _, _, name = ctx.portal.files[file_id]
    owner = next(u for u, ids in ctx.portal.drive.items() if file_id in ids)
    return {
        "ID": file_id,
        "NAME": name,
        "CODE": None,
        "STORAGE_ID": str(STORAGE_BASE + owner),
        "TYPE": "file",
        "PARENT_ID": str(STORAGE_BASE * 10 + owner),
        "SIZE": str(len(ctx.portal.files[file_id][0])),
        "DOWNLOAD_URL": f"{ctx.base_url}/upload/files/{file_id}/{name}",
        "DETAIL_URL": f"{ctx.base_url}/company/personal/user/{owner}/disk/file/{name}",
    }


@method("disk.storage.getlist", "disk")
def storage_getlist(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    """The storages the user may see: their own (the only kind modelled)."""
    flt = p.get("FILTER") or p.get("filter") or {}
    flt = {str(k).upper(): v for k, v in flt.items()} if isinstance(flt, dict) else {}
    mine = _storage(ctx.user_id)
    if flt.get("ENTITY_TYPE") not in (None, "user") or str(flt.get("ENTITY_ID", ctx.user_id)) != str(
        ctx.user_id
    ):
        return ok([])
    return ok([mine])


@method("disk.storage.getchildren", "disk")
def storage_getchildren(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    storage = str(p.get("ID") or "")
    if not storage.isdigit():
        raise RestError("ERROR_ARGUMENT", "Could not find required argument id")
    if int(storage) != STORAGE_BASE + ctx.user_id:
        raise RestError("ACCESS_DENIED", "Access denied", 403)
    return ok([_file(ctx, f) for f in ctx.portal.drive.get(ctx.user_id, []) if f in ctx.portal.files])


@method("disk.file.get", "disk")
def file_get(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    file_id = str(p.get("ID") or "")
    if not file_id.isdigit():
        raise RestError("ERROR_ARGUMENT", "Could not find required argument id")
    if file_id not in ctx.portal.files or not any(file_id in ids for ids in ctx.portal.drive.values()):
        raise RestError("ERROR_NOT_FOUND", "Could not find entity with id 'File'", 404)
    if file_id not in ctx.portal.drive.get(ctx.user_id, []):
        raise RestError("ACCESS_DENIED", "Access denied", 403)
    return ok(_file(ctx, file_id))


def placement_opener(portal: PortalState, placement: dict[str, Any], fields: dict[str, str]) -> str:
    """How Bitrix24 opens a placement: a form POSTed into the app's frame (auto-submitted)."""
    esc = html.escape
    inputs = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in fields.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Bitrix24 placement</title></head>"
        f"<body><form id='f' method='post' action='{esc(placement['handler'])}'>{inputs}</form>"
        "<script>document.getElementById('f').submit()</script></body></html>"
    )


def register(app: App, sb: BitrixSandbox) -> None:
    @app.post("/_sandbox/portals/<member_id>/drive")
    async def add_drive_file(request: Request, member_id: str) -> HTTPResponse:
        """{user_id, name, content_b64?}: a file in that user's Drive (a sample of its type by default)."""
        portal = sb.portals.get(member_id)
        body = request.json if isinstance(request.json, dict) else {}
        name, user = str(body.get("name") or ""), body.get("user_id", 1)
        if portal is None or not name or not isinstance(user, int):
            return json_response({"error": "unknown portal, or name / user_id missing"}, status=400)
        mime = mime_from_filename(name)
        try:
            data = base64.b64decode(body["content_b64"]) if body.get("content_b64") else for_mime(mime).data
        except (ValueError, KeyError):
            return json_response({"error": f"no sample for {mime}: give content_b64"}, status=400)
        return json_response({"id": add_file(portal, user, name, data, mime)}, status=201)

    @app.get("/_sandbox/placements/open")
    async def open_placement(request: Request) -> HTTPResponse:
        """?member_id&placement=IM_TEXTAREA&dialog=chat<N>&user_id=2: open a bound placement as that user
        (fresh tokens of the portal's app), as Bitrix24 does: an auto-submitted POST to its handler."""
        member_id = request.args.get("member_id") or next(iter(sb.portals))
        portal = sb.portals.get(member_id)
        placement_name = (request.args.get("placement") or "IM_TEXTAREA").upper()
        if portal is None:
            return json_response({"error": "unknown portal"}, status=404)
        bound = next((b for b in portal.placements if b["placement"] == placement_name), None)
        if bound is None:
            return json_response(
                {"error": f"{placement_name} is not bound (install the app first)"}, status=404
            )
        user_id = int(request.args.get("user_id") or "1")
        access, refresh = portal.issue(sb.options, user_id=user_id, current=False)
        fields = {
            "DOMAIN": portal.spec.domain,
            "PROTOCOL": "1",
            "LANG": "en",
            "APP_SID": "sandbox",
            "AUTH_ID": access,
            "AUTH_EXPIRES": str(int(sb.options.access_token_ttl_s)),
            "REFRESH_ID": refresh or "",
            "member_id": portal.spec.member_id,
            "status": "L",
            "PLACEMENT": placement_name,
            "PLACEMENT_OPTIONS": json.dumps({"dialogId": request.args.get("dialog") or "", "URI": ""}),
        }
        return html_response(placement_opener(portal, bound, fields))
