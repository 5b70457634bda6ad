"""imconnector.* methods (bitrix24.md §1, §2, §4) and the Open Lines chats they feed."""

from __future__ import annotations

import re
import time
from typing import Any

from . import formdata
from .bitrix_crm import find_by_phone, store_contact
from .bitrix_rest import Ctx, RestError, method, ok
from .bitrix_state import Chat, ChatMessage, Connector, default_flags

SCOPE = "imopenlines"
_NAME = re.compile(r"^[^\W\d_]+(?:[ \-'][^\W\d_]+)*[ \-']?$")  # letters, spaces, hyphens, apostrophes
_BAD_STRUCTURE = "The incorrect structure of a message inside MESSAGES parameter"


def _truthy(value: Any, default: bool) -> bool:
    if value is None or value == "":
        return default
    return str(value).upper() not in ("N", "0", "FALSE")


def _required(p: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if p.get(k) in (None, "")]
    if missing:
        raise RestError("ERROR_ARGUMENT", f"Required parameter(s) missing: {', '.join(missing)}")


def _line(p: dict[str, Any]) -> int:
    try:
        return int(p["LINE"])
    except (TypeError, ValueError):
        raise RestError("ERROR_ARGUMENT", "LINE must be an integer") from None


def _registration_failed(code: str, description: str) -> dict[str, Any]:
    # bitrix24.md §1: register/unregister failures answer HTTP 200 with result.result=false plus the error.
    return {"result": {"result": False}, "error": code, "error_description": description}


@method("imconnector.register", SCOPE)
def register(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    connector_id = str(p.get("ID") or "").lower()
    if not connector_id:
        return _registration_failed("CONNECTOR_ID_REQUIRED", "Connector ID is required")
    if "." in connector_id:
        return _registration_failed(
            "APPLICATION_REGISTRATION_ERROR_POINT", "The connector ID must not contain '.'"
        )
    if not p.get("NAME"):
        return _registration_failed("NAME_REQUIRED", "NAME is required")
    icon = p.get("ICON")
    if not isinstance(icon, dict) or not str(icon.get("DATA_IMAGE", "")).startswith("data:image/svg+xml"):
        return _registration_failed("ICON_REQUIRED", "ICON[DATA_IMAGE] (an SVG data URI) is required")
    if not p.get("PLACEMENT_HANDLER"):
        return _registration_failed("NO_PLACEMENT_HANDLER", "PLACEMENT_HANDLER is required")
    flags = {flag: _truthy(p.get(flag), default) for flag, default in default_flags().items()}
    # Registering an existing ID again updates it.
    ctx.portal.connectors[connector_id] = Connector(
        connector_id, str(p["NAME"]), flags, str(p["PLACEMENT_HANDLER"])
    )
    return ok({"result": True})


@method("imconnector.unregister", SCOPE)
def unregister(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    connector_id = str(p.get("ID") or "").lower()
    if connector_id not in ctx.portal.connectors:
        return _registration_failed("APPLICATION_UNREGISTRATION_ERROR", "Connector is not registered")
    del ctx.portal.connectors[connector_id]
    for active in ctx.portal.active.values():
        active.discard(connector_id)
    return ok({"result": True})


@method("imconnector.activate", SCOPE)
def activate(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    _required(p, "CONNECTOR", "LINE")
    if "ACTIVE" not in p:
        raise RestError("ERROR_ARGUMENT", "Required parameter(s) missing: ACTIVE")
    connector, line = str(p["CONNECTOR"]).lower(), _line(p)
    if connector not in ctx.portal.connectors or line not in ctx.portal.active:
        raise RestError("ERROR_ARGUMENT", "Unknown connector or line")
    if _truthy(p["ACTIVE"], False):  # any non-empty value other than 0/N enables
        ctx.portal.active[line].add(connector)
    else:
        ctx.portal.active[line].discard(connector)
    return ok(True)


@method("imconnector.connector.data.set", SCOPE)
def data_set(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    _required(p, "CONNECTOR", "LINE", "DATA")
    if not isinstance(p["DATA"], dict):
        raise RestError("ERROR_ARGUMENT", "DATA must be an array")
    # DATA is written as a whole (bitrix24.md §1).
    ctx.portal.connector_data[(str(p["CONNECTOR"]).lower(), _line(p))] = dict(p["DATA"])
    return ok(True)


@method("imconnector.status", SCOPE)
def status(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    _required(p, "CONNECTOR")
    connector, line = str(p["CONNECTOR"]).lower(), int(p.get("LINE") or 0)
    active = connector in ctx.portal.active.get(line, set())
    configured = active and (connector, line) in ctx.portal.connector_data
    return ok(
        {"LINE": line, "CONNECTOR": connector, "ERROR": False, "CONFIGURED": configured, "STATUS": active}
    )


@method("imconnector.list", SCOPE)
def list_connectors(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    builtin = {"livechat": "Live chat", "telegrambot": "Telegram", "network": "Bitrix24.Network"}
    return ok({**builtin, **{c.id: c.name for c in ctx.portal.connectors.values()}})


def _active_line(ctx: Ctx, p: dict[str, Any]) -> tuple[str, int]:
    _required(p, "CONNECTOR", "LINE")
    connector, line = str(p["CONNECTOR"]).lower(), _line(p)
    if connector not in ctx.portal.active.get(line, set()):
        raise RestError("NOT_ACTIVE_LINE", "The line with this ID is inactive or does not exist")
    return connector, line


def _messages(
    p: dict[str, Any], parts: tuple[str, ...] = ("user", "message", "chat")
) -> list[dict[str, Any]]:
    items = formdata.as_list(p.get("MESSAGES"))
    if not items:
        raise RestError("ERROR_ARGUMENT", _BAD_STRUCTURE)
    for item in items:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), dict) for k in parts):
            raise RestError("ERROR_ARGUMENT", _BAD_STRUCTURE)
    return items


def _check_name(ctx: Ctx, user: dict[str, Any], key: str) -> None:
    value = str(user.get(key) or "")
    if value and ctx.options.strict_user_names and (len(value) > 25 or not _NAME.match(value)):
        raise RestError(
            "ERROR_ARGUMENT",
            f"user.{key} may contain only letters, spaces, hyphens and apostrophes, at most 25 characters",
        )


def _check_inbound(ctx: Ctx, item: dict[str, Any]) -> None:
    user, message, chat = item["user"], item["message"], item["chat"]
    if not user.get("id") or not chat.get("id") or not message.get("id"):
        raise RestError("ERROR_ARGUMENT", "user.id, message.id and chat.id are required")
    _check_name(ctx, user, "name")
    _check_name(ctx, user, "last_name")
    date = str(message.get("date") or "")
    if not date.isdigit() or int(date) > 10**11:
        raise RestError("ERROR_ARGUMENT", "message.date must be a Unix timestamp in seconds")
    files = formdata.as_list(message.get("files")) if message.get("files") not in (None, "") else []
    if files is None or any(
        not isinstance(f, dict) or not re.match(r"^https?://", str(f.get("url", ""))) for f in files
    ):
        raise RestError("ERROR_ARGUMENT", "message.files must be a list of {url, name} with http(s) URLs")
    if not str(message.get("text") or "").strip() and not files:
        raise RestError(
            "ERROR_IMCONNECTOR_NOT_ALL_THE_REQUIRED_DATA", "Not all the required data was transmitted"
        )


def _chat(ctx: Ctx, connector: str, line: int, item: dict[str, Any]) -> Chat:
    portal, user, chat_data = ctx.portal, item["user"], item["chat"]
    user_key = (connector, str(user["id"]))
    if user_key not in portal.external_users:
        portal.external_users[user_key] = portal.next_id("user")
    user_id = portal.external_users[user_key]
    group = portal.connectors[connector].flags.get("CHAT_GROUP", False)
    # USER_CODE = connector|line|chat.id|user (bitrix24.md §8); group chats are keyed by chat.id only.
    key: tuple[Any, ...] = (
        (connector, line, str(chat_data["id"])) if group else (connector, line, str(chat_data["id"]), user_id)
    )
    chat = portal.chats.get(key)
    if chat is None:
        chat = Chat(
            id=portal.next_id("chat"),
            external_id=str(chat_data["id"]),
            connector=connector,
            line=line,
            session_id=portal.next_id("session"),
            user_id=user_id,
            user=dict(user),
            name=str(chat_data.get("name") or ""),
        )
        portal.chats[key] = chat
        _crm_tracker(ctx, chat, item)
    chat.user.update(user)
    return chat


def _crm_tracker(ctx: Ctx, chat: Chat, item: dict[str, Any]) -> None:
    group = ctx.portal.connectors[chat.connector].flags.get("CHAT_GROUP", False)
    phone = str(item["user"].get("phone") or "")
    if not ctx.portal.spec.crm_tracker or group or item["message"].get("disable_crm") == "Y" or not phone:
        return
    if not find_by_phone(ctx.portal, [phone]):
        name = str(item["user"].get("name") or "Guest")
        store_contact(
            ctx.portal,
            {
                "NAME": name,
                "LAST_NAME": item["user"].get("last_name", ""),
                "SOURCE_ID": "IMOL",
                "PHONE": [{"VALUE": phone, "VALUE_TYPE": "MOBILE"}],
            },
        )


async def _download(ctx: Ctx, entry: dict[str, Any]) -> None:
    try:
        response = await ctx.client.get(entry["url"], timeout=15.0, follow_redirects=True)
        entry.update(
            download="ok" if response.status_code == 200 else "failed",
            status_code=response.status_code,
            content_type=response.headers.get("content-type"),
            size=len(response.content),
        )
    except Exception as exc:
        entry.update(download="failed", error=f"{type(exc).__name__}: {exc}")


@method("imconnector.send.messages", SCOPE)
def send_messages(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    connector, line = _active_line(ctx, p)
    items = _messages(p)
    for item in items:  # validate everything before changing anything
        _check_inbound(ctx, item)
        text = str(item["message"].get("text") or "")
        if any(marker in text for marker in ctx.options.refuse_texts):
            raise RestError("ERROR_ARGUMENT", "Message refused (sandbox fault injection: refuse_texts)")
    results = []
    for item in items:
        chat = _chat(ctx, connector, line, item)
        message = item["message"]
        external_id = str(message["id"])
        earlier = next(
            (m.id for m in chat.messages if external_id in m.external_ids and m.direction == "client"), None
        )
        files = []
        for f in formdata.as_list(message.get("files")) or []:
            entry = {
                "name": f.get("name"),
                "url": f["url"],
                "download": "pending" if ctx.options.fetch_files else "skipped",
            }
            files.append(entry)
            if ctx.options.fetch_files:
                ctx.background.spawn(_download(ctx, entry))
        author = " ".join(str(item["user"].get(k) or "") for k in ("name", "last_name")).strip() or "Guest"
        chat.messages.append(
            ChatMessage(
                id=ctx.portal.next_id("message"),
                direction="client",
                text=str(message.get("text") or ""),
                date=float(message["date"]),
                author=author,
                files=files,
                external_ids=[external_id],
                duplicate_of=earlier,
            )
        )
        extra = {k: message[k] for k in ("disable_crm",) if k in message}
        if item["user"].get("skip_phone_validate"):
            extra["skip_phone_validate"] = item["user"]["skip_phone_validate"]
        results.append(
            {
                "user": str(chat.user_id),
                "message": {k: message.get(k) for k in ("id", "date", "text", "files") if k in message},
                "chat": {"id": chat.external_id, **({"name": chat.name} if chat.name else {})},
                "extra": extra or [],
                "SUCCESS": True,
                "ERRORS": [],
                "session": {"ID": str(chat.session_id), "CHAT_ID": str(chat.id)},
            }
        )
    return ok({"SUCCESS": True, "DATA": {"RESULT": results}})


def _operator_message(ctx: Ctx, item: dict[str, Any]) -> tuple[Chat, ChatMessage] | None:
    im, chat_data = item["im"], item["chat"]
    try:
        chat = ctx.portal.chat_by_id(int(im.get("chat_id")))
        message_id = int(im.get("message_id"))
    except (TypeError, ValueError):
        raise RestError("ERROR_ARGUMENT", "im.chat_id and im.message_id must be integers") from None
    if chat is None or chat.external_id != str(chat_data.get("id")):
        return None
    message = next((m for m in chat.messages if m.id == message_id and m.direction == "operator"), None)
    return (chat, message) if message else None


def _status(ctx: Ctx, p: dict[str, Any], delivered: bool) -> dict[str, Any]:
    _active_line(ctx, p)
    for item in _messages(p, ("im", "message", "chat")):
        ids = formdata.as_list(item["message"].get("id"))
        if ids is None:  # bitrix24.md §4: message.id is an ARRAY even for one id
            raise RestError("ERROR_ARGUMENT", "message.id must be an array of external message ids")
        if delivered and not str(item["message"].get("date") or "").isdigit():
            raise RestError("ERROR_ARGUMENT", "message.date must be a Unix timestamp in seconds")
        found = _operator_message(ctx, item)
        im = item["im"]
        ctx.portal.status_calls.append(
            {
                "method": "delivery" if delivered else "reading",
                "chat_id": str(im.get("chat_id")),
                "message_id": str(im.get("message_id")),
                "ids": [str(i) for i in ids],
                "matched": found is not None,
                "at": time.time(),
            }
        )
        if found is None:
            ctx.portal.unmatched_statuses.append({"delivered": delivered, "item": item, "at": time.time()})
            continue
        message = found[1]
        if delivered:
            # "when processing the 'delivered' status, the message is also marked as 'read'" (bitrix24.md §4)
            message.delivered = message.read = True
            message.external_ids = [str(i) for i in ids]  # stored as CONNECTOR_MID
        else:
            message.reading_reported = True  # a no-op in Bitrix24: nothing changes for the operator
    return ok({"SUCCESS": True, "DATA": []})


@method("imconnector.send.status.delivery", SCOPE)
def status_delivery(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return _status(ctx, p, delivered=True)


@method("imconnector.send.status.reading", SCOPE)
def status_reading(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    return _status(ctx, p, delivered=False)


def _client_message(ctx: Ctx, connector: str, line: int, item: dict[str, Any]) -> ChatMessage:
    user_id = ctx.portal.external_users.get((connector, str(item["user"].get("id"))))
    external_id = str(item["message"].get("id"))
    for chat in ctx.portal.chats.values():
        if (
            chat.connector == connector
            and chat.line == line
            and chat.external_id == str(item["chat"].get("id"))
            and chat.user_id == user_id
        ):
            for message in chat.messages:
                if message.direction == "client" and external_id in message.external_ids:
                    return message
    raise RestError("ERROR_ARGUMENT", f"Message {external_id} was not found in this chat")


@method("imconnector.update.messages", SCOPE)
def update_messages(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    connector, line = _active_line(ctx, p)
    items = _messages(p)
    targets = [_client_message(ctx, connector, line, item) for item in items]
    for item, message in zip(items, targets, strict=True):
        message.text = str(item["message"].get("text") or message.text)
        message.edited = True
    return ok({"SUCCESS": True, "DATA": {"RESULT": [{"SUCCESS": True, "ERRORS": []} for _ in items]}})


@method("imconnector.delete.messages", SCOPE)
def delete_messages(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    connector, line = _active_line(ctx, p)
    items = _messages(p)
    targets = [_client_message(ctx, connector, line, item) for item in items]
    for message in targets:
        message.deleted = True
    return ok({"SUCCESS": True, "DATA": {"RESULT": [{"SUCCESS": True, "ERRORS": []} for _ in items]}})


@method("imconnector.chat.name.set", SCOPE)
def chat_name_set(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    connector, line = _active_line(ctx, p)
    _required(p, "CHAT_ID", "NAME")
    chats = [
        c
        for c in ctx.portal.chats.values()
        if c.connector == connector and c.line == line and c.external_id == str(p["CHAT_ID"])
    ]
    if not chats:
        raise RestError("CHAT_RENAMING_FAILED", "Chat was not found")
    for chat in chats:
        chat.name = str(p["NAME"])
    return ok({"SUCCESS": True, "DATA": {"RESULT": True}})
