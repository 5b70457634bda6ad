"""Offline events (bitrix24.md §9, docs/reconciliation.md): the per-app queue Bitrix24 keeps for events bound
with `event.bind(event_type=offline)`, drained with `event.offline.get` and confirmed with
`event.offline.clear`; `event.offline.error` parks a record, `event.offline.list` reads without changing;
`feature.get(CODE=rest_offline_extended)` says whether `clear=0` (reservation) is available.

What the docs leave open, and what the stand-in does about it (docs/sandbox.md):
- a record is queued for every event with an offline binding, whether or not the online delivery worked;
  `EVENT_DATA` is the `data` an online handler gets (Bitrix24's sender stores `$item['DATA']`);
  `MESSAGE_ID` is md5(EVENT_NAME|json(EVENT_DATA)) as in the source;
- `clear=0` on a portal without `rest_offline_extended` deletes anyway (UNCONFIRMED);
- a `process_id` given by the caller is used as is: the records reserved under it are returned again with
  new ones (the docs: "used to re-select records not yet processed by the current process").
"""

from __future__ import annotations

import hashlib
import json
import operator
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sanic import Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response

from . import formdata
from .bitrix_rest import Ctx, RestError, method, ok
from .bitrix_state import PortalState
from .web import App

if TYPE_CHECKING:
    from .bitrix_app import BitrixSandbox

PAGE = 50  # event.offline.list pages, and event.offline.get's default limit
_OPS = ("!=", ">=", "<=", "=", "!", ">", "<")
_GET_FIELDS = {"ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID"}
_LIST_FIELDS = _GET_FIELDS | {"PROCESS_ID", "ERROR"}


def queue(portal: PortalState, event: str, data: Any, user_id: str = "") -> None:
    """Store an offline record when the portal has an offline binding of this event (called on every event
    the stand-in emits, before the online delivery is attempted)."""
    name = event.upper()
    if any(b["event"] == name and b["offline"] for b in portal.bindings):
        store(portal, name, data, user_id)


def store(portal: PortalState, name: str, data: Any, user_id: str = "", message_id: Any = None) -> None:
    """Append one record (``message_id`` None: Bitrix24's md5 of name and data)."""
    record_id = portal.next_offline_id()
    portal.offline.append(
        {
            "ID": str(record_id),
            "TIMESTAMP_X": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
            "EVENT_NAME": name,
            "EVENT_DATA": data,
            "EVENT_ADDITIONAL": {"user_id": user_id},  # the auth block, without tokens
            "MESSAGE_ID": message_id
            if message_id is not None
            else hashlib.md5(  # as Bitrix24 does: an id, not a secret
                f"{name}|{json.dumps(data, sort_keys=True)}".encode(), usedforsecurity=False
            ).hexdigest(),
            "PROCESS_ID": "",
            "ERROR": 0,
            "_seq": record_id,
        }
    )


def _value(record: dict[str, Any], field: str) -> Any:
    value = record[field]
    return int(value) if field in ("ID", "ERROR") else str(value)


def _matches(record: dict[str, Any], flt: dict[str, Any], fields: set[str]) -> bool:
    for raw_key, wanted in flt.items():
        key = str(raw_key)
        op = next((o for o in _OPS if key.startswith(o)), "=")
        field = key[len(op) :].upper() if key.startswith(op) else key.upper()
        if field not in fields:
            raise RestError("ERROR_ARGUMENT", f"filter by {field} is not supported")
        have = _value(record, field)
        want: Any = int(wanted) if isinstance(have, int) else str(wanted)
        if field == "EVENT_NAME":
            have, want = str(have).upper(), str(want).upper()
        ok_ = {
            "=": have == want,
            "!": have != want,
            "!=": have != want,
            ">": have > want,
            "<": have < want,
            ">=": have >= want,
            "<=": have <= want,
        }[op]
        if not ok_:
            return False
    return True


def _sorted(records: list[dict[str, Any]], order: Any, default: str) -> list[dict[str, Any]]:
    spec = order if isinstance(order, dict) and order else {default: "ASC"}
    out = list(records)
    for field, direction in reversed(list(spec.items())):
        name = str(field).upper()
        if name not in _LIST_FIELDS:
            raise RestError("ERROR_ARGUMENT", f"order by {name} is not supported")
        key = "_seq" if name in ("ID", "TIMESTAMP_X") else name
        out.sort(key=operator.itemgetter(key), reverse=str(direction).upper() == "DESC")
    return out


def _filter(p: dict[str, Any]) -> dict[str, Any]:
    flt = p.get("FILTER") or {}
    if not isinstance(flt, dict):
        raise RestError("ERROR_ARGUMENT", "filter must be an object")
    return flt


def _view(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_") and k not in ("PROCESS_ID", "ERROR")}


def _truthy(value: Any, default: bool) -> bool:
    if value is None or value == "":
        return default
    return str(value).lower() not in ("0", "false", "n", "no")


@method("feature.get")
def feature_get(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    code = str(p.get("CODE") or "")
    if not code or code == "0":
        raise RestError("CODE_EMPTY", "CODE can't be empty")
    if code == "rest_offline_extended":
        return ok({"value": "Y" if ctx.portal.spec.offline_extended else "N"})
    if code == "rest_auth_connector":
        return ok({"value": "N"})
    return ok({"value": "Y"})  # the docs: an unknown code may answer Y


@method("event.offline.get")
def offline_get(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    portal = ctx.portal
    flt = _filter(p)
    try:
        limit = int(p.get("LIMIT") or PAGE)
    except (TypeError, ValueError):
        raise RestError("ERROR_ARGUMENT", "limit must be an integer") from None
    clear = _truthy(p.get("CLEAR"), True) or not portal.spec.offline_extended
    errors = 1 if _truthy(p.get("ERROR"), False) else 0
    given = str(p.get("PROCESS_ID") or "")
    process_id = given or secrets.token_hex(16)
    candidates = [
        r
        for r in portal.offline
        if r["ERROR"] == errors
        and (errors or r["PROCESS_ID"] == "" or (given and r["PROCESS_ID"] == given))
        and _matches(r, flt, _GET_FIELDS)
    ]
    taken = _sorted(candidates, p.get("ORDER"), "TIMESTAMP_X")[: max(0, limit)]
    for r in taken:
        r["PROCESS_ID"] = process_id
    if clear:
        gone = {id(r) for r in taken}
        portal.offline = [r for r in portal.offline if id(r) not in gone]
    portal.offline_log.append({"method": "get", "process_id": process_id, "ids": [r["ID"] for r in taken]})
    return ok({"process_id": None if clear else process_id, "events": [_view(r) for r in taken]})


def _ids(value: Any) -> list[str]:
    return [str(v) for v in formdata.as_list(value) or ([] if value in (None, "") else [value])]


@method("event.offline.clear")
def offline_clear(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    process_id = str(p.get("PROCESS_ID") or "")
    if not process_id:
        raise RestError("ERROR_ARGUMENT", "process_id is required")
    ids, message_ids = set(_ids(p.get("ID"))), set(_ids(p.get("MESSAGE_ID")))

    def chosen(r: dict[str, Any]) -> bool:
        if r["PROCESS_ID"] != process_id:
            return False
        if ids:
            return str(r["ID"]) in ids
        return str(r["MESSAGE_ID"]) in message_ids if message_ids else True

    ctx.portal.offline = [r for r in ctx.portal.offline if not chosen(r)]
    ctx.portal.offline_log.append(
        {"method": "clear", "process_id": process_id, "ids": sorted(ids | message_ids)}
    )
    return ok(True)


@method("event.offline.error")
def offline_error(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    process_id = str(p.get("PROCESS_ID") or "")
    if not process_id:
        raise RestError("ERROR_ARGUMENT", "process_id is required")
    message_ids = set(_ids(p.get("MESSAGE_ID")))
    for r in ctx.portal.offline:
        if r["PROCESS_ID"] == process_id and str(r["MESSAGE_ID"]) in message_ids:
            r["ERROR"] = 1
    ctx.portal.offline_log.append({"method": "error", "process_id": process_id, "ids": sorted(message_ids)})
    return ok(True)


@method("event.offline.list")
def offline_list(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in ctx.portal.offline if _matches(r, _filter(p), _LIST_FIELDS)]
    rows = _sorted(rows, p.get("ORDER"), "ID")
    start = int(p.get("START") or 0)
    page = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows[start : start + PAGE]]
    extra: dict[str, Any] = {"total": len(rows)}
    if start + PAGE < len(rows):
        extra["next"] = start + PAGE
    return ok(page, **extra)


def register(app: App, sb: BitrixSandbox) -> None:
    @app.get("/_sandbox/portals/<member_id>/offline-events")
    async def offline_view(request: Request, member_id: str) -> HTTPResponse:
        """The offline queue as it stands (reserved, parked records included) and the calls that changed it."""
        p = sb.portals.get(member_id)
        if p is None:
            return json_response({"error": "unknown portal"}, status=404)
        records = [{k: v for k, v in r.items() if not k.startswith("_")} for r in p.offline]
        return json_response({"offline_events": records, "calls": p.offline_log, "at": time.time()})

    @app.post("/_sandbox/portals/<member_id>/offline-events")
    async def offline_inject(request: Request, member_id: str) -> HTTPResponse:
        """Fault injection: queue a record as given (hostile EVENT_DATA, another portal's chat, ...),
        with or without an offline binding. Body: {"event_name", "event_data", "message_id"?}."""
        p = sb.portals.get(member_id)
        if p is None:
            return json_response({"error": "unknown portal"}, status=404)
        body = request.json if isinstance(request.json, dict) else {}
        name = str(body.get("event_name") or "ONIMCONNECTORMESSAGEADD")
        store(p, name, body.get("event_data"), message_id=body.get("message_id"))
        return json_response({"queued": p.offline[-1]["ID"]}, status=201)
