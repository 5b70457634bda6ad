"""In-memory state of one Bitrix24 portal: tokens, connectors, Open Lines chats, CRM, records."""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .bitrix_optime import OperatingTime
from .bitrix_settings import BitrixOptions, PortalSpec
from .ratelimit import LeakyBucket, PeakPerSecond

CONNECTOR_FLAGS = (
    "DEL_EXTERNAL_MESSAGES",
    "EDIT_INTERNAL_MESSAGES",
    "DEL_INTERNAL_MESSAGES",
    "NEWSLETTER",
    "NEED_SYSTEM_MESSAGES",
    "NEED_SIGNATURE",
    "CHAT_GROUP",
)


def new_token() -> str:
    return secrets.token_hex(36)  # Bitrix24 tokens are long hex strings


@dataclass
class AccessToken:
    portal: str
    user_id: int
    expires_at: float
    revoked: bool = False
    client_id: str = (
        ""  # the app (OAuth client) the token was issued to; the OAuth server's app.info names it
    )


@dataclass
class RefreshToken:
    portal: str
    expires_at: float
    used: bool = False
    client_id: str = ""
    user_id: int = 1


@dataclass
class Connector:
    id: str
    name: str
    flags: dict[str, bool]
    placement_handler: str = ""


@dataclass
class ChatMessage:
    id: int  # internal message id
    direction: str  # client | operator | system
    text: str
    date: float
    author: str
    files: list[dict[str, Any]] = field(default_factory=list)
    external_ids: list[str] = field(default_factory=list)  # client: message.id; operator: CONNECTOR_MID
    delivered: bool = False
    read: bool = False
    reading_reported: bool = False
    edited: bool = False
    deleted: bool = False
    duplicate_of: int | None = None
    reply_to: int | None = None
    received_at: float = field(default_factory=time.time)  # when the stand-in stored it (fault suite)


@dataclass
class Chat:
    id: int  # internal Open Lines chat id (session.CHAT_ID / im.chat_id)
    external_id: str
    connector: str
    line: int
    session_id: int
    user_id: int  # internal id of the external (client) user
    user: dict[str, Any]
    name: str = ""
    messages: list[ChatMessage] = field(default_factory=list)


class PortalState:
    def __init__(self, spec: PortalSpec, options: BitrixOptions) -> None:
        self.spec = spec
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.current_access = ""
        self.current_refresh = ""
        self.connectors: dict[str, Connector] = {}
        self.active: dict[int, set[str]] = {spec.line_id: set()}  # line -> active connector ids
        self.connector_data: dict[tuple[str, int], dict[str, Any]] = {}
        self.external_users: dict[tuple[str, str], int] = {}
        self.operators: dict[str, int] = {}
        self.chats: dict[tuple[Any, ...], Chat] = {}
        self.contacts: dict[int, dict[str, Any]] = {}
        self.bindings: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.files: dict[str, tuple[bytes, str, str]] = {}  # id -> (data, mime, name) for operator files
        self.drive: dict[int, list[str]] = {}  # user id -> file ids of their Bitrix24 Drive (bitrix_disk.py)
        self.placements: list[dict[str, Any]] = []  # placement.bind (bitrix_disk.py)
        self.unmatched_statuses: list[dict[str, Any]] = []
        # Every imconnector.send.status.* item, in arrival order: {method, chat_id, message_id, ids, at}
        # (a yes/no flag per message could not show a receipt reported twice, or as the wrong kind).
        self.status_calls: list[dict[str, Any]] = []
        # Offline events (bitrix_offline.py): the queue of records and the event.offline.* calls on it.
        self.offline: list[dict[str, Any]] = []
        self.offline_log: list[dict[str, Any]] = []
        self.refresh_count = 0
        self.rate_limited = 0
        self.expired_token_hits = 0
        self.peak = PeakPerSecond()
        self._ids = {
            "user": itertools.count(1001),
            "chat": itertools.count(1801),
            "session": itertools.count(3001),
            "message": itertools.count(86001),
            "contact": itertools.count(1),
            "op": itertools.count(27),
            "phone": itertools.count(101),
            "file": itertools.count(501),
            "handler": itertools.count(555),
            "offline": itertools.count(1),
        }
        self.bucket = LeakyBucket(1, 1)
        self.operating = OperatingTime(options.operating_window_s)
        self.apply_limits(options)
        if spec.preregistered:
            self.connectors[spec.connector_id] = Connector(
                spec.connector_id, "WhatsApp (Zaptrix)", default_flags()
            )
            self.active[spec.line_id].add(spec.connector_id)
            self.connector_data[(spec.connector_id, spec.line_id)] = {
                "ID": f"{spec.connector_id}_line{spec.line_id}"
            }

    def apply_limits(self, options: BitrixOptions) -> None:
        drain = self.spec.rate_limit_drain_per_s or options.rate_limit_drain_per_s
        burst = self.spec.rate_limit_burst or options.rate_limit_burst
        self.bucket = LeakyBucket(drain, burst)
        if options.operating_window_s != self.operating.window_s:  # the baskets change size: start afresh
            self.operating = OperatingTime(options.operating_window_s)

    def next_id(self, kind: str) -> int:
        return next(self._ids[kind])

    def next_offline_id(self) -> int:
        return next(self._ids["offline"])

    def operator(self, name: str) -> int:
        if name not in self.operators:
            self.operators[name] = self.next_id("op")
        return self.operators[name]

    def issue(
        self,
        options: BitrixOptions,
        user_id: int = 1,
        with_refresh: bool = True,
        client_id: str | None = None,
        current: bool = True,
    ) -> tuple[str, str]:
        """New tokens of `client_id` (default: the portal's app) for `user_id` (1 is the admin);
        `current` makes them the pair the installer handed over (shown by GET /_sandbox/portals)."""
        now = time.time()
        app = client_id or self.spec.client_id
        access = new_token()
        self.access[access] = AccessToken(
            self.spec.member_id, user_id, now + options.access_token_ttl_s, client_id=app
        )
        refresh = ""
        if with_refresh:
            refresh = new_token()
            self.refresh[refresh] = RefreshToken(
                self.spec.member_id,
                now + options.refresh_token_ttl_days * 86400,
                client_id=app,
                user_id=user_id,
            )
            if current and app == self.spec.client_id:
                self.current_access, self.current_refresh = access, refresh
        return access, refresh

    def is_admin(self, user_id: int) -> bool:
        return user_id in self.spec.admin_user_ids

    def chat_by_external(self, external_id: str) -> Chat | None:
        found = [c for c in self.chats.values() if c.external_id == external_id]
        return found[-1] if found else None

    def chat_by_id(self, chat_id: int) -> Chat | None:
        return next((c for c in self.chats.values() if c.id == chat_id), None)

    def log_request(self, record: dict[str, Any]) -> None:
        self.requests.append(record)


def default_flags() -> dict[str, bool]:
    """bitrix24.md §1: every flag defaults to true except CHAT_GROUP."""
    return {flag: flag != "CHAT_GROUP" for flag in CONNECTOR_FLAGS}
