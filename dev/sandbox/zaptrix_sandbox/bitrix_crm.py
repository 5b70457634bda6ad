"""crm.* contact methods (bitrix24.md §7), event.bind/get/unbind (§3) and profile/app.info/scope."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from . import formdata
from .bitrix_rest import Ctx, RestError, method, ok
from .bitrix_state import PortalState

PHONE_TYPES = ("WORK", "MOBILE", "FAX", "HOME", "PAGER", "MAILING", "OTHER")
MULTI_FIELDS = ("PHONE", "EMAIL", "IM", "WEB")
KNOWN_EVENTS = (
    "ONIMCONNECTORMESSAGEADD",
    "ONIMCONNECTORMESSAGEUPDATE",
    "ONIMCONNECTORMESSAGEDELETE",
    "ONIMCONNECTORDIALOGSTART",
    "ONIMCONNECTORDIALOGFINISH",
    "ONIMCONNECTORSTATUSDELETE",
    "ONIMCONNECTORLINEDELETE",
    "ONAPPINSTALL",
    "ONAPPUNINSTALL",
    "ONAPPUPDATE",
    "ONCRMCONTACTADD",
    "ONCRMCONTACTUPDATE",
    "ONCRMCONTACTDELETE",
)


def digits(phone: str) -> str:
    return re.sub(r"\D", "", phone.split(";")[0])  # Bitrix24 compares normalized numbers, ignoring extensions


def find_by_phone(portal: PortalState, phones: list[str]) -> list[int]:
    wanted = {digits(p) for p in phones if digits(p)}
    return [
        cid
        for cid, c in portal.contacts.items()
        if any(digits(str(ph["VALUE"])) in wanted for ph in c.get("PHONE", []))
    ]


def _multi(portal: PortalState, kind: str, value: Any) -> list[dict[str, Any]]:
    items = formdata.as_list(value)
    if items is None:
        raise RestError("ERROR_ARGUMENT", f"FIELDS[{kind}] must be an array of {{VALUE, VALUE_TYPE}}")
    out = []
    for item in items:
        if not isinstance(item, dict) or not item.get("VALUE"):
            raise RestError("ERROR_ARGUMENT", f"FIELDS[{kind}][][VALUE] is required")
        vtype = str(item.get("VALUE_TYPE") or "WORK").upper()
        if kind == "PHONE" and vtype not in PHONE_TYPES:
            raise RestError("ERROR_ARGUMENT", f"Unknown PHONE VALUE_TYPE {vtype}")
        out.append(
            {
                "ID": str(portal.next_id("phone")),
                "VALUE_TYPE": vtype,
                "VALUE": str(item["VALUE"]),
                "TYPE_ID": kind,
            }
        )
    return out


def store_contact(portal: PortalState, fields: dict[str, Any]) -> int:
    contact_id = portal.next_id("contact")
    contact: dict[str, Any] = {
        "ID": str(contact_id),
        "NAME": "",
        "LAST_NAME": "",
        "SOURCE_ID": "",
        "SOURCE_DESCRIPTION": "",
        "OPENED": "Y",
        "ASSIGNED_BY_ID": "1",
        "DATE_CREATE": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
    }
    for key, value in fields.items():
        contact[key] = _multi(portal, key, value) if key in MULTI_FIELDS else value
    contact["HAS_PHONE"] = "Y" if contact.get("PHONE") else "N"
    portal.contacts[contact_id] = contact
    return contact_id


def _fields(p: dict[str, Any]) -> dict[str, Any]:
    fields = p.get("FIELDS")
    if not isinstance(fields, dict) or not fields:
        raise RestError("ERROR_ARGUMENT", "Parameter 'fields' must be a non-empty array")
    return {k.upper(): v for k, v in fields.items()}


@method("crm.contact.add", "crm")
def contact_add(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return ok(store_contact(ctx.portal, _fields(p)))


def _contact(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    try:
        return ctx.portal.contacts[int(p.get("ID") or 0)]
    except (KeyError, ValueError):
        raise RestError("", "Not found") from None


@method("crm.contact.get", "crm")
def contact_get(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return ok(_contact(ctx, p))


@method("crm.contact.update", "crm")
def contact_update(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    contact = _contact(ctx, p)
    for key, value in _fields(p).items():
        contact[key] = contact.get(key, []) + _multi(ctx.portal, key, value) if key in MULTI_FIELDS else value
    return ok(True)


@method("crm.contact.list", "crm")
def contact_list(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    flt = (
        {k.upper(): v for k, v in (p.get("FILTER") or {}).items()}
        if isinstance(p.get("FILTER"), dict)
        else {}
    )
    select = [str(s).upper() for s in formdata.as_list(p.get("SELECT")) or []]
    rows = list(ctx.portal.contacts.values())
    if "PHONE" in flt:
        ids = set(find_by_phone(ctx.portal, [str(flt["PHONE"])]))
        rows = [r for r in rows if int(r["ID"]) in ids]
    for key in ("ID", "NAME", "LAST_NAME"):
        if key in flt:
            rows = [r for r in rows if str(r.get(key)) == str(flt[key])]
    start = int(p.get("START") or 0)
    page = rows[start : start + 50]
    # Multi-fields come back only when selected, as in Bitrix24.
    out = [{k: v for k, v in r.items() if k not in MULTI_FIELDS or k in select} for r in page]
    extra: dict[str, Any] = {"total": len(rows)}
    if start + 50 < len(rows):
        extra["next"] = start + 50
    return ok(out, **extra)


@method("crm.duplicate.findbycomm", "crm")
def duplicate_findbycomm(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    kind = str(p.get("TYPE") or "").upper()
    values = formdata.as_list(p.get("VALUES"))
    if kind not in ("PHONE", "EMAIL") or not values:
        raise RestError("ERROR_ARGUMENT", "type (PHONE|EMAIL) and values[] are required")
    if len(values) > 20:
        raise RestError("ERROR_ARGUMENT", "Too many values: at most 20 are allowed")
    entity = str(p.get("ENTITY_TYPE") or "").upper()
    if entity not in ("", "CONTACT", "LEAD", "COMPANY"):
        raise RestError("ERROR_ARGUMENT", f"Unknown entity_type {entity}")
    found: dict[str, list[int]] = {}
    if kind == "PHONE" and entity in ("", "CONTACT"):
        ids = find_by_phone(ctx.portal, [str(v) for v in values])
        if ids:
            found["CONTACT"] = ids
    return ok(found or [])  # nothing found -> [] (UNCONFIRMED, bitrix24.md §7)


@method("event.bind")
def event_bind(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    event, handler = str(p.get("EVENT") or "").upper(), str(p.get("HANDLER") or "")
    offline = str(p.get("EVENT_TYPE") or "").lower() == "offline"
    if not event or not (handler or offline):
        raise RestError("ERROR_ARGUMENT", "event and handler are required")
    if event not in KNOWN_EVENTS:
        raise RestError("ERROR_EVENT_NOT_FOUND", "Event not found")
    if offline:  # no handler: Bitrix24 queues the event (bitrix_offline.py); administrators only
        handler = ""
        if not ctx.portal.is_admin(ctx.user_id):
            raise RestError("ACCESS_DENIED", "Offline events are available to administrators only", 403)
    if any(
        b["event"] == event and b["handler"] == handler and bool(b["offline"]) == offline
        for b in ctx.portal.bindings
    ):
        raise RestError("ERROR_CORE", "Handler already binded")
    ctx.portal.bindings.append(
        {
            "event": event,
            "handler": handler,
            "auth_type": str(p.get("AUTH_TYPE") or "0"),
            "offline": 1 if offline else 0,
            "handler_id": ctx.portal.next_id("handler"),
            "at": time.time(),
        }
    )
    return ok(True)


@method("event.unbind")
def event_unbind(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    event, handler = str(p.get("EVENT") or "").upper(), p.get("HANDLER")
    before = len(ctx.portal.bindings)
    ctx.portal.bindings = [
        b
        for b in ctx.portal.bindings
        if not (b["event"] == event and (handler is None or b["handler"] == handler))
    ]
    return ok({"count": before - len(ctx.portal.bindings)})


@method("event.get")
def event_get(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return ok([{k: b[k] for k in ("event", "handler", "auth_type", "offline")} for b in ctx.portal.bindings])


@method("profile")
def profile(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    names = {v: k for k, v in ctx.portal.operators.items()}
    first, _, last = names.get(ctx.user_id, "Sandbox Admin").partition(" ")
    return ok(
        {
            "ID": str(ctx.user_id),
            "ADMIN": ctx.portal.is_admin(ctx.user_id),
            "NAME": first,
            "LAST_NAME": last,
            "PERSONAL_GENDER": "",
            "TIME_ZONE": "",
            "TIME_ZONE_OFFSET": 0,
        }
    )


@method("user.admin")
def user_admin(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return ok(ctx.portal.is_admin(ctx.user_id))


@method("app.info")
def app_info(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return ok(
        {
            "ID": 1,
            "CODE": ctx.client_id or ctx.portal.spec.client_id,
            "VERSION": 1,
            "STATUS": "L",
            "INSTALLED": True,
            "PAYMENT_EXPIRED": "N",
            "DAYS": None,
            "LANGUAGE_ID": "en",
            "LICENSE": "en_project",
            "LICENSE_TYPE": "project",
            "LICENSE_FAMILY": "project",
        }
    )


@method("scope")
def scope(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return ok(ctx.portal.spec.scope.split(","))
