"""Bitrix24 connector events (form-encoded, PHP-style keys) → zaptrix.v1 envelopes. Pure: no I/O.

Which event becomes which envelope, with which event id, and the bounds per event: docs/bitrix-ingress.md
("POST /webhooks/bitrix24/outbound"). One malformed message among several is skipped (and reported)
rather than failing the others: Bitrix24 never resends an event.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from zaptrix.kafka import new_envelope
from zaptrix.v1 import events_pb2

from bitrix_ingress.formparse import as_list, get_ci, get_path, get_str, is_index
from bitrix_ingress.text import is_notice

MESSAGE_ADD = "ONIMCONNECTORMESSAGEADD"
MESSAGE_UPDATE = "ONIMCONNECTORMESSAGEUPDATE"
MESSAGE_DELETE = "ONIMCONNECTORMESSAGEDELETE"
DIALOG_FINISH = "ONIMCONNECTORDIALOGFINISH"
STATUS_DELETE = "ONIMCONNECTORSTATUSDELETE"
LINE_DELETE = "ONIMCONNECTORLINEDELETE"
APP_INSTALL = "ONAPPINSTALL"
APP_UNINSTALL = "ONAPPUNINSTALL"

# What install binds to the outbound URL (event.bind takes the CamelCase names).
OUTBOUND_EVENTS = (
    "OnImConnectorMessageAdd",
    "OnImConnectorMessageUpdate",
    "OnImConnectorMessageDelete",
    "OnImConnectorStatusDelete",
    "OnImConnectorLineDelete",
    "OnImConnectorDialogFinish",
)
HANDLED = frozenset(
    {MESSAGE_ADD, MESSAGE_UPDATE, MESSAGE_DELETE, DIALOG_FINISH, STATUS_DELETE, LINE_DELETE, APP_UNINSTALL}
)

MAX_MESSAGES = 100  # messages (or dialogs) taken from one event
MAX_CHATS = 20  # distinct chats per event: each costs a mapper lookup before the answer
MAX_TEXT = 32_768  # operator text characters kept (WhatsApp takes 4 x 4,096 of them per message)

_SECRET_AUTH_KEYS = frozenset({"access_token", "refresh_token", "application_token", "auth_id", "refresh_id"})


class EventError(ValueError):
    """The event cannot be read; the message is safe to return in a 400 answer."""


@dataclass(frozen=True)
class Auth:
    member_id: str
    application_token: str
    domain: str
    access_token: str  # may be empty: events caused by automation carry no tokens

    @classmethod
    def from_form(cls, form: dict[str, Any]) -> Auth:
        auth = form.get("auth")
        if not isinstance(auth, dict):
            auth = {}
        return cls(
            member_id=get_str(auth, "member_id") or get_str(form, "member_id"),
            application_token=get_str(auth, "application_token"),
            domain=get_str(auth, "domain"),
            access_token=get_str(auth, "access_token"),
        )


@dataclass
class Pending:
    """An envelope whose Kafka key is still to be resolved (``external_chat_id``) or already known."""

    envelope: events_pb2.Envelope
    external_chat_id: str = ""
    key: str = ""


@dataclass
class Normalized:
    event: str
    member_id: str
    pending: list[Pending] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # why items were left out (logged, counted)
    reply_lookups: dict[int, str] = field(default_factory=dict)  # pending index -> internal REPLY_ID


def event_name(form: dict[str, Any]) -> str:
    return get_str(form, "event").upper()


def redacted(form: dict[str, Any]) -> dict[str, Any]:
    """The form without secrets, for the ERROR log of an event we could not accept."""
    out = dict(form)
    auth = out.get("auth")
    if isinstance(auth, dict):
        out["auth"] = {k: ("[redacted]" if k.lower() in _SECRET_AUTH_KEYS else v) for k, v in auth.items()}
    for key in list(out):
        if key.upper() in {"AUTH_ID", "REFRESH_ID", "APPLICATION_TOKEN"}:
            out[key] = "[redacted]"
    return out


def _ts(form: dict[str, Any]) -> tuple[str, datetime]:
    raw = get_str(form, "ts")
    try:
        seconds = int(float(raw))
        if 0 < seconds < 10**11:
            return str(seconds), datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError):  # "nan", "1e400"
        pass
    now = datetime.now(UTC)
    return str(int(now.timestamp())), now


def _int(value: str, what: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise EventError(f"{what} is not an integer: {value[:40]!r}") from exc
    if number < 0 or number > 2**62:
        raise EventError(f"{what} out of range")
    return number


def _id(value: str) -> str:
    """An id as we use it in keys: no separators that would make event ids ambiguous."""
    return value.replace(":", "_")[:200]


def _messages(data: Any) -> list[Any]:
    return as_list(get_ci(data, "MESSAGES") if get_ci(data, "MESSAGES") is not None else get_ci(data, "DATA"))


def _files(message: Any) -> list[events_pb2.BitrixFile]:
    out = []
    for item in as_list(get_ci(message, "files")):
        if not isinstance(item, dict):
            continue
        link = get_str(item, "link") or get_str(item, "url") or get_str(item, "urlDownload")
        if not link:
            continue
        name = get_str(item, "name") or "file"
        size_raw = get_str(item, "size")
        size = int(size_raw) if is_index(size_raw) and len(size_raw) < 18 else 0
        mime = get_str(item, "mime_type") or mimetypes.guess_type(name)[0] or ""
        out.append(
            events_pb2.BitrixFile(name=name, type=get_str(item, "type"), link=link, size=size, mime_type=mime)
        )
    return out


def _bounded(items: list[Any], what: str, skipped: list[str]) -> list[Any]:
    """The first MAX_MESSAGES items; one reason for the rest."""
    if len(items) > MAX_MESSAGES:
        skipped.append(
            f"{what} {MAX_MESSAGES} to {len(items) - 1}: more than {MAX_MESSAGES} in one event, left out"
        )
    return items[:MAX_MESSAGES]


class _Chats:
    """The distinct chats of one event, at most MAX_CHATS; counts what is left out for a further chat."""

    def __init__(self) -> None:
        self.seen: dict[str, None] = {}  # ordered set
        self.refused = 0

    def admit(self, chat: str) -> bool:
        if chat in self.seen:
            return True
        if len(self.seen) >= MAX_CHATS:
            self.refused += 1
            return False
        self.seen[chat] = None
        return True

    def report(self, what: str, skipped: list[str]) -> None:
        if self.refused:
            skipped.append(f"{self.refused} {what}: more than {MAX_CHATS} chats in one event, left out")


def _common(data: Any) -> tuple[str, int]:
    connector = get_str(data, "CONNECTOR") or get_str(data, "connector")
    line_raw = get_str(data, "LINE") or get_str(data, "line")
    line = _int(line_raw, "data[LINE]") if line_raw else 0
    return connector.lower(), line


def _operator_read(
    auth: Auth, chat: str, ts_text: str, occurred: datetime, *, replying: bool = False
) -> Pending:
    """OperatorRead of one chat: the operator replied in it (``replying``), or its dialog was finished."""
    env = new_envelope(
        f"b24-read:{_id(auth.member_id)}:{_id(chat)}:{ts_text}",
        "-",
        events_pb2.PLATFORM_BITRIX24,
        occurred,
        operator_read=events_pb2.OperatorRead(
            member_id=auth.member_id, external_chat_id=chat, replying=replying
        ),
    )
    return Pending(env, external_chat_id=chat)


def normalize(form: dict[str, Any], auth: Auth, *, connector_id: str, read_on_reply: bool) -> Normalized:
    """The envelopes for one authenticated event. Raises EventError when nothing usable is in it."""
    event = event_name(form)
    out = Normalized(event=event, member_id=auth.member_id)
    ts_text, occurred = _ts(form)
    data = form.get("data")
    member = _id(auth.member_id)

    if event in (MESSAGE_ADD, MESSAGE_UPDATE, MESSAGE_DELETE):
        if not isinstance(data, dict):
            raise EventError("data is missing or not a map")
        connector, line = _common(data)
        connector = connector or connector_id
        items = _messages(data)
        if not items:
            raise EventError("data[MESSAGES] (or data[DATA]) is missing or empty")
        items = _bounded(items, "messages", out.skipped)
        chats = _Chats()
        notices = 0
        for index, item in enumerate(items):
            try:
                pending, reply_id = _message_item(event, item, auth, connector, line, occurred, member)
            except EventError as exc:
                out.skipped.append(f"message {index}: {exc}")
                continue
            if pending is None:
                notices += 1
                out.skipped.append(f"message {index}: our own failure notice, not relayed")
                continue
            if not chats.admit(pending.external_chat_id):
                continue
            if reply_id:
                out.reply_lookups[len(out.pending)] = reply_id
            out.pending.append(pending)
        chats.report("messages", out.skipped)
        if not out.pending and notices < len(items):
            raise EventError("; ".join(out.skipped)[:500])
        if read_on_reply and event == MESSAGE_ADD:
            for chat in chats.seen:
                out.pending.append(_operator_read(auth, chat, ts_text, occurred, replying=True))
        return out

    if event == DIALOG_FINISH:
        if not isinstance(data, dict):
            raise EventError("data is missing or not a map")
        chats = _Chats()
        for index, item in enumerate(_bounded(_messages(data), "dialogs", out.skipped)):
            chat = get_str(item, "connector", "chat_id") or get_str(item, "chat", "id")
            if not chat:
                out.skipped.append(f"dialog {index}: no connector.chat_id")
                continue
            if chats.admit(chat):
                out.pending.append(_operator_read(auth, chat, ts_text, occurred))
        chats.report("dialogs", out.skipped)
        return out

    if event == STATUS_DELETE:
        if not isinstance(data, dict):
            raise EventError("data is missing or not a map")
        connector, line = _common(data)
        connector = connector or connector_id
        event_id = f"b24-status-del:{member}:{_id(connector)}:{line}:{ts_text}"
        out.pending.append(_line_removed(event_id, occurred, auth.member_id, connector, line))
        return out

    if event == LINE_DELETE:
        if isinstance(data, dict):
            line_raw = get_str(data, "LINE") or get_str(data, "line") or get_str(data, "LINE_ID")
        else:
            line_raw = get_str(form, "data")
        if not line_raw:
            raise EventError("data (the line id) is missing")
        line = _int(line_raw, "data")
        event_id = f"b24-line-del:{member}:{line}:{ts_text}"
        out.pending.append(_line_removed(event_id, occurred, auth.member_id, connector_id, line))
        return out

    if event == APP_UNINSTALL:
        env = new_envelope(
            f"b24-uninstall:{member}:{ts_text}",
            "-",
            events_pb2.PLATFORM_BITRIX24,
            occurred,
            line_removed=events_pb2.LineRemoved(
                member_id=auth.member_id, connector_id=connector_id, line_id=0
            ),
        )
        out.pending.append(Pending(env, key=f"portal:{auth.member_id}"))
        return out

    return out  # an event we do not handle: acknowledged, nothing produced


def _line_removed(event_id: str, occurred: datetime, member_id: str, connector: str, line: int) -> Pending:
    """A connector removed from one Open Line (keyed by the line: the dispatcher needs no conversation)."""
    removed = events_pb2.LineRemoved(member_id=member_id, connector_id=connector, line_id=line)
    env = new_envelope(event_id, "-", events_pb2.PLATFORM_BITRIX24, occurred, line_removed=removed)
    return Pending(env, key=f"line:{member_id}:{line}")


def _message_item(
    event: str, item: Any, auth: Auth, connector: str, line: int, occurred: datetime, member: str
) -> tuple[Pending | None, str]:
    if not isinstance(item, dict):
        raise EventError("not a map")
    bitrix_chat_id = get_str(item, "im", "chat_id")
    bitrix_message_id = get_str(item, "im", "message_id")
    external_chat_id = get_str(item, "chat", "id")
    message = get_path(item, "message")
    if not isinstance(message, dict):
        message = {}
    if not external_chat_id:
        raise EventError("chat.id (our external chat id) is missing")
    text = get_str(message, "text")[:MAX_TEXT] if isinstance(get_path(message, "text"), str) else ""
    external_ids = [
        str(v).strip() for v in as_list(get_ci(message, "id")) if isinstance(v, str | int) and str(v).strip()
    ]

    if event == MESSAGE_ADD:
        if not bitrix_message_id:
            raise EventError("im.message_id is missing")
        files = _files(message)
        if not text and not files:
            raise EventError("neither text nor files")
        if is_notice(text) and not files:
            return None, ""
        reply_id = get_str(message, "params", "REPLY_ID") or get_str(message, "params", "reply_id")
        env = new_envelope(
            f"b24:{member}:{_id(bitrix_message_id)}",
            "-",
            events_pb2.PLATFORM_BITRIX24,
            occurred,
            operator_message=events_pb2.OperatorMessage(
                member_id=auth.member_id,
                domain=auth.domain,
                connector_id=connector,
                line_id=line,
                bitrix_chat_id=bitrix_chat_id,
                bitrix_message_id=bitrix_message_id,
                external_chat_id=external_chat_id,
                operator_user_id=get_str(message, "user_id"),
                text_bbcode=text,
                files=files,
            ),
        )
        return Pending(env, external_chat_id=external_chat_id), reply_id

    ref = bitrix_message_id or (external_ids[0] if external_ids else "")
    if not ref:
        raise EventError("neither im.message_id nor message.id")
    which: dict[str, Any] = {  # the message an edit or a delete is about
        "member_id": auth.member_id,
        "connector_id": connector,
        "line_id": line,
        "bitrix_chat_id": bitrix_chat_id,
        "bitrix_message_id": bitrix_message_id,
        "external_chat_id": external_chat_id,
        "external_message_ids": external_ids,
    }
    if event == MESSAGE_UPDATE:
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        env = new_envelope(
            f"b24-edit:{member}:{_id(ref)}:{digest}",
            "-",
            events_pb2.PLATFORM_BITRIX24,
            occurred,
            operator_message_edit=events_pb2.OperatorMessageEdit(**which, text_bbcode=text),
        )
    else:
        env = new_envelope(
            f"b24-del:{member}:{_id(ref)}",
            "-",
            events_pb2.PLATFORM_BITRIX24,
            occurred,
            operator_message_delete=events_pb2.OperatorMessageDelete(**which),
        )
    return Pending(env, external_chat_id=external_chat_id), ""
