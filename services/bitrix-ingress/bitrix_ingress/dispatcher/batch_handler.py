"""The dispatcher's BatchHandler: a whole poll batch in three phases.

1. prepare (per conversation in order, conversations concurrently): dedupe (CheckProcessed), channel
   and conversation from the mapper, what to send. Nothing leaves for Bitrix24 yet. An event an earlier
   attempt already sent (its effect came with the retry, sent_effects.py) is only recorded here.
2. deliver (per portal concurrently, sequential inside a portal): first-contact CRM look-ups
   (crm_contacts.py), then the portal's requests (portal_calls.py), one at a time; each request carries
   what every poll batch in flight has pending for the portal when its pacer has room.
3. record, as soon as THE REQUEST that carried an event has answered and before the next request of the
   portal goes out: the effect is noted on the record (it survives a failed recording), then one
   RecordDelivery per delivered customer message (processed record, message link and conversation in one
   mapper transaction), MarkProcessed for the other events (bookkeeping.py). So a crash (kill -9) sends
   again at most the messages of one request. Events whose request failed get their outcome at the end.
   The consumer commits the offsets only after the whole batch has its outcomes.

A conversation keeps its order: after a customer message that will be retried, the later ones of its
conversation in this batch come back ``held`` (the consumer puts them behind the pending retry without
counting an attempt, zaptrix/kafka/holds.py).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from opentelemetry import trace
from zaptrix.errors import PermanentError, TransientError
from zaptrix.kafka import Outcome, Received
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcError
from zaptrix.v1 import mapper_pb2

from bitrix_ingress.bitrix_rest.client import BitrixError, TransientBitrixError
from bitrix_ingress.bitrix_rest.portal import PortalClient
from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher.channels import Channels
from bitrix_ingress.dispatcher.coexistence import prepare_coexistence
from bitrix_ingress.dispatcher.conversations import Conversations
from bitrix_ingress.dispatcher.crm_contacts import ensure_contacts
from bitrix_ingress.dispatcher.customer_changes import finish_change, prepare_change
from bitrix_ingress.dispatcher.customer_messages import (
    Processed,
    finish_customer,
    finish_customers,
    prepare_customer,
)
from bitrix_ingress.dispatcher.history import prepare_history
from bitrix_ingress.dispatcher.identity_changes import apply_identity_change
from bitrix_ingress.dispatcher.notices import finish_notice, prepare_failure, reroute_refused_im
from bitrix_ingress.dispatcher.portal_calls import Answered, HeldBehind, PortalCalls
from bitrix_ingress.dispatcher.sent_effects import SENT, record_sent, sent_result, with_sent_reason
from bitrix_ingress.dispatcher.statuses import StatusUpdates, finish_statuses, prepare_status
from bitrix_ingress.dispatcher.work import (
    Answer,
    ChangeWork,
    DeliverWork,
    NoticeWork,
    StatusWork,
    Work,
    outcome_for,
)
from bitrix_ingress.metrics import DELIVERED, REQUESTS_PER_FLUSH, STATUSES
from bitrix_ingress.settings import DispatcherSettings

log = get_logger(__name__)
# Event kinds whose order within a conversation matters: a later one waits behind one that will be retried.
ORDERED = ("customer_message", "history_message")


class BitrixDispatcher:
    def __init__(self, settings: DispatcherSettings, deps: Deps, portals: PortalClient) -> None:
        self.settings = settings
        self.deps = deps
        self.portals = portals
        self.channels = Channels(deps, settings.channel_cache_ttl_s)
        self.conversations = Conversations(
            deps, settings.conversation_cache_size, settings.conversation_cache_ttl_s
        )
        self.calls = PortalCalls(settings, portals)

    async def handle(self, batch: list[Received]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        works: list[Work] = []
        groups: OrderedDict[str, list[int]] = OrderedDict()
        for i, rec in enumerate(batch):
            groups.setdefault(rec.envelope.conversation_key or f"#{i}", []).append(i)
        limit = asyncio.Semaphore(self.settings.dispatch_concurrency)
        processed, links = await asyncio.gather(self._check_processed(batch), self._status_links(batch))
        updates: StatusUpdates = []

        async def prepare_conversation(indices: list[int]) -> None:
            async with limit:
                held = ""
                for i in indices:
                    rec = batch[i]
                    message = rec.event_type in ORDERED
                    if held and message:  # messages keep their order; statuses are independent
                        outcomes[i] = Outcome.held(
                            f"held behind an earlier message of this conversation: {held}"
                        )
                        continue
                    with trace.use_span(rec.span, end_on_exit=False):
                        prepared = await self._prepare_safe(rec, processed, links, updates)
                    if isinstance(prepared, Outcome):
                        outcomes[i] = prepared
                        if prepared.kind == "retry" and message:
                            held = prepared.reason[:200]
                    else:
                        prepared.index = i
                        works.append(prepared)

        await asyncio.gather(*(prepare_conversation(ix) for ix in groups.values()))
        await self._update_statuses(batch, updates, outcomes)

        async def finish(work: Work, answer: Answer | None) -> None:
            async with limit:
                with trace.use_span(work.rec.span, end_on_exit=False):
                    outcomes[work.index] = await self._finish_safe(work, answer)

        async def record(answered: list[tuple[Work, Answer]]) -> bool:
            """Right after a request: record what it delivered (its customer messages with one
            RecordDeliveries). False (stop sending to this portal in this batch) when a recording failed
            for a reason worth a retry: the mapper is not recording."""
            sent = [(w, a) for w, a in answered if isinstance(a, dict) and outcomes[w.index] is None]
            messages = [(w, a) for w, a in sent if isinstance(w, DeliverWork) and isinstance(a, dict)]
            statuses = [(w, a) for w, a in sent if isinstance(w, StatusWork) and isinstance(a, dict)]
            await asyncio.gather(
                self._finish_messages(messages, outcomes),
                self._finish_statuses(statuses, outcomes),
                *(finish(w, a) for w, a in sent if not isinstance(w, DeliverWork | StatusWork)),
            )
            return not any(_unrecorded(outcomes[w.index]) for w, _ in sent)

        by_portal: OrderedDict[str, list[Work]] = OrderedDict()
        for work in sorted(works, key=lambda w: w.index):
            by_portal.setdefault(work.member_id, []).append(work)
        delivered = await asyncio.gather(
            *(self._deliver_portal(m, ws, record) for m, ws in by_portal.items())
        )
        await asyncio.gather(
            *(finish(w, a) for portal in delivered for w, a in portal if outcomes[w.index] is None)
        )
        _hold_behind_retries(batch, groups, outcomes)
        return [
            with_sent_reason(rec, o or Outcome.retry("not handled"))
            for rec, o in zip(batch, outcomes, strict=True)
        ]

    # phase 1: prepare --------------------------------------------------------------------------

    async def _check_processed(self, batch: list[Received]) -> Processed:
        """One CheckProcessedMany for the batch's new customer messages and statuses (in the first one's
        trace); when it fails, each is asked alone in prepare (and fails there as it would have)."""
        ids = [
            rec.envelope.event_id
            for rec in batch
            if rec.event_type in ("customer_message", "whatsapp_status")
            and SENT not in rec.effects
            and rec.envelope.event_id
        ]
        if not ids:
            return {}
        try:
            with trace.use_span(batch[0].span, end_on_exit=False):
                answers = await self.deps.check_processed_many(ids)
        except RpcError as exc:
            log.warning("CheckProcessedMany failed; asking per event", error=str(exc))
            return {}
        return dict(zip(ids, answers, strict=True)) if len(answers) == len(ids) else {}

    async def _status_links(self, batch: list[Received]) -> dict[str, mapper_pb2.MessageLink] | None:
        """One FindMessageLinks for the batch's statuses (in the first one's trace); None when there are
        none or it failed (each status then asks alone in prepare)."""
        wamids = list(
            dict.fromkeys(
                rec.envelope.whatsapp_status.wamid
                for rec in batch
                if rec.event_type == "whatsapp_status"
                and SENT not in rec.effects
                and rec.envelope.whatsapp_status.wamid
            )
        )
        if not wamids:
            return None
        try:
            with trace.use_span(batch[0].span, end_on_exit=False):
                return await self.deps.find_message_links(wamids)
        except RpcError as exc:
            log.warning("FindMessageLinks failed; asking per status", error=str(exc))
            return None

    async def _update_statuses(
        self, batch: list[Received], updates: StatusUpdates, outcomes: list[Outcome | None]
    ) -> None:
        """The link updates of the statuses that only update their link: one UpdateMessageStatuses (in the
        first one's trace); should it fail, those statuses get its failure as their outcome."""
        if not updates:
            return
        try:
            with trace.use_span(updates[0][0].span, end_on_exit=False):
                await self.deps.update_message_statuses([u for _, u in updates])
        except Exception as exc:
            if not isinstance(exc, RpcError):
                log.exception("UpdateMessageStatuses failed")
            index = {id(rec): i for i, rec in enumerate(batch)}
            for rec, _ in updates:
                outcomes[index[id(rec)]] = outcome_for(exc)

    async def _prepare_safe(
        self,
        rec: Received,
        processed: Processed | None = None,
        links: dict[str, mapper_pb2.MessageLink] | None = None,
        updates: StatusUpdates | None = None,
    ) -> Work | Outcome:
        settings, deps, channels = self.settings, self.deps, self.channels
        try:
            kind = rec.event_type
            done = rec.effects.get(SENT)
            if done is not None:  # an earlier attempt sent it; its recording failed
                return await record_sent(deps, rec, done)
            if kind == "customer_message":
                cm = rec.envelope.customer_message
                return await prepare_customer(
                    rec,
                    cm,
                    settings=settings,
                    deps=deps,
                    channels=channels,
                    conversations=self.conversations,
                    processed=processed,
                )
            if kind == "whatsapp_status":
                st = rec.envelope.whatsapp_status
                return await prepare_status(
                    rec,
                    st,
                    settings=settings,
                    deps=deps,
                    channels=channels,
                    conversations=self.conversations,
                    links=links,
                    processed=processed,
                    updates=updates,
                )
            if kind == "customer_identity_change":
                change = rec.envelope.customer_identity_change
                return await apply_identity_change(
                    rec,
                    change,
                    settings=settings,
                    deps=deps,
                    channels=channels,
                    conversations=self.conversations,
                )
            if kind == "send_failure":
                sf = rec.envelope.send_failure
                return await prepare_failure(rec, sf, settings=settings, deps=deps, channels=channels)
            if kind in ("customer_message_change", "contact_name_sync"):
                return await prepare_change(
                    rec, settings=settings, deps=deps, channels=channels, conversations=self.conversations
                )
            if kind == "history_message":
                return await prepare_history(
                    rec, settings=settings, deps=deps, channels=channels, conversations=self.conversations
                )
            if kind in ("business_echo", "consent_change"):
                return await prepare_coexistence(
                    rec, settings=settings, deps=deps, channels=channels, conversations=self.conversations
                )
            return Outcome.dead(f"unexpected event type {kind} on the wa-to-b24 topic")
        except Exception as exc:
            if not isinstance(exc, TransientError | PermanentError):  # Bitrix24 and RPC errors included
                log.exception("prepare failed", event_id=rec.envelope.event_id)
            return outcome_for(exc)

    # phase 2: deliver, per portal ------------------------------------------------------------

    async def _deliver_portal(
        self, member_id: str, works: list[Work], record: Answered
    ) -> list[tuple[Work, Answer | None]]:
        """Every work of the portal with Bitrix24's answer (None: no request carried it); ``record`` runs
        after each request, on the works it carried."""
        answers: dict[Work, Answer] = {}
        requests_made = 0
        try:
            need = [w for w in works if isinstance(w, DeliverWork) and w.need_contact]
            if need:
                contacts = await ensure_contacts(self.deps, self.calls, member_id, need)
                requests_made += contacts.requests
                answers.update(contacts.failed)
                works = [_with_contact(w, contacts.ids) for w in works]
            sent = await self.calls.send(member_id, [w for w in works if w not in answers], record)
            requests_made += sent.requests
            answers.update(sent.answers)
            fallback = reroute_refused_im(works, answers)
            if fallback:
                again = await self.calls.send(member_id, list(fallback.values()), record)
                requests_made += again.requests
                answers.update(again.answers)
                works = [fallback.get(w, w) for w in works]
        except Exception as exc:  # whatever happens, every work gets an outcome
            log.exception("delivery to portal failed", member_id=member_id)
            for work in works:
                answers.setdefault(work, exc)
        REQUESTS_PER_FLUSH.observe(requests_made)
        return [(w, answers.get(w)) for w in works]

    # phase 3: record -----------------------------------------------------------------------------

    async def _finish_messages(
        self, messages: list[tuple[DeliverWork, dict[str, Any]]], outcomes: list[Outcome | None]
    ) -> None:
        """The customer messages one request delivered: each noted as sent on its record first (a retry
        records, never sends again), then one RecordDeliveries for all (in the first one's trace)."""
        if not messages:
            return
        done = []
        for work, answer in messages:
            recorded = sent_result(work, answer)
            work.rec.happened(SENT, recorded)
            done.append((work, recorded))
        with trace.use_span(messages[0][0].rec.span, end_on_exit=False):
            results = await finish_customers(self.deps, self.conversations, done)
        for (work, _), result in zip(done, results, strict=True):
            if isinstance(result, Outcome):
                outcomes[work.index] = result
                continue
            if not isinstance(result, BitrixError | RpcError):
                log.error(
                    "recording failed",
                    event_id=work.rec.envelope.event_id,
                    error=f"{type(result).__name__}: {result}"[:300],
                )
            outcomes[work.index] = outcome_for(result)

    async def _finish_statuses(
        self, statuses: list[tuple[StatusWork, dict[str, Any]]], outcomes: list[Outcome | None]
    ) -> None:
        """The statuses one request reported: each noted as sent on its record first (a retry records,
        never reports again), then one UpdateMessageStatuses that also marks them processed."""
        if not statuses:
            return
        for work, answer in statuses:
            work.rec.happened(SENT, sent_result(work, answer))
        try:
            with trace.use_span(statuses[0][0].rec.span, end_on_exit=False):
                await finish_statuses(self.deps, [w for w, _ in statuses])
        except Exception as exc:
            if not isinstance(exc, BitrixError | RpcError):
                log.exception("recording failed", event_id=statuses[0][0].rec.envelope.event_id)
            for work, _ in statuses:
                outcomes[work.index] = outcome_for(exc)
            return
        for work, _ in statuses:
            outcomes[work.index] = Outcome.ok()

    async def _finish_safe(self, work: Work, answer: Answer | None) -> Outcome:
        try:
            return await self._finish(work, answer)
        except Exception as exc:
            if not isinstance(exc, BitrixError | RpcError):
                log.exception("recording failed", event_id=work.rec.envelope.event_id)
            return outcome_for(exc)

    async def _finish(self, work: Work, answer: Answer | None) -> Outcome:
        if not isinstance(answer, dict):
            exc = answer or TransientBitrixError("NOT_SENT", "no result from Bitrix24")
            outcome = outcome_for(exc)
            label = "held" if isinstance(exc, HeldBehind) else outcome.kind
            if isinstance(work, DeliverWork):
                DELIVERED.labels(label).inc()
                self.conversations.forget(work.conv)  # read again from the mapper next time
            elif isinstance(work, StatusWork):
                STATUSES.labels(work.st.status, label).inc()
            if outcome.kind == "dead":
                log.error(
                    "event failed permanently", event_id=work.rec.envelope.event_id, reason=outcome.reason
                )
            return Outcome.held(outcome.reason) if isinstance(exc, HeldBehind) else outcome
        # Noted before anything else can fail: a retry of this event records, it does not send again.
        done = sent_result(work, answer)
        work.rec.happened(SENT, done)
        if isinstance(work, DeliverWork):
            return await finish_customer(self.deps, work, done)
        if isinstance(work, StatusWork):
            await finish_statuses(self.deps, [work])
            return Outcome.ok()
        if isinstance(work, NoticeWork):
            return await finish_notice(self.deps, work)
        if isinstance(work, ChangeWork):
            return await finish_change(self.deps, work)
        return Outcome.dead(f"unknown work {type(work).__name__}")


def _unrecorded(outcome: Outcome | None) -> bool:
    return outcome is not None and outcome.kind == "retry"


def _hold_behind_retries(
    batch: list[Received], groups: OrderedDict[str, list[int]], outcomes: list[Outcome | None]
) -> None:
    """After a customer message that goes to the retry topic, the later ones of its conversation that did
    not get through either are held: they wait behind it, uncounted, instead of retrying on their own
    schedule (the consumer would then hold them anyway, but count an attempt)."""
    for indices in groups.values():
        waiting = False
        for i in indices:
            outcome = outcomes[i]
            if outcome is None or batch[i].event_type not in ORDERED:
                continue
            if waiting and outcome.kind == "retry":
                outcomes[i] = Outcome.held(
                    f"held behind an earlier message of this conversation: {outcome.reason}"[:500]
                )
            waiting = waiting or outcome.kind in ("retry", "held")


def _with_contact(work: Work, contact_ids: dict[str, str]) -> Work:
    if isinstance(work, DeliverWork) and work.conv.id in contact_ids:
        return replace(work, contact_id=contact_ids[work.conv.id])
    return work
