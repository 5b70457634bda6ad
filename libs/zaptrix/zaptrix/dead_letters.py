"""Dead letters of every flow: list (filtered by portal, event type, reason), show one, replay one or many.

Shared by `zaptrix-admin dead-letters` and the connector settings page. A dead letter is named by where it
is, `<flow>:<partition>:<offset>` of its flow's dead-letter topic (stable while the topic keeps it: 30 days
in the chart). Reading never commits anything: listing is a scan from the start to the end offsets taken
when it begins.

Portal of a dead letter (the envelope carries no portal header): events from Bitrix24 name their portal
(`member_id` in the payload); events from WhatsApp name their number (`phone_number_id`), and their portal
is the one that number is bound to now in the mapper - the portal a replay would deliver to. A record that
cannot be decoded, or a number bound to no portal, has no portal: only an operator sees it (a filter by
portal never matches it).

Every replay is audited before it happens: a DeadLetterReplayed envelope (who, when, what, why) on
`<prefix>.admin-audit.v1`, keyed by the portal and kept forever. The audit is a Kafka topic rather than a
mapper table because the replay itself is a Kafka write (one system to reach, nothing else that can be down
half-way), it is append-only by nature (an audit entry cannot be updated), and it needs no migration. A
dead letter with an audit entry "replayed" counts as replayed: replaying many skips it (unless asked).
If the audit entry cannot be written, nothing is replayed.
"""

from __future__ import annotations

import getpass
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from google.protobuf.json_format import MessageToDict

from zaptrix.kafka.connection import connection_kwargs
from zaptrix.kafka.effects import read_effects
from zaptrix.kafka.envelope import (
    H_ATTEMPT,
    H_DLQ_AT,
    H_DLQ_REASON,
    H_DLQ_SOURCE,
    H_EFFECTS,
    H_EVENT_ID,
    H_EVENT_TYPE,
    EnvelopeError,
    decode,
    event_type,
    header,
    new_envelope,
    without_bookkeeping,
)
from zaptrix.kafka.producer import EventProducer, PublishError
from zaptrix.kafka.topics import Flow, audit_topic, topics_for
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcNotFound, call
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2
from zaptrix.v1.mapper_pb2 import GetChannelRequest
from zaptrix.v1.mapper_pb2_grpc import MapperStub

log = get_logger(__name__)

PortalResolver = Callable[[str], Awaitable[str | None]]
"""phone_number_id -> member_id of the portal the number is bound to (None: bound to none)."""

Outcome = Literal["replayed", "would_replay", "failed"]
_FETCH_MS = 500
_IDLE_ROUNDS = 20  # empty fetches in a row before a scan gives up on offsets it cannot reach (10 s)


class DeadLetterNotFound(LookupError):
    """No such dead letter (bad id, gone with the topic's retention, or another portal's)."""


class AuditUnavailable(RuntimeError):
    """The audit entry could not be written: nothing was replayed."""


@dataclass(frozen=True)
class AuditEntry:
    dead_letter_id: str
    flow: str
    event_id: str
    event_type: str
    member_id: str
    reason: str
    actor: str
    why: str
    outcome: str
    target_topic: str
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "at": self.at.isoformat()}


@dataclass(frozen=True)
class DeadLetter:
    id: str  # "<flow>:<partition>:<offset>"
    flow: Flow
    partition: int
    offset: int
    event_id: str  # "" when undecodable
    event_type: str  # "unknown" when undecodable
    member_id: str | None  # the portal, None when unknown
    phone_number_id: str
    reason: str
    dead_at: datetime | None
    attempt: int
    source_topic: str
    replays: tuple[AuditEntry, ...] = ()
    key: bytes | None = field(default=None, repr=False)
    value: bytes | None = field(default=None, repr=False)
    headers: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    @property
    def replayed(self) -> bool:
        return any(a.outcome == "replayed" for a in self.replays)

    def summary(self) -> dict[str, Any]:
        """JSON-safe, without the payload."""
        return {
            "id": self.id,
            "flow": self.flow.value,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "member_id": self.member_id,
            "phone_number_id": self.phone_number_id,
            "reason": self.reason,
            "dead_at": self.dead_at.isoformat() if self.dead_at else None,
            "attempt": self.attempt,
            "source_topic": self.source_topic,
            "replayed": self.replayed,
            "replays": [a.as_dict() for a in self.replays],
        }

    def detail(self) -> dict[str, Any]:
        """The summary with the decoded event, the effects already done and the headers (no secrets: events
        carry none; the value is what the platform sent us)."""
        env = _decoded(self.value, self.headers)
        return {
            **self.summary(),
            "event": MessageToDict(env, preserving_proto_field_name=True) if env else None,
            "effects": read_effects(self.headers),
            "headers": {k: v.decode(errors="replace") for k, v in self.headers if k != H_EFFECTS},
        }


@dataclass(frozen=True)
class Filter:
    """Everything given must match. reason: case-insensitive substring of the dead-letter reason.
    replayed: None both, False only those never replayed, True only those replayed."""

    flows: Sequence[Flow] = tuple(Flow)
    member_id: str | None = None
    event_type: str | None = None
    reason: str | None = None
    event_id: str | None = None
    replayed: bool | None = None
    limit: int = 0  # 0: all

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (self.member_id is None or letter.member_id == self.member_id)
            and (self.event_type is None or letter.event_type == self.event_type)
            and (self.reason is None or self.reason.lower() in letter.reason.lower())
            and (self.event_id is None or letter.event_id == self.event_id)
            and (self.replayed is None or letter.replayed == self.replayed)
        )


@dataclass(frozen=True)
class ReplayResult:
    letter: DeadLetter
    outcome: Outcome
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.letter.id,
            "event_id": self.letter.event_id,
            "outcome": self.outcome,
            "error": self.error,
        }


def default_actor() -> str:
    """Who runs the CLI: the OS user (in a pod: the image's user; pass --actor to name the person)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def parse_id(dead_letter_id: str) -> tuple[Flow, int, int]:
    try:
        flow, partition, offset = dead_letter_id.rsplit(":", 2)
        return Flow(flow), int(partition), int(offset)
    except ValueError as exc:
        raise DeadLetterNotFound(
            f"not a dead-letter id: {dead_letter_id!r} (<flow>:<partition>:<offset>)"
        ) from exc


class DeadLetters:
    """The dead letters of one deployment (its KafkaSettings: servers and topic prefix)."""

    def __init__(self, settings: KafkaSettings, portals: PortalResolver | None = None) -> None:
        self.settings = settings
        self.portals = portals
        self.audit_topic = audit_topic(settings.topic_prefix)

    async def find(self, where: Filter = Filter()) -> list[DeadLetter]:
        """Oldest first (per flow, partition and offset)."""
        audits = await self._audits_by_letter()
        cache: dict[str, str | None] = {}
        found: list[DeadLetter] = []
        for flow in where.flows:
            async for rec in _scan(self.settings, topics_for(flow, self.settings.topic_prefix).dlq):
                letter = await self._letter(flow, rec, audits, cache)
                if where.matches(letter):
                    found.append(letter)
                    if where.limit and len(found) >= where.limit:
                        return found
        return found

    async def get(self, dead_letter_id: str, *, member_id: str | None = None) -> DeadLetter:
        """One dead letter; with member_id only if it belongs to that portal (else DeadLetterNotFound)."""
        flow, partition, offset = parse_id(dead_letter_id)
        rec = await _read_one(
            self.settings, topics_for(flow, self.settings.topic_prefix).dlq, partition, offset
        )
        if rec is None:
            raise DeadLetterNotFound(f"no dead letter {dead_letter_id}")
        audits = await self._audits_by_letter()
        letter = await self._letter(flow, rec, audits, {})
        if member_id is not None and letter.member_id != member_id:
            raise DeadLetterNotFound(f"no dead letter {dead_letter_id}")
        return letter

    async def audit(self, *, member_id: str | None = None) -> list[AuditEntry]:
        """Every audit entry (oldest first), or those of one portal."""
        return [a async for a in self._audit_entries() if member_id is None or a.member_id == member_id]

    async def replay(
        self,
        letters: Iterable[DeadLetter],
        *,
        actor: str,
        why: str = "",
        dry_run: bool = False,
        on_each: Callable[[ReplayResult], None] | None = None,
    ) -> list[ReplayResult]:
        """Re-publish each to its flow's main topic, with the effects already done (never redone), each after
        its audit entry. AuditUnavailable (the audit cannot be written) stops the run; a failed re-publish
        is audited as failed and the run goes on."""
        results: list[ReplayResult] = []
        letters = list(letters)
        if dry_run:
            for letter in letters:
                results.append(ReplayResult(letter, "would_replay"))
                if on_each:
                    on_each(results[-1])
            return results
        producer = EventProducer(self.settings, client_id="zaptrix-dead-letters")
        await producer.start()
        try:
            for letter in letters:
                target = topics_for(letter.flow, self.settings.topic_prefix).main
                try:
                    await self._write_audit(producer, letter, actor, why, "replayed", target)
                except PublishError as exc:
                    raise AuditUnavailable(
                        f"audit topic {self.audit_topic} did not take the entry: {exc}"
                    ) from exc
                try:
                    effects = [(k, v) for k, v in letter.headers if k == H_EFFECTS]
                    await producer.publish_raw(
                        target, letter.key, letter.value, [*without_bookkeeping(letter.headers), *effects]
                    )
                    result = ReplayResult(letter, "replayed")
                    log.info(
                        "dead letter replayed", dead_letter=letter.id, event_id=letter.event_id, actor=actor
                    )
                except PublishError as exc:
                    result = ReplayResult(letter, "failed", str(exc))
                    log.error("dead letter not replayed", dead_letter=letter.id, error=str(exc))
                    try:
                        await self._write_audit(producer, letter, actor, why, "failed", target)
                    except PublishError:
                        log.error("the failed replay could not be audited", dead_letter=letter.id)
                results.append(result)
                if on_each:
                    on_each(result)
        finally:
            await producer.stop()
        return results

    # --- internals ------------------------------------------------------------------------------------

    async def _write_audit(
        self, producer: EventProducer, letter: DeadLetter, actor: str, why: str, outcome: str, target: str
    ) -> None:
        entry = events_pb2.DeadLetterReplayed(
            dead_letter_id=letter.id,
            flow=letter.flow.value,
            event_id=letter.event_id,
            event_type=letter.event_type,
            member_id=letter.member_id or "",
            reason=letter.reason,
            actor=actor,
            why=why,
            outcome=outcome,
            target_topic=target,
        )
        env = new_envelope(
            f"audit:replay:{uuid.uuid4()}",
            letter.member_id or "-",
            events_pb2.PLATFORM_UNSPECIFIED,
            dead_letter_replayed=entry,
        )
        await producer.publish(self.audit_topic, [env])

    async def _audit_entries(self) -> AsyncIterator[AuditEntry]:
        async for rec in _scan(self.settings, self.audit_topic):
            env = _decoded(rec.value, rec.headers or ())
            if env is None or env.WhichOneof("kind") != "dead_letter_replayed":
                continue
            a = env.dead_letter_replayed
            yield AuditEntry(
                dead_letter_id=a.dead_letter_id,
                flow=a.flow,
                event_id=a.event_id,
                event_type=a.event_type,
                member_id=a.member_id,
                reason=a.reason,
                actor=a.actor,
                why=a.why,
                outcome=a.outcome,
                target_topic=a.target_topic,
                at=env.occurred_at.ToDatetime(tzinfo=UTC),
            )

    async def _audits_by_letter(self) -> dict[str, list[AuditEntry]]:
        by: dict[str, list[AuditEntry]] = {}
        async for a in self._audit_entries():
            by.setdefault(a.dead_letter_id, []).append(a)
        return by

    async def _letter(
        self,
        flow: Flow,
        rec: ConsumerRecord[bytes, bytes],
        audits: dict[str, list[AuditEntry]],
        cache: dict[str, str | None],
    ) -> DeadLetter:
        headers = tuple(rec.headers or ())
        env = _decoded(rec.value, headers)
        member_id, pnid = _tenant(env)
        if member_id is None and pnid:
            if pnid not in cache:
                cache[pnid] = await self._portal_of(pnid)
            member_id = cache[pnid]
        letter_id = f"{flow.value}:{rec.partition}:{rec.offset}"
        return DeadLetter(
            id=letter_id,
            flow=flow,
            partition=rec.partition,
            offset=rec.offset,
            event_id=env.event_id if env else (header(headers, H_EVENT_ID) or ""),
            event_type=event_type(env) if env else (header(headers, H_EVENT_TYPE) or "unknown"),
            member_id=member_id,
            phone_number_id=pnid,
            reason=header(headers, H_DLQ_REASON) or "",
            dead_at=_when(header(headers, H_DLQ_AT)),
            attempt=_int(header(headers, H_ATTEMPT)),
            source_topic=header(headers, H_DLQ_SOURCE) or "",
            replays=tuple(audits.get(letter_id, ())),
            key=rec.key,
            value=rec.value,
            headers=headers,
        )

    async def _portal_of(self, phone_number_id: str) -> str | None:
        if self.portals is None:
            return None
        try:
            return await self.portals(phone_number_id)
        except Exception as exc:  # listing goes on; an unknown portal matches no portal's filter
            log.warning("portal of a number unknown", phone_number_id=phone_number_id, error=str(exc))
            return None


def _decoded(value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> events_pb2.Envelope | None:
    try:
        return decode(value, headers)
    except EnvelopeError:
        return None


def _tenant(env: events_pb2.Envelope | None) -> tuple[str | None, str]:
    """(member_id named by the event, phone_number_id named by the event)."""
    if env is None or env.WhichOneof("kind") is None:
        return None, ""
    payload = getattr(env, env.WhichOneof("kind") or "")
    fields = payload.DESCRIPTOR.fields_by_name
    member_id = str(payload.member_id) if "member_id" in fields and payload.member_id else None
    pnid = str(payload.phone_number_id) if "phone_number_id" in fields else ""
    return member_id, pnid


def _when(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


@asynccontextmanager
async def _consumer(settings: KafkaSettings) -> AsyncIterator[AIOKafkaConsumer]:
    """A started reader that commits nothing, always closed: also when its start fails (Kafka down) or is
    cancelled (the settings page gives up after a few seconds), which left a client open per attempt."""
    consumer = AIOKafkaConsumer(
        group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **connection_kwargs(settings)
    )
    try:
        await consumer.start()
        yield consumer
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """The topic's partitions ([] when it does not exist). The client keeps no metadata of topics it is not
    assigned (partitions_for_topic answers None), so the cluster's metadata is fetched once here."""
    cluster = await consumer._client.fetch_all_metadata()
    return sorted(cluster.partitions_for_topic(topic) or ())


async def _scan(settings: KafkaSettings, topic: str) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` up to the end offsets at the start (a missing topic has none)."""
    async with _consumer(settings) as consumer:
        tps = [TopicPartition(topic, p) for p in await _partitions(consumer, topic)]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        idle = 0
        while pending and idle < _IDLE_ROUNDS:
            batches = await consumer.getmany(*pending, timeout_ms=_FETCH_MS, max_records=500)
            idle = 0 if batches else idle + 1
            for tp, records in sorted(batches.items(), key=lambda kv: kv[0].partition):
                for rec in records:
                    if rec.offset < ends[tp]:
                        yield rec
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        if pending:
            log.warning("scan stopped before the end offsets", topic=topic, partitions=len(pending))


async def _read_one(
    settings: KafkaSettings, topic: str, partition: int, offset: int
) -> ConsumerRecord[bytes, bytes] | None:
    async with _consumer(settings) as consumer:
        if partition not in await _partitions(consumer, topic):
            return None
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if not first <= offset < end:
            return None
        consumer.seek(tp, offset)
        for _ in range(_IDLE_ROUNDS):
            batch = await consumer.getmany(tp, timeout_ms=_FETCH_MS, max_records=1)
            for rec in batch.get(tp, []):
                return rec if rec.offset == offset else None
        return None


def describe(letters: Sequence[DeadLetter]) -> str:
    """One line for a confirmation question: how many, of which flows and portals."""
    flows = sorted({x.flow.value for x in letters})
    portals = sorted({x.member_id or "?" for x in letters})
    return (
        f"{len(letters)} dead letter(s) of {', '.join(flows) or '-'} (portals: {', '.join(portals) or '-'})"
    )


def mapper_portals(mapper: MapperStub, timeout_s: float) -> PortalResolver:
    """The PortalResolver over the mapper's GetChannel (NOT_FOUND: bound to no portal)."""

    async def portal(phone_number_id: str) -> str | None:
        try:
            channel = await call(
                "GetChannel",
                mapper.GetChannel(GetChannelRequest(phone_number_id=phone_number_id), timeout=timeout_s),
            )
        except RpcNotFound:
            return None
        return channel.member_id or None

    return portal
