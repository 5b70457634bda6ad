"""The offline-event reconciler: operator messages whose OnImConnectorMessageAdd never reached the web.

Bitrix24 never resends an event (bitrix24.md §3). Install binds OnImConnectorMessageAdd a second time with
``event_type=offline``, so Bitrix24 also keeps every operator message in a per-app queue on the portal. This
loop drains that queue, per installed portal, every ``ZAPTRIX_BITRIX_OFFLINE_POLL_S``:

1. ``feature.get(CODE=rest_offline_extended)`` (cached): with it, ``event.offline.get(clear=0)`` reserves the
   records under our process id and we confirm them with ``event.offline.clear`` only once their envelopes
   are in Kafka (acks=all); records we cannot use are parked with ``event.offline.error``. Without it,
   ``clear=1`` deletes what is read: a crash (or Kafka down) between reading and producing loses that page
   (at most 50 records, each also sent online; counted as ``lost``).
2. Each record's ``EVENT_DATA`` is the ``data`` of the online event, so it goes through the web's own
   normalization (web/events.py) and chat checks (operator_chats.py): the same OperatorMessage envelope,
   the same event id ``b24:<member_id>:<message_id>`` and the same conversation key. The meta dispatcher
   dedupes by event id (CheckProcessed before sending, MarkProcessed after), and both copies share a key
   (one partition, handled in order), so a message that came online too is not sent twice.
3. The portal is the one we polled with its installer's token (token-keeper), never what a record says;
   a chat that is not that portal's conversation is refused as on the web.

One page per call, at most ``ZAPTRIX_BITRIX_OFFLINE_PAGES_PER_POLL`` pages per portal and poll, every request
through the portal's pacer: the reconciler takes a small share of the portal's REST budget (one request per
poll when idle). docs/reconciliation.md has the design and what stays UNCONFIRMED.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from zaptrix.kafka import EventProducer, PublishError
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcFailed
from zaptrix.v1 import events_pb2, token_keeper_pb2

from bitrix_ingress.bitrix_rest.client import BitrixError
from bitrix_ingress.bitrix_rest.portal import PortalClient
from bitrix_ingress.deps import Deps
from bitrix_ingress.formparse import as_list
from bitrix_ingress.metrics import OFFLINE_EVENTS, OFFLINE_POLLS
from bitrix_ingress.operator_chats import chat_key_cache, drop_refused, resolve_keys, resolve_replies
from bitrix_ingress.settings import DispatcherSettings
from bitrix_ingress.web import events as ev

log = get_logger(__name__)

PAGE = 50  # event.offline.get's default limit
MAX_EVENT_DATA_CHARS = 1_000_000  # as the web's largest body: a bigger record is parked, never parsed
MAX_MESSAGE_ID = 128
FEATURE_TTL_S = 3600.0
HEALTH_TTL_S = 1.0  # Kafka's health, asked again after this within a round spread over the interval


@dataclass
class Page:
    """What became of one page of records: MESSAGE_IDs to confirm, to park, and the envelopes to produce."""

    envelopes: list[events_pb2.Envelope] = field(default_factory=list)
    produced: list[str] = field(default_factory=list)
    confirm: list[str] = field(default_factory=list)  # nothing to relay: confirmed at once
    park: list[str] = field(default_factory=list)
    unnamed: list[str] = field(default_factory=list)  # record IDs without a usable MESSAGE_ID: cleared by ID
    retry: int = 0


def process_id_for(connector_id: str, member_id: str) -> str:
    """Our reservation id on a portal, stable across restarts: records reserved by a process that died before
    confirming them are read again by the next one (the docs: process_id re-selects the records not yet
    processed). Two replicas share it, so they may both read a record: the event id dedupes that."""
    digest = hashlib.sha256(f"{connector_id}|{member_id}".encode()).hexdigest()[:24]
    return f"zaptrix{digest}"


def _usable_id(value: Any) -> bool:
    return isinstance(value, str | int) and 0 < len(str(value)) <= MAX_MESSAGE_ID


def _epoch(timestamp: Any) -> str:
    try:
        return str(int(datetime.fromisoformat(str(timestamp)).timestamp()))
    except (ValueError, OverflowError):
        return ""  # normalize() takes the current time


class OfflineEvents:
    def __init__(
        self,
        settings: DispatcherSettings,
        deps: Deps,
        portals: PortalClient,
        producer: EventProducer,
        topic: str,
    ) -> None:
        self.settings = settings
        self.deps = deps
        self.portals = portals
        self.producer = producer
        self.topic = topic
        self.chat_keys = chat_key_cache()
        self._extended: dict[str, tuple[bool, float]] = {}
        self._health: tuple[bool, float] = (False, -HEALTH_TTL_S)  # (healthy, when asked: loop time)

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self, stopped: asyncio.Event) -> None:
        """Poll every portal once per interval until ``stopped``, their polls spread over the interval (not
        all at once: a burst of one REST call per portal stalled the messages behind it, ~0.3 s at 100
        portals on two cores); a failure is logged and waits for the next poll."""
        interval = self.settings.bitrix_offline_poll_s
        if interval <= 0:
            log.info("offline-event reconciler disabled (ZAPTRIX_BITRIX_OFFLINE_POLL_S=0)")
            return
        loop = asyncio.get_running_loop()
        while not stopped.is_set():
            started = loop.time()
            try:
                await self.poll_all(spread_s=interval)
            except Exception:  # never the end of the loop: the queue keeps the records
                log.exception("offline-event poll failed")
            # The next round one interval after this one began (each portal about once per interval).
            wait = max(interval - (loop.time() - started), interval / 10)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), wait)

    async def poll_all(self, spread_s: float = 0.0) -> None:
        """Drain every active portal's queue; the n-th of N portals starts n x spread_s / N later."""
        if not await self._kafka_healthy(fresh=True):  # a read without clear=0 deletes what we cannot produce
            OFFLINE_POLLS.labels("kafka_unavailable").inc()
            log.warning("offline events not read: Kafka is unavailable")
            return
        listed = await self.deps.list_portals()
        active = [p for p in listed.portals if p.state == token_keeper_pb2.PORTAL_STATE_ACTIVE]
        step = spread_s / len(active) if active else 0.0
        await asyncio.gather(
            *(self._poll_logged(p.member_id, p.domain, n * step) for n, p in enumerate(active))
        )

    async def _kafka_healthy(self, fresh: bool = False) -> bool:
        """The producer's health; within a spread round asked at most once a second (before each portal)."""
        now = asyncio.get_running_loop().time()
        if fresh or now - self._health[1] >= HEALTH_TTL_S:
            self._health = (await self.producer.healthy(), now)
        return self._health[0]

    async def _poll_logged(self, member_id: str, domain: str, delay_s: float = 0.0) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
            if not await self._kafka_healthy():  # Kafka may have gone since the round began
                OFFLINE_POLLS.labels("kafka_unavailable").inc()
                return
        try:
            await self.poll(member_id, domain)
            OFFLINE_POLLS.labels("ok").inc()
        except (BitrixError, RpcFailed, PublishError) as exc:
            OFFLINE_POLLS.labels("failed").inc()
            log.warning("offline events of a portal not drained", member_id=member_id, error=str(exc))
        except Exception:
            OFFLINE_POLLS.labels("failed").inc()
            log.exception("offline events of a portal not drained", member_id=member_id)

    # --- one portal -------------------------------------------------------------------------------

    async def extended(self, member_id: str) -> bool:
        """feature.get(rest_offline_extended), checked once an hour per portal."""
        cached = self._extended.get(member_id)
        now = asyncio.get_running_loop().time()
        if cached and now - cached[1] < FEATURE_TTL_S:
            return cached[0]
        answer = await self.portals.call(member_id, "feature.get", {"CODE": "rest_offline_extended"})
        value = isinstance(answer, dict) and str(answer.get("value", "")).upper() == "Y"
        self._extended[member_id] = (value, now)
        return value

    async def poll(self, member_id: str, domain: str) -> None:
        """Drain up to bitrix_offline_pages_per_poll pages of the portal's queue."""
        extended = await self.extended(member_id)
        ours = process_id_for(self.settings.connector_id, member_id)
        for _ in range(self.settings.bitrix_offline_pages_per_poll):
            params: dict[str, Any] = {
                "filter": {"=EVENT_NAME": ev.MESSAGE_ADD},
                "limit": PAGE,
                "clear": 0 if extended else 1,
            }
            if extended:
                params["process_id"] = ours
            answer = await self.portals.call(member_id, "event.offline.get", params)
            if not isinstance(answer, dict):
                return
            records = as_list(answer.get("events"))[:PAGE]  # a longer answer is not what we asked for
            if not records:
                return
            process_id = str(answer.get("process_id") or ours)
            page = await self.read_page(member_id, domain, records, can_retry=extended)
            await self._produce(page, extended)
            if extended:
                await self._settle(member_id, process_id, page)
            if page.retry or len(records) < PAGE:
                return  # the rest waits for the next poll

    async def _produce(self, page: Page, extended: bool) -> None:
        if not page.envelopes:
            return
        try:
            await self.producer.publish(self.topic, page.envelopes)
        except PublishError:
            if not extended:  # read with clear=1: Bitrix24 has already forgotten these
                OFFLINE_EVENTS.labels("lost").inc(len(page.produced))
                log.error(
                    "offline events read but NOT produced (Kafka); without rest_offline_extended Bitrix24 "
                    "deleted them on reading",
                    message_ids=page.produced,
                )
            else:
                OFFLINE_EVENTS.labels("retried").inc(len(page.produced))
            raise
        OFFLINE_EVENTS.labels("produced").inc(len(page.produced))

    async def _settle(self, member_id: str, process_id: str, page: Page) -> None:
        """Confirm what is in Kafka (or needed nothing), park what we cannot use. Both are idempotent: a
        failure here only means the records are read (and deduped) again."""
        if page.park:
            await self.portals.call(
                member_id, "event.offline.error", {"process_id": process_id, "message_id": page.park}
            )
        done = page.produced + page.confirm
        if done:
            await self.portals.call(
                member_id, "event.offline.clear", {"process_id": process_id, "message_id": done}
            )
        if page.unnamed:  # error takes MESSAGE_IDs only; left reserved, they would fill every later page
            await self.portals.call(
                member_id, "event.offline.clear", {"process_id": process_id, "id": page.unnamed}
            )

    # --- records → envelopes ----------------------------------------------------------------------

    async def read_page(self, member_id: str, domain: str, records: list[Any], *, can_retry: bool) -> Page:
        page = Page()
        auth = ev.Auth(member_id=member_id, application_token="", domain=domain, access_token="")
        for record in records:
            await self._read_one(auth, record, page, can_retry=can_retry)
        return page

    async def _read_one(self, auth: ev.Auth, record: Any, page: Page, *, can_retry: bool) -> None:
        if not isinstance(record, dict):
            OFFLINE_EVENTS.labels("malformed").inc()  # cannot be named: left to Bitrix24's 30-day cleanup
            log.warning("offline event that is not a record left alone", member_id=auth.member_id)
            return
        message_id = record.get("MESSAGE_ID")
        if not _usable_id(message_id):
            OFFLINE_EVENTS.labels("malformed").inc()
            record_id = record.get("ID")
            if _usable_id(record_id):
                page.unnamed.append(str(record_id))
            log.warning("offline event without a usable MESSAGE_ID dropped", member_id=auth.member_id)
            return
        message_id = str(message_id)
        reason = self._unusable(record)
        if reason:
            self._park(page, auth.member_id, message_id, "malformed", reason)
            return
        form = {
            "event": ev.MESSAGE_ADD,
            "data": record["EVENT_DATA"],
            "ts": _epoch(record.get("TIMESTAMP_X")),
        }
        try:
            normalized = ev.normalize(
                form, auth, connector_id=self.settings.connector_id, read_on_reply=False
            )
        except ev.EventError as exc:
            self._park(page, auth.member_id, message_id, "malformed", str(exc))
            return
        for why in normalized.skipped:
            log.warning(
                "offline event item left out", member_id=auth.member_id, message_id=message_id, reason=why
            )
        if not normalized.pending:  # e.g. only our own failure notice: nothing to relay
            OFFLINE_EVENTS.labels("ignored").inc()
            page.confirm.append(message_id)
            return
        try:
            refused = await resolve_keys(
                self.deps, self.chat_keys, normalized, key_by_chat_if_unavailable=not can_retry
            )
        except RpcFailed as exc:  # reserved: read again next poll, keyed properly then
            OFFLINE_EVENTS.labels("retried").inc()
            page.retry += 1
            log.warning("mapper unavailable: offline event left for the next poll", error=exc.reason)
            return
        if refused:
            drop_refused(ev.MESSAGE_ADD, normalized, refused)
            if not normalized.pending:
                self._park(page, auth.member_id, message_id, "refused", "no chat of this portal")
                return
        await resolve_replies(self.deps, normalized)
        page.envelopes.extend(p.envelope for p in normalized.pending)
        page.produced.append(message_id)

    @staticmethod
    def _unusable(record: dict[str, Any]) -> str:
        name = str(record.get("EVENT_NAME") or "").upper()
        if name != ev.MESSAGE_ADD:
            return f"event {name[:40]!r} is not {ev.MESSAGE_ADD}"
        data = record.get("EVENT_DATA")
        try:
            size = len(json.dumps(data))
        except (TypeError, ValueError, RecursionError):
            return "EVENT_DATA is not JSON"
        if size > MAX_EVENT_DATA_CHARS:
            return f"EVENT_DATA of {size} characters (more than {MAX_EVENT_DATA_CHARS})"
        if not isinstance(data, dict):
            return "EVENT_DATA is not a map"
        return ""

    @staticmethod
    def _park(page: Page, member_id: str, message_id: str, outcome: str, reason: str) -> None:
        OFFLINE_EVENTS.labels(outcome).inc()
        page.park.append(message_id)
        log.warning(
            "offline event parked (event.offline.error)",
            member_id=member_id,
            message_id=message_id,
            outcome=outcome,
            reason=reason[:300],
        )
