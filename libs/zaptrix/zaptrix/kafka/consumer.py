"""Consumer loop shared by both dispatchers: at-least-once, retry topic, dead-letter topic.

Poll batches overlap: the next batch is fetched and started while the previous one's tail is still in
flight (at most ``consumer_max_in_flight_batches``), so a paced handler (the meta dispatcher's 80/s) never
idles at a batch boundary. A conversation's (record key's) next record never starts before its previous
one has finished: records whose key is still in flight wait for that batch. Per partition only the
contiguous prefix of finished batches is committed: an offset is committed only after every record before
it has had its effect recorded or has been moved to the retry or dead-letter topic. A revocation waits for
the work in flight before committing and handing the partitions over; a stop drains it. While a poll comes
back full (the consumer lags), the next polls take up to ``catch_up_records`` records, each such batch alone
in flight (what a drain holds in memory stays within that budget): a handler that packs records into
requests (the bitrix dispatcher) then fills them. Each start of a batch is counted before handling (starts.py), so
a record that kills its process reaches the dead-letter topic after ``crash_limit`` starts. Each record is handled inside a CONSUMER "<topic> process" span
whose parent is the producer's context taken from the record headers, so one trace follows a message
across Kafka. Retry records carry a not-before time, at most retry_max_s ahead; their partition is paused until it is due.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from zaptrix.delays import clamp_delay

# Re-exported: older imports name them here (zaptrix.errors is their home).
from zaptrix.errors import PermanentError as PermanentError
from zaptrix.errors import TransientError as TransientError
from zaptrix.kafka.connection import connection_kwargs
from zaptrix.kafka.effects import effects_header, read_effects
from zaptrix.kafka.envelope import (
    H_ATTEMPT,
    H_DLQ_AT,
    H_DLQ_REASON,
    H_DLQ_SOURCE,
    H_EVENT_ID,
    H_NOT_BEFORE,
    H_SEQ,
    Headers,
    decode,
    event_type,
    extract_context,
    header,
    now_ms,
    without_bookkeeping,
)
from zaptrix.kafka.holds import Holds, Pending, seq_of
from zaptrix.kafka.producer import EventProducer, PublishError
from zaptrix.kafka.starts import StartMark, read_marks
from zaptrix.kafka.topics import FlowTopics
from zaptrix.kafka.wedges import COORDINATOR_WAIT_S, ClientWedged, abandon, consumer_tasks, ended_tasks
from zaptrix.logging import bounded_reason, get_logger
from zaptrix.metrics import CONSUMER_LAG, DEAD_LETTERS, EVENT_AGE, EVENTS_HANDLED, HANDLE_SECONDS, REQUEUED
from zaptrix.retrying import retry_until_stopped
from zaptrix.settings import KafkaSettings
from zaptrix.v1 import events_pb2

log = get_logger(__name__)
T = TypeVar("T")
tracer = trace.get_tracer("zaptrix.kafka")


@dataclass(frozen=True)
class Outcome:
    kind: Literal["ok", "duplicate", "retry", "dead", "held"]
    reason: str = ""
    retry_after: float | None = None
    # False: the retry does not hold its conversation (e.g. a status waiting for its message's link)
    ordered: bool = True

    @classmethod
    def ok(cls) -> Outcome:
        return cls("ok")

    @classmethod
    def duplicate(cls) -> Outcome:
        return cls("duplicate")

    @classmethod
    def retry(cls, reason: str, retry_after: float | None = None, *, ordered: bool = True) -> Outcome:
        return cls("retry", reason, retry_after, ordered)

    @classmethod
    def dead(cls, reason: str) -> Outcome:
        return cls("dead", reason)

    @classmethod
    def held(cls, reason: str = "an earlier event of the conversation is waiting for a retry") -> Outcome:
        """Not handled: goes behind its conversation's pending retry, not counted as an attempt."""
        return cls("held", reason)

    @classmethod
    def from_exception(cls, exc: BaseException) -> Outcome:
        if isinstance(exc, PermanentError):
            return cls.dead(exc.reason)
        if isinstance(exc, TransientError):
            return cls.retry(exc.reason, exc.retry_after)
        return cls.retry(f"unexpected {type(exc).__name__}: {exc}")


@dataclass
class Received:
    envelope: events_pb2.Envelope
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    attempt: int
    span: Span = field(repr=False)
    # Effects noted by this and earlier attempts (effects.py): part -> result, e.g. a message id -> wamid.
    effects: dict[str, str] = field(default_factory=dict)
    seq: int = 0  # place in its conversation: the offset it had in the main topic (holds.py)
    ordered: bool = True  # False: a retry that does not keep its conversation's order (no zaptrix-seq)
    timestamp_ms: int = 0  # the Kafka record's timestamp (its production, for a main-topic record)

    @property
    def event_type(self) -> str:
        return event_type(self.envelope)

    def happened(self, part: str, result: str) -> None:
        """Note an effect the moment it happens; a retry of this record will find it in ``effects``."""
        self.effects[part] = result


BatchHandler = Callable[[list[Received]], Awaitable[list[Outcome]]]
EventHandler = Callable[[Received], Awaitable[Outcome | None]]
# Called once a record is in the dead-letter topic, with its envelope and the (bounded) reason: the service
# tells whoever must know (a notice in the operator's chat). Its failures are logged, never raised.
DeadLetterHook = Callable[[events_pb2.Envelope, str], Awaitable[None]]


def per_event(handler: EventHandler, concurrency: int = 64) -> BatchHandler:
    """Adapt a per-event handler: one conversation's events run in order, conversations run concurrently."""
    limit = asyncio.Semaphore(concurrency)

    async def run_one(rec: Received) -> Outcome:
        with trace.use_span(rec.span, end_on_exit=False):
            try:
                return await handler(rec) or Outcome.ok()
            except Exception as exc:
                if not isinstance(exc, TransientError | PermanentError):
                    log.exception("handler failed", event_id=rec.envelope.event_id)
                return Outcome.from_exception(exc)

    async def run_conversation(items: list[tuple[int, Received]], out: list[Outcome | None]) -> None:
        async with limit:
            waiting = False  # an earlier event of this conversation goes to the retry topic
            for index, rec in items:
                outcome = Outcome.held() if waiting else await run_one(rec)
                out[index] = outcome
                waiting = waiting or outcome.kind == "held" or (outcome.kind == "retry" and outcome.ordered)

    async def handle(batch: list[Received]) -> list[Outcome]:
        groups: OrderedDict[str, list[tuple[int, Received]]] = OrderedDict()
        for index, rec in enumerate(batch):
            groups.setdefault(rec.envelope.conversation_key, []).append((index, rec))
        out: list[Outcome | None] = [None] * len(batch)
        await asyncio.gather(*(run_conversation(items, out) for items in groups.values()))
        return [o or Outcome.retry("not handled") for o in out]

    return handle


def _envelope_of(rec: ConsumerRecord) -> events_pb2.Envelope | None:
    """A record dead-lettered before it was opened (it crashed its process): its envelope for the hook."""
    try:
        return decode(rec.value, list(rec.headers or []))
    except Exception:  # undecodable as well: nobody to tell
        return None


class _Stopping(Exception):
    """``stopped`` was set while Kafka would not take a record: leave the batch uncommitted and stop."""


REBUILD_TIMEOUT_S = 60.0
RECHECK_S = 5.0  # a retry partition with nothing due is looked at again this often (earlier-due arrivals)
STOP_GRACE_S = 5.0
LAG_REPORT_S = 0.5  # a publish in flight when SIGTERM arrives gets this long before the batch is given up


@dataclass
class _Segment:
    """The offsets first..end-1 of one partition that one in-flight batch handles."""

    first: int
    end: int
    done: bool = False


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forget the start marks and holds of partitions that change hands: the next owner reads them back."""

    def __init__(self, owner: EventConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        owner = self.owner
        # No batch starts meanwhile, and the batches in flight finish first: nothing is committed past an
        # unfinished record, and the next owner does not handle a record this member is still handling.
        async with owner._admit:
            await owner._drain()
            consumer = owner._consumer
            if consumer is not None:  # what this member finished is committed before another takes over
                try:
                    await owner._flush(consumer, set(revoked))
                except Exception:
                    log.exception("finished offsets not committed before the rebalance (handled again)")
            for tp in revoked:
                owner._marks.pop(tp, None)
                owner._segments.pop(tp, None)
                owner._finished.pop(tp, None)
        self.owner._holds.forget({tp.partition for tp in revoked if tp.topic == self.owner.topics.retry})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self.owner._marks.pop(tp, None)
        retry = [tp for tp in assigned if tp.topic == self.owner.topics.retry]
        consumer = self.owner._consumer
        if retry and consumer is not None:
            # Records may already be fetched while this runs: nothing is handled until the holds are back.
            self.owner._holds_ready.clear()
            try:
                await asyncio.wait_for(
                    self.owner._holds.rebuild(self.owner.settings, consumer, retry), REBUILD_TIMEOUT_S
                )
            except Exception:
                log.exception("pending retries could not be read back; order may not hold")
            finally:
                self.owner._holds_ready.set()


class EventConsumer:
    def __init__(
        self,
        settings: KafkaSettings,
        topics: FlowTopics,
        group_id: str,
        handler: BatchHandler,
        producer: EventProducer,
        *,
        client_id: str,
        max_attempts: int = 8,
        retry_base_s: float = 2.0,
        retry_max_s: float = 900.0,
        crash_limit: int = 3,
        on_dead_letter: DeadLetterHook | None = None,
        catch_up_records: int | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.group_id = group_id
        self.handler = handler
        self.producer = producer
        self.client_id = client_id
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.crash_limit = crash_limit
        self.on_dead_letter = on_dead_letter
        # Records in flight while the consumer lags (a full poll): one batch of up to this many, alone;
        # default: the normal poll batch.
        self.catch_up_records = max(catch_up_records or 0, settings.consumer_max_records)
        self.max_in_flight = settings.consumer_max_in_flight_batches
        self.last_poll_at = 0.0
        self.running = False
        self._consumer: AIOKafkaConsumer | None = None
        self._stopped = asyncio.Event()
        self._marks: dict[TopicPartition, StartMark | None] = {}
        self._holds = Holds()
        self._holds_ready = asyncio.Event()
        # Offsets after handled batches, committed with the next batch's start marks (one commit per batch)
        # or after a poll that brought nothing: a finished batch costs no commit round trip of its own.
        self._finished: dict[TopicPartition, int] = {}
        self._lag_reported_at = 0.0
        # Overlap: batches in flight, the offsets each partition has in flight (in fetch order), the batch
        # that last took each key, and the lock that keeps a rebalance from racing a batch's start.
        self._tasks: set[asyncio.Task[None]] = set()
        self._segments: dict[TopicPartition, deque[_Segment]] = {}
        self._key_owner: dict[bytes, asyncio.Task[None]] = {}
        self._admit = asyncio.Lock()
        self._failure: BaseException | None = None
        self._lagging = False

    def healthy(self, stale_after_s: float = 60.0) -> bool:
        return self.running and time.monotonic() - self.last_poll_at < stale_after_s

    async def run(self, stopped: asyncio.Event) -> None:
        self._stopped = stopped
        self._marks = {}
        self._finished = {}
        self._tasks = set()
        self._segments = {}
        self._key_owner = {}
        self._failure = None
        self._lagging = False
        self._holds = Holds()
        self._holds_ready.set()
        consumer = AIOKafkaConsumer(
            group_id=self.group_id,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.consumer_fetch_max_wait_ms,
            # Partition N of the main and of the retry topic go to the same member (holds.py).
            partition_assignment_strategy=(RangePartitionAssignor,),
            **connection_kwargs(self.settings),
        )
        consumer.subscribe([self.topics.main, self.topics.retry], listener=_Listener(self))
        self._consumer = consumer
        await consumer.start()
        self.running = True
        log.info("consumer started", topics=[self.topics.main, self.topics.retry], group=self.group_id)
        try:
            while not stopped.is_set():
                self._raise_failure()
                self._raise_wedged(consumer)
                await self._report_lag(consumer)
                size = self._poll_size()
                if len(self._tasks) >= self.max_in_flight or not size:  # bounded: wait for a batch to finish
                    await asyncio.wait(self._tasks, timeout=0.2, return_when=asyncio.FIRST_COMPLETED)
                    self.last_poll_at = time.monotonic()
                    continue
                data = await consumer.getmany(timeout_ms=200, max_records=size)
                self.last_poll_at = time.monotonic()
                self._lagging = sum(len(recs) for recs in data.values()) >= self.settings.consumer_max_records
                if data:
                    async with self._admit:
                        await self._process(consumer, data)
                else:
                    await self._flush(consumer)
                # The batch holds its raw records until each is opened: not this loop while it waits.
                del data
            await self._drain()  # a stop: the batches in flight finish, then their offsets are committed
            self._raise_failure()
        except _Stopping:
            log.warning("stopping with a batch not committed: Kafka did not take its retries/dead letters")
        except BaseException:
            for task in self._tasks:  # cancelled or broken: nothing of ours runs on without its consumer
                task.cancel()
            raise
        finally:
            self.running = False
            await self._drain()
            ended = ended_tasks(consumer_tasks(consumer))
            try:  # a wedged client commits nothing more: no wait for it
                if ended:
                    raise ClientWedged(", ".join(ended))
                await asyncio.wait_for(self._flush(consumer), timeout=STOP_GRACE_S)
            except Exception:  # handled again after the restart (the effects are deduplicated)
                log.warning("finished offsets not committed at the stop", group=self.group_id)
            try:  # leaving the group needs the broker; do not let an outage hold the shutdown
                await asyncio.wait_for(consumer.stop(), timeout=STOP_GRACE_S if ended else STOP_GRACE_S * 2)
            except TimeoutError:
                log.warning("consumer did not stop cleanly in time", group=self.group_id)
                await abandon(consumer)
            except Exception as exc:  # a background task's error, re-raised by aiokafka's close
                log.warning("consumer stopped with an error", group=self.group_id, error=repr(exc))
                await abandon(consumer)
            log.info("consumer stopped", group=self.group_id)

    def _poll_size(self) -> int:
        """Records for the next poll: the normal poll batch, or while lagging a catch-up batch that runs
        alone (0: wait for the batches in flight to finish). Alone, the whole budget goes to one handler
        call, which fills each portal's request; two overlapping batches of half the budget each made
        requests of half the size (more CPU per message) for the same memory (backlog_drain)."""
        normal = self.settings.consumer_max_records
        if not self._lagging or self.catch_up_records <= normal:
            return normal
        return 0 if self._tasks else self.catch_up_records

    # --- one poll batch -------------------------------------------------------------------------------

    async def _process(
        self, consumer: AIOKafkaConsumer, data: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        await self._holds_ready.wait()
        ready: dict[TopicPartition, list[ConsumerRecord]] = {}
        requeue: set[tuple[int, int]] = set()  # (partition, offset) of retry records moved to the tail
        for tp, records in data.items():
            if tp.topic == self.topics.retry:
                records = self._due_part(consumer, tp, records, requeue)
            if records:
                ready[tp] = records
        if not ready:
            await self._flush(consumer)
            return
        unknown = [tp for tp in ready if tp not in self._marks]
        if unknown:
            self._marks.update(
                await self._bounded(read_marks(consumer, unknown), "reading committed offsets")
            )
        suspects = [tp for tp in ready if self._starts(tp, ready[tp][0].offset)]
        if suspects:  # handled alone: nothing else in flight
            await self._drain()
            self._raise_failure()
            await self._flush(consumer)
            await self._process_suspect(consumer, suspects[0], ready)
            return
        # Count this start before handling: if the process dies now, the next owner knows. A partition's
        # mark and committed offset start at its first unfinished record (an earlier batch may still be in
        # flight). The same commit carries the finished offsets of the other partitions.
        self._collect()
        firsts = {tp: self._first_unfinished(tp, recs[0].offset) for tp, recs in ready.items()}
        marks = {tp: StartMark(firsts[tp], recs[-1].offset, 1) for tp, recs in ready.items()}
        finished = {tp: (offset, None) for tp, offset in self._finished.items() if tp not in ready}
        await self._commit(consumer, {**finished, **{tp: (firsts[tp], marks[tp]) for tp in ready}})
        self._finished.clear()
        for tp, recs in ready.items():
            for rec in recs:
                if (tp.partition, rec.offset) in requeue and tp.topic == self.topics.retry:
                    await self._requeue(rec)
        segments = [_Segment(recs[0].offset, recs[-1].offset + 1) for recs in ready.values()]
        for tp, segment in zip(ready, segments, strict=True):
            self._segments.setdefault(tp, deque()).append(segment)
        # A key still in flight in an earlier batch: its records wait for that batch; the others start now.
        free: list[ConsumerRecord] = []
        waiting: list[ConsumerRecord] = []
        after: set[asyncio.Task[None]] = set()
        for tp, recs in ready.items():
            for rec in recs:
                if tp.topic == self.topics.retry and (tp.partition, rec.offset) in requeue:
                    continue
                owner = self._key_owner.get(rec.key) if rec.key is not None else None
                if owner is not None and not owner.done():
                    after.add(owner)
                    waiting.append(rec)
                else:
                    free.append(rec)
        task = asyncio.create_task(self._run_batch(segments, free, waiting, after))
        self._tasks.add(task)
        for rec in (*free, *waiting):
            if rec.key is not None:
                self._key_owner[rec.key] = task
        task.add_done_callback(self._batch_done)

    async def _run_batch(
        self,
        segments: list[_Segment],
        free: list[ConsumerRecord],
        waiting: list[ConsumerRecord],
        after: set[asyncio.Task[None]],
    ) -> None:
        """One poll batch: its free records now, the others once the batches holding their keys are done.
        Its offsets count as finished only when every record is handled or routed."""

        async def behind() -> None:
            if after:
                await asyncio.wait(after)
            await self._handle(waiting)

        try:
            await asyncio.gather(self._handle(free), behind())
        except BaseException as exc:
            if self._failure is None:
                self._failure = exc
            raise
        for segment in segments:
            segment.done = True

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        for key in [k for k, owner in self._key_owner.items() if owner is task]:
            del self._key_owner[key]
        if not task.cancelled():
            task.exception()  # retrieved: reported through _failure

    async def _drain(self) -> None:
        """Wait for every batch in flight (failures are kept in ``_failure``)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def _raise_wedged(self, consumer: AIOKafkaConsumer, what: str = "the Kafka consumer") -> None:
        """aiokafka's background tasks end only with the consumer: one that ended leaves it waiting forever
        (wedges.py). run() ends with ClientWedged; the caller starts it again with a fresh client."""
        ended = ended_tasks(consumer_tasks(consumer))
        if ended:
            raise ClientWedged(f"{what} waits on ended background tasks: {', '.join(ended)}")

    async def _bounded(self, call: Awaitable[T], what: str) -> T:
        """A coordinator call, watched: it ends run() with ClientWedged (so that a fresh client takes over)
        as soon as one of aiokafka's background tasks has ended, or when it has waited COORDINATOR_WAIT_S
        (a broker outage that long included)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COORDINATOR_WAIT_S
        call_task = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({call_task}, timeout=min(1.0, deadline - loop.time()))
                if done:
                    return call_task.result()
                if self._consumer is not None:
                    self._raise_wedged(self._consumer, what)
                if loop.time() >= deadline:
                    raise ClientWedged(f"{what} did not finish within {COORDINATOR_WAIT_S:g} s")
        finally:
            call_task.cancel()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _collect(self) -> None:
        """Move each partition's contiguous prefix of finished batches to the offsets to commit."""
        for tp, segments in self._segments.items():
            while segments and segments[0].done:
                self._finished[tp] = segments.popleft().end

    def _in_flight_mark(self, tp: TopicPartition) -> StartMark | None:
        segments = self._segments.get(tp)
        return StartMark(segments[0].first, segments[-1].end - 1, 1) if segments else None

    def _first_unfinished(self, tp: TopicPartition, default: int) -> int:
        segments = self._segments.get(tp)
        return segments[0].first if segments else default

    async def _flush(self, consumer: AIOKafkaConsumer, only: set[TopicPartition] | None = None) -> None:
        """Commit the finished offsets (of ``only`` these partitions) and clear their start marks."""
        self._collect()
        done = {tp: o for tp, o in self._finished.items() if only is None or tp in only}
        if not done:
            return
        # A partition with a batch still in flight keeps its start mark over the records in flight.
        await self._commit(consumer, {tp: (offset, self._in_flight_mark(tp)) for tp, offset in done.items()})
        for tp in done:
            self._finished.pop(tp, None)

    def _starts(self, tp: TopicPartition, offset: int) -> int:
        mark = self._marks.get(tp)
        return mark.starts_of(offset) if mark else 0

    async def _process_suspect(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        ready: dict[TopicPartition, list[ConsumerRecord]],
    ) -> None:
        """After a crash: one suspect record, alone; everything else is fetched again afterwards."""
        rec = ready[tp][0]
        for other, recs in ready.items():
            consumer.seek(other, recs[0].offset + 1 if other == tp else recs[0].offset)
        mark = self._marks[tp]
        assert mark is not None
        starts = mark.starts_of(rec.offset)
        if starts >= self.crash_limit:
            await self._dead_letter(rec, f"crashed its process {starts} times", starts, _envelope_of(rec))
        else:
            await self._commit(consumer, {tp: (rec.offset, StartMark(rec.offset, mark.last, starts + 1))})
            log.warning(
                "handling a record alone after a crash", topic=tp.topic, offset=rec.offset, starts=starts
            )
            await self._handle([rec])
        await self._commit(consumer, {tp: (rec.offset + 1, mark.after_success(rec.offset))})

    async def _commit(
        self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, tuple[int, StartMark | None]]
    ) -> None:
        commit = consumer.commit(
            {tp: (offset, mark.encode() if mark else "") for tp, (offset, mark) in offsets.items()}
        )
        await self._bounded(commit, "a commit")
        for tp, (_, mark) in offsets.items():
            self._marks[tp] = mark

    async def _handle(self, records: list[ConsumerRecord]) -> None:
        """Handle and route records; nothing in here may abort the batch but a stop. ``records`` is taken
        over: it is emptied once they are opened, so that the raw records (aiokafka's objects) are not held
        beside their Received while the handler runs (a catch-up batch holds thousands)."""
        batch: list[Received] = []
        in_batch: set[str] = set()
        # Retry records first: of two copies of an event, the one that may carry effects is kept.
        # Each taken from the end of a reversed copy: in that order, and no longer held once opened.
        pending = sorted(records, key=lambda r: r.topic != self.topics.retry)
        pending.reverse()
        records.clear()
        while pending:
            rec = pending.pop()
            if rec.topic == self.topics.retry:
                self._holds.consumed(rec.key, rec.partition, rec.offset)
            received = self._open(rec)
            if not isinstance(received, Received):  # not an envelope we can read: nothing will handle it
                await self._dead_letter(rec, received, 1)
            elif received.ordered and self._holds.ahead(received.key, received.seq) is not None:
                await self._route(received, Outcome.held())
            elif received.envelope.event_id in in_batch:
                # A copy (a producer re-sent after a timeout, the webhook came again): the handler gets each
                # event once per batch; copies in later batches meet the handler's dedupe records.
                await self._route(received, Outcome.duplicate())
            else:
                in_batch.add(received.envelope.event_id)
                batch.append(received)
        if not batch:
            return
        # A conversation's retried event and its later ones can arrive in one poll: its place goes first.
        batch.sort(key=lambda rec: rec.seq)
        started = time.perf_counter()
        try:
            outcomes = await self.handler(batch)
        except Exception as exc:  # a broken batch handler must not lose the batch
            log.exception("batch handler failed", size=len(batch))
            outcomes = [Outcome.from_exception(exc)] * len(batch)
        if len(outcomes) != len(batch):
            log.error("batch handler returned a different number of outcomes", got=len(outcomes))
            outcomes = [
                Outcome.retry(f"batch handler returned {len(outcomes)} outcomes for {len(batch)}")
            ] * len(batch)
        HANDLE_SECONDS.labels(self.topics.main).observe((time.perf_counter() - started) / len(batch))
        for rec, outcome in zip(batch, outcomes, strict=True):
            try:
                await self._route(rec, outcome)
            except _Stopping:
                raise
            except Exception as exc:  # e.g. a retry time that cannot be computed: this record only
                log.exception("routing failed", event_id=rec.envelope.event_id)
                await self._dead_letter(rec, f"routing failed: {type(exc).__name__}: {exc}", rec.attempt)

    def _wait_ms(self, tp: TopicPartition, rec: ConsumerRecord) -> int:
        """How long until a retry record is due (<= 0: due now)."""
        wait_ms = _int_header(rec.headers, H_NOT_BEFORE, 0) - now_ms()
        if wait_ms > (self.retry_max_s + 60) * 1000:
            # We never schedule that far ahead (retry_max_s): a bogus time must not freeze the partition.
            log.warning(
                "retry record due implausibly late; handling it now", topic=tp.topic, offset=rec.offset
            )
            return 0
        return wait_ms

    def _open(self, rec: ConsumerRecord) -> Received | str:
        """The record as a Received with its processing span open, or why it cannot be read."""
        headers: Headers = list(rec.headers or [])
        parent = extract_context(headers)
        span = tracer.start_span(
            f"{rec.topic} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": rec.topic,
                "messaging.destination.partition.id": str(rec.partition),
                "messaging.kafka.offset": rec.offset,
                "messaging.consumer.group.name": self.group_id,
            },
        )
        try:
            env = decode(rec.value, headers)
        except Exception as exc:  # EnvelopeError, or anything a hostile record provokes in decoding
            span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            span.end()
            return f"undecodable: {exc}"
        span.set_attribute("messaging.message.id", env.event_id)
        span.set_attribute("zaptrix.event_type", event_type(env))
        attempt = max(1, _int_header(headers, H_ATTEMPT, 1))
        effects = read_effects(headers)
        seq = rec.offset if rec.topic == self.topics.main else seq_of(headers, rec.offset)
        ordered = rec.topic == self.topics.main or header(headers, H_SEQ) is not None
        return Received(
            env,
            rec.topic,
            rec.partition,
            rec.offset,
            rec.key,
            rec.value,
            headers,
            attempt,
            span,
            effects,
            seq,
            ordered,
            rec.timestamp,
        )

    async def _route(self, rec: Received, outcome: Outcome) -> None:
        etype = rec.event_type
        try:
            if outcome.kind in ("ok", "duplicate"):
                EVENTS_HANDLED.labels(rec.topic, etype, outcome.kind).inc()
                if outcome.kind == "ok" and rec.topic == self.topics.main and rec.timestamp_ms > 0:
                    EVENT_AGE.labels(rec.topic).observe(max(0.0, now_ms() - rec.timestamp_ms) / 1000)
                return
            if outcome.kind == "held":
                ahead = self._holds.ahead(rec.key, rec.seq) or 0
                await self._to_retry(rec, rec.attempt, max(ahead, now_ms()))
                EVENTS_HANDLED.labels(rec.topic, etype, "held").inc()
                return
            if outcome.kind == "retry" and rec.attempt < self.max_attempts:
                delay = self._backoff(rec.attempt, outcome.retry_after)
                await self._to_retry(
                    rec, rec.attempt + 1, now_ms() + int(delay * 1000), ordered=outcome.ordered
                )
                EVENTS_HANDLED.labels(rec.topic, etype, "retried").inc()
                log.warning(
                    "event scheduled for retry",
                    event_id=rec.envelope.event_id,
                    attempt=rec.attempt,
                    delay_s=round(delay, 1),
                    reason=outcome.reason,
                )
                return
            reason = outcome.reason
            if outcome.kind == "retry":
                reason = f"retries exhausted after {rec.attempt} attempts: {outcome.reason}"
            await self._dead_letter(rec, reason, rec.attempt)
        finally:
            if outcome.kind in ("ok", "duplicate", "held"):
                rec.span.set_status(Status(StatusCode.OK))
            else:
                rec.span.set_status(Status(StatusCode.ERROR, outcome.reason[:200]))
            rec.span.set_attribute("zaptrix.outcome", outcome.kind)
            rec.span.end()

    async def _to_retry(
        self, rec: Received, attempt: int, not_before_ms: int, *, ordered: bool = True
    ) -> None:
        """To the retry topic; an ordered record (with its place, ``zaptrix-seq``) holds its conversation."""
        headers = [
            *without_bookkeeping(rec.headers),
            (H_ATTEMPT, str(attempt).encode()),
            (H_NOT_BEFORE, str(not_before_ms).encode()),
            *([(H_SEQ, str(rec.seq).encode())] if ordered else []),
            *effects_header(rec.effects),
        ]
        partition, offset = await self._publish(self.topics.retry, rec.key, rec.value, headers)
        if ordered:
            self._holds.add(rec.key, partition, offset, Pending(rec.seq, not_before_ms))

    def _due_part(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        records: list[ConsumerRecord],
        requeue: set[tuple[int, int]],
    ) -> list[ConsumerRecord]:
        """The records of a retry partition to take now: the due ones at its head, and when a due record
        behind a not-yet-due one has waited RECHECK_S past its time, everything up to it, with the not-yet-due
        ones marked for the tail (one tenant's long wait must not hold others' due retries for long; the
        grace keeps the moving rare). The rest is fetched again; with nothing due at its head, the partition
        rests until the head is due or RECHECK_S has passed."""
        waits = [self._wait_ms(tp, rec) for rec in records]
        head = next((i for i, wait in enumerate(waits) if wait > 0), len(records))  # due records first
        overdue = max((i for i, wait in enumerate(waits) if wait <= -RECHECK_S * 1000), default=-1)
        take = records[: max(head, overdue + 1)]
        requeue.update((tp.partition, rec.offset) for rec, wait in zip(take, waits, strict=False) if wait > 0)
        if len(take) < len(records):
            consumer.seek(tp, records[len(take)].offset)
            if not take:
                consumer.pause(tp)
                rest_s = min(waits[0] / 1000, RECHECK_S)
                asyncio.get_running_loop().call_later(rest_s, consumer.resume, tp)
        return take

    async def _requeue(self, rec: ConsumerRecord) -> None:
        """A retry record not yet due, moved as it is to the tail of its partition (same key, same
        partition: its conversation's order is kept by the holds)."""
        headers: Headers = list(rec.headers or [])
        partition, offset = await self._publish(self.topics.retry, rec.key, rec.value, headers)
        self._holds.consumed(rec.key, rec.partition, rec.offset)
        not_before = _int_header(headers, H_NOT_BEFORE, 0)
        self._holds.add(rec.key, partition, offset, Pending(seq_of(headers, rec.offset), not_before))
        REQUEUED.labels(self.topics.retry).inc()

    async def _dead_letter(
        self,
        rec: Received | ConsumerRecord,
        reason: str,
        attempt: int,
        envelope: events_pb2.Envelope | None = None,
    ) -> None:
        """The one way a record reaches the dead-letter topic (handler verdict, exhausted retries,
        undecodable, routing failure, crashed its process). ``rec`` is a ConsumerRecord when the record
        was never opened (undecodable, or dead-lettered for crashing before it could be handled); the hook
        then gets ``envelope`` (None: nothing to tell), never a second decoding of a Received's record."""
        headers: Headers = rec.headers if isinstance(rec, Received) else list(rec.headers or [])
        reason = bounded_reason(reason)  # exception texts are not ours: one line, no credentials, bounded
        # A replay from the dead-letter topic must not redo what already happened: the effects go along.
        effects = rec.effects if isinstance(rec, Received) else read_effects(headers)
        dlq_headers = [
            *without_bookkeeping(headers),
            (H_ATTEMPT, str(attempt).encode()),
            (H_DLQ_REASON, reason.encode()),
            (H_DLQ_SOURCE, rec.topic.encode()),
            (H_DLQ_AT, datetime.now(UTC).isoformat().encode()),
            *effects_header(effects),
        ]
        await self._publish(self.topics.dlq, rec.key, rec.value, dlq_headers)
        etype = rec.event_type if isinstance(rec, Received) else "unknown"
        EVENTS_HANDLED.labels(rec.topic, etype, "dead_lettered").inc()
        DEAD_LETTERS.labels(self.topics.dlq, _reason_label(reason)).inc()
        log.error("event dead-lettered", event_id=header(headers, H_EVENT_ID), reason=reason)
        await self._dead_letter_hook(rec.envelope if isinstance(rec, Received) else envelope, reason)

    async def _dead_letter_hook(self, env: events_pb2.Envelope | None, reason: str) -> None:
        if self.on_dead_letter is None or env is None:
            return
        try:
            await self.on_dead_letter(env, reason)
        except Exception:  # the dead letter is the evidence; a failed notice must not block the partition
            log.exception("dead-letter notice failed", event_id=env.event_id)

    async def _publish(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> tuple[int, int]:
        """Retry/DLQ publishing must not fail silently: keep trying (offsets stay uncommitted meanwhile)
        until it works or the process is asked to stop. Returns where the record landed."""
        landed: list[tuple[int, int]] = []

        def retrying(_: BaseException, delay: float) -> None:
            log.warning("cannot publish to Kafka, will try again", topic=topic, delay_s=delay)

        async def once() -> None:
            landed.append(await self._unless_stopped(self.producer.publish_raw(topic, key, value, headers)))

        published = await retry_until_stopped(
            once,
            retry_on=lambda exc: isinstance(exc, PublishError),
            stopped=self._stopped,
            max_s=30.0,
            on_retry=retrying,
        )
        if not published:
            raise _Stopping
        return landed[-1]

    async def _unless_stopped(self, publish: Awaitable[tuple[int, int]]) -> tuple[int, int]:
        """Await a publish; once ``stopped`` is set it gets STOP_GRACE_S more, then the batch is given up."""
        task = asyncio.ensure_future(publish)
        stop = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=STOP_GRACE_S)
            if not task.done():
                task.cancel()
                raise _Stopping
            return task.result()
        finally:
            stop.cancel()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter, never sooner than the peer's Retry-After, never later than
        retry_max_s (a peer's "inf" or "1e9" must not park a record, or freeze its retry partition)."""
        ceiling = min(self.retry_max_s, self.retry_base_s * 2 ** (min(attempt, 64) - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        return min(max(delay, clamp_delay(retry_after, self.retry_max_s) or 0.0), self.retry_max_s)

    async def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        """The lag gauge, at most every LAG_REPORT_S (not after every batch: a scrape reads it once): the
        records not yet handled, counted from the first one still in flight (fetched is not handled)."""
        now = time.monotonic()
        if now - self._lag_reported_at < LAG_REPORT_S:
            return
        self._lag_reported_at = now
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            position = self._first_unfinished(tp, await consumer.position(tp))
            CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))


def _int_header(headers: Sequence[tuple[str, bytes]] | None, key: str, default: int) -> int:
    """An integer bookkeeping header; garbage counts as absent (a bad header must not abort the batch)."""
    value = header(headers or [], key)
    if value is None or not value.isdigit() or len(value) > 18:
        return default
    return int(value)


_REASON_KINDS = (
    ("retries exhausted", "retries_exhausted"),
    ("undecodable", "undecodable"),
    ("routing failed", "routing_failed"),
    ("crashed its process", "crashed"),
)


def _reason_label(reason: str) -> str:
    """A bounded metric label for a dead letter (the reason itself may quote a remote error code)."""
    return next((kind for prefix, kind in _REASON_KINDS if reason.startswith(prefix)), "refused")
