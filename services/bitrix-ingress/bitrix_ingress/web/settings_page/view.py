"""What the page shows, gathered for one portal and line: its numbers with their health and activity, the
portal's dead letters, and the outcome of the action just taken."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from zaptrix.binding import BindResult, ChannelBinder, NumberHealth
from zaptrix.dead_letters import DeadLetter, DeadLetters, Filter
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcError, call
from zaptrix.v1 import mapper_pb2

from bitrix_ingress.web.settings_page.session import Session

log = get_logger(__name__)

DEAD_LETTERS_SHOWN = 50
DEAD_LETTER_SCAN_S = 8.0
HEALTH_S = 8.0  # a slow Graph API or webhook URL costs the health panel, never the page (30 s response limit)


@dataclass
class NumberView:
    channel: mapper_pb2.Channel
    health: NumberHealth | None = None
    activity: mapper_pb2.ChannelActivity | None = None
    templates: int | None = None  # approved templates in the catalogue; None: not known now


@dataclass
class Notice:
    kind: str  # "ok" | "error"
    key: str  # catalogue key
    values: dict[str, str] = field(default_factory=dict)


@dataclass
class PageView:
    session: Session
    token: str
    numbers: list[NumberView] = field(default_factory=list)
    dead_letters: list[DeadLetter] | None = None  # None: could not be read
    notice: Notice | None = None
    bind_result: BindResult | None = None
    bind_errors: dict[str, str] = field(default_factory=dict)  # field -> catalogue key
    bind_values: dict[str, str] = field(default_factory=dict)  # non-secret fields typed in, kept on error
    confirm: DeadLetter | None = None  # a replay waiting for confirmation
    auth_id: str = ""  # the placement's token, for the line switch (BX24.getAuth refreshes it)
    sdk_url: str = ""


async def line_numbers(
    binder: ChannelBinder, mapper: object, session: Session, rpc_timeout_s: float
) -> list[NumberView]:
    """The portal's numbers on this line, each with its health (Graph checks) and activity (mapper)."""
    listed: mapper_pb2.ListChannelsResponse = await call(
        "mapper ListChannels",
        mapper.ListChannels(  # type: ignore[attr-defined]
            mapper_pb2.ListChannelsRequest(member_id=session.member_id), timeout=rpc_timeout_s
        ),
    )
    views = [NumberView(c) for c in listed.channels if c.line_id == session.line]
    if not views:
        return views
    try:
        activity: mapper_pb2.GetChannelActivityResponse = await call(
            "mapper GetChannelActivity",
            mapper.GetChannelActivity(  # type: ignore[attr-defined]
                mapper_pb2.GetChannelActivityRequest(
                    member_id=session.member_id, phone_number_ids=[v.channel.phone_number_id for v in views]
                ),
                timeout=rpc_timeout_s,
            ),
        )
        by_id = {a.phone_number_id: a for a in activity.channels}
    except RpcError as exc:
        log.warning("settings page: no channel activity", error=exc.reason)
        by_id = {}

    async def fill(view: NumberView) -> None:
        pid = view.channel.phone_number_id
        view.activity = by_id.get(pid)
        try:
            view.health = await asyncio.wait_for(binder.health(session.member_id, pid), HEALTH_S)
        except (RpcError, LookupError, TimeoutError) as exc:
            log.warning("settings page: health not checked", phone_number_id=pid, error=str(exc))
        try:  # the catalogue the chat's picker and /template use (docs/templates.md)
            listed: mapper_pb2.ListTemplatesResponse = await call(
                "mapper ListTemplates",
                mapper.ListTemplates(  # type: ignore[attr-defined]
                    mapper_pb2.ListTemplatesRequest(
                        member_id=session.member_id, phone_number_id=pid, approved_only=True
                    ),
                    timeout=rpc_timeout_s,
                ),
            )
            view.templates = len(listed.templates)
        except RpcError as exc:
            log.warning("settings page: no template count", phone_number_id=pid, error=exc.reason)

    await asyncio.gather(*(fill(v) for v in views))
    return views


async def portal_dead_letters(dead_letters: DeadLetters, member_id: str) -> list[DeadLetter] | None:
    """The portal's dead letters not yet replayed (newest first), or None when Kafka cannot be read now."""
    try:
        found = await asyncio.wait_for(
            dead_letters.find(Filter(member_id=member_id, replayed=False)), DEAD_LETTER_SCAN_S
        )
    except Exception as exc:  # Kafka down or slow: the rest of the page still works
        log.warning("settings page: dead letters not read", error=f"{type(exc).__name__}: {exc}"[:300])
        return None
    return list(reversed(found))[:DEAD_LETTERS_SHOWN]
