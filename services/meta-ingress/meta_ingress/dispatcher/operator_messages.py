"""OperatorMessage → WhatsApp: dedupe, resolve, plan (send_plan.py), the 24-h window (window.py), send each
part (sender.py, files through bitrix_files.py), record (links, dedupe), and a notice for what failed.

Redelivery never sends twice what was recorded: parts of a multi-part message are recorded one by one
(``<event_id>#p<n>``), and a send whose recording failed is noted on the Kafka record, so that the retry
(on any replica) only records it; an ambiguous send is reconciled with Meta's status webhooks first
(send_once.py). What remains is the crash window: the process dies between Meta's 200 and the retry
record (milliseconds). The event is then delivered again and the part is sent a second time; the Cloud
API offers no idempotency key to close it. See docs/meta-ingress.md.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from zaptrix.kafka import Outcome, PermanentError, Received, TransientError
from zaptrix.logging import get_logger
from zaptrix.template_command import is_command
from zaptrix.v1 import events_pb2

from meta_ingress.dispatcher.bitrix_files import BitrixFiles, PartFailed
from meta_ingress.dispatcher.context import Context, Target
from meta_ingress.dispatcher.notices import Notice, graph_error
from meta_ingress.dispatcher.send_plan import (
    Part,
    Plan,
    media_payload,
    plan_message,
    text_payload,
    too_long_notice,
)
from meta_ingress.dispatcher.templates import Templates
from meta_ingress.dispatcher.window import Window
from meta_ingress.graph.errors import (
    Action,
    GraphApiError,
    GraphTransportError,
    classify,
    describe,
    is_media_problem,
    notice_for,
)
from meta_ingress.metrics import DUPLICATES, SEND_FAILURES, TOKEN_ERRORS

log = get_logger(__name__)
AfterError = Literal["continue", "stop", "window"]


@dataclass
class Failure:
    error: events_pb2.GraphError | None
    text: str
    code: str = "local"


@dataclass
class Delivery:
    wamids: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def _label(exc: BaseException) -> str:
    return exc.label if isinstance(exc, GraphApiError) else "transport"


class OperatorMessages:
    def __init__(self, ctx: Context, window: Window, files: BitrixFiles) -> None:
        self.ctx = ctx
        self.window = window
        self.files = files
        self.templates = Templates(ctx, files)

    async def on_message(self, rec: Received, om: events_pb2.OperatorMessage) -> Outcome:
        event_id = rec.envelope.event_id
        records = self.ctx.records
        if records.known(event_id) is not None:  # e.g. the offline copy of a message sent moments ago
            return self._duplicate(event_id)
        # The dedupe record and the target are independent look-ups: asked at once, one round trip less
        # before the send. A recorded event stays a duplicate whatever its target lookup said.
        recorded, target = await asyncio.gather(
            records.recorded(event_id),
            self.ctx.target(om.member_id, om.external_chat_id, "message"),
            return_exceptions=True,
        )
        if isinstance(recorded, BaseException):
            raise recorded
        if recorded is not None:
            return self._duplicate(event_id)
        if isinstance(target, BaseException):
            raise target
        # A picker send has no Bitrix24 message: its notices are named by its own event id.
        about = om.bitrix_message_id or event_id
        notice = Notice.about(om, f"wa-fail:{om.member_id}:{about}", target.conversation)
        if is_command(om.text_bbcode):  # /template ...: typed, or sent by the picker page (issue 16)
            return await self.templates.send(rec, target, om, notice)
        plan = plan_message(om.text_bbcode, list(om.files), om.reply_to_external_id)
        return await self.deliver(rec, target, plan, notice, link=True, reengage=True)

    @staticmethod
    def _duplicate(event_id: str) -> Outcome:
        DUPLICATES.labels("operator_message").inc()
        log.info("operator message already delivered", event_id=event_id)
        return Outcome.duplicate()

    async def deliver(
        self, rec: Received, target: Target, plan: Plan, notice: Notice, *, link: bool, reengage: bool
    ) -> Outcome:
        """Send the plan's parts (a message, or an edit's correction), record them, notify what failed."""
        records, notify = self.ctx.records, self.ctx.notifier.send
        event_id = rec.envelope.event_id
        if not target.channel.active:
            await notify(notice, None, "Not delivered: this WhatsApp channel is switched off.")
            SEND_FAILURES.labels("channel_inactive", "notified").inc()
            await records.mark(event_id, "failed:channel_inactive")
            return Outcome.ok()
        if not plan.parts and not plan.rejected:
            log.warning("operator message without text or files: nothing to send", event_id=event_id)
            await records.mark(event_id, "empty")
            return Outcome.ok()
        if plan.parts and self.window.closed_by_record(target.conversation):
            log.info("24-h window closed (last customer message): not sending", event_id=event_id)
            await self.window.failure(rec, target, notice, None, reengage)
            await records.mark(event_id, "failed:131047")
            return Outcome.ok()
        delivery = Delivery(
            failures=[Failure(None, f"The file “{f.name}” was not sent: {r}.") for f, r in plan.rejected]
        )
        if plan.truncated_to is not None:  # told with the other failures, after the parts went out
            delivery.failures.append(Failure(None, too_long_notice(plan.truncated_to), "too_long"))
            SEND_FAILURES.labels("too_long", "notified").inc()
        multi = len(plan.parts) > 1
        for part in plan.parts:
            part_id = f"{event_id}#p{part.index}" if multi else event_id
            done = await self.ctx.once.prior(rec, part_id, target.phone_number_id, recorded=multi)
            if done is not None:
                if not done.startswith("failed:"):
                    delivery.wamids.append(done)
                continue
            try:
                wamid = await self._send_part(rec, target, part, part_id)
            except PartFailed as exc:
                delivery.failures.append(Failure(None, str(exc)))
                SEND_FAILURES.labels("file", "notified").inc()
                if multi:
                    await records.mark(part_id, "failed:file")
                continue
            except (GraphApiError, GraphTransportError) as exc:
                after = await self._part_error(exc, rec, part, part_id, target, notice, delivery, reengage)
                if after == "continue":
                    continue
                if after == "stop":
                    break
                return Outcome.ok()  # "window": handled completely
            delivery.wamids.append(wamid)
            if multi:
                await records.mark(part_id, wamid)
        result = ",".join(delivery.wamids) or "failed:" + ",".join(f.code for f in delivery.failures)
        if link and len(delivery.wamids) == 1 and not delivery.failures:
            # The common reply: its link and dedupe record in one round trip (the customer's next reply
            # waits for them).
            await records.link_and_mark(target.conversation.id, notice, delivery.wamids[0], event_id, result)
            log.info(
                "operator message sent", event_id=event_id, wamids=delivery.wamids, parts=len(plan.parts)
            )
            return Outcome.ok()
        if delivery.wamids and link:
            await records.link(target.conversation.id, notice, delivery.wamids)
        if delivery.failures:
            first = delivery.failures[0]
            text = "\n".join(f.text for f in delivery.failures)
            if delivery.wamids and all(f.code != "too_long" for f in delivery.failures):
                text += "\nThe rest of the message was delivered."
            await notify(notice, first.error, text)
        await records.mark(event_id, result)
        log.info("operator message sent", event_id=event_id, wamids=delivery.wamids, parts=len(plan.parts))
        return Outcome.ok()

    async def _part_error(
        self,
        exc: GraphApiError | GraphTransportError,
        rec: Received,
        part: Part,
        part_id: str,
        target: Target,
        notice: Notice,
        delivery: Delivery,
        reengage: bool,
    ) -> AfterError:
        """Decide after a failed part: "continue" (next part), "stop" (no further part), "window" (done),
        or raise TransientError / PermanentError."""
        records, event_id = self.ctx.records, rec.envelope.event_id
        action = classify(exc)
        if action in (Action.RETRY, Action.THROTTLE):
            SEND_FAILURES.labels(_label(exc), "retried").inc()
            raise TransientError(f"Graph API: {describe(exc)}", getattr(exc, "retry_after", None))
        if action == Action.PAIR:
            SEND_FAILURES.labels("131056", "retried").inc()
            retry_after = self.ctx.sender.defer_after_pair_error(
                target.phone_number_id, target.wa_id, part_id
            )
            raise TransientError("Graph API 131056: pair rate limit", retry_after)
        assert isinstance(exc, GraphApiError)
        if action == Action.WINDOW:
            SEND_FAILURES.labels("131047", "notified").inc()
            if delivery.wamids:
                await records.link(target.conversation.id, notice, delivery.wamids)
            await self.window.failure(rec, target, notice, exc, reengage)
            await records.mark(event_id, ",".join(delivery.wamids) or "failed:131047")
            return "window"
        if action == Action.NOTIFY:
            SEND_FAILURES.labels(_label(exc), "notified").inc()
            media = is_media_problem(exc) and part.kind != "text"
            prefix = f"The file “{part.filename}”: " if media else ""
            delivery.failures.append(Failure(graph_error(exc), prefix + notice_for(exc), _label(exc)))
            if media and part_id != event_id:
                await records.mark(part_id, f"failed:{_label(exc)}")
            return "continue" if media else "stop"
        # AUTH and FAULT: someone must act; the event goes to the dead-letter topic, whose hook tells the
        # operator (dead_letters.py).
        if action == Action.AUTH:
            TOKEN_ERRORS.labels(target.phone_number_id).inc()
            log.error(
                "Graph API rejected the channel's access token: renew it with zaptrix-admin channels bind",
                phone_number_id=target.phone_number_id,
                code=exc.code,
                detail=exc.message[:200],
            )
        SEND_FAILURES.labels(_label(exc), "dead_lettered").inc()
        if delivery.wamids:
            await records.link(target.conversation.id, notice, delivery.wamids)
        raise PermanentError(f"Graph API {action.value}: {describe(exc)}")

    async def _send_part(self, rec: Received, target: Target, part: Part, part_id: str) -> str:
        """Send one part; refreshes the token once after 190 and drops a refused reply context once."""
        pnid, to = target.phone_number_id, target.address
        sender, credentials = self.ctx.sender, self.ctx.credentials
        sender.check_pair((pnid, target.wa_id), part_id)  # before any upload work
        token = target.creds.access_token
        if part.kind == "text":
            payload = text_payload(to, part.text, part.context_id)
        else:
            ref = await self.files.media_ref(pnid, part, token, target.channel.member_id)
            payload = media_payload(to, part, ref)
        for attempt in range(3):
            try:
                return await self.ctx.once.send(rec, pnid, target.wa_id, part_id, token, payload)
            except GraphApiError as exc:
                action = classify(exc)
                if action == Action.AUTH and attempt == 0:
                    credentials.invalidate(pnid)
                    fresh = await credentials.get(pnid)
                    if fresh.access_token and fresh.access_token != token:
                        log.warning("token rejected; retrying once with the token token-keeper has now")
                        token = fresh.access_token
                        target.creds = fresh
                        continue
                if action == Action.FAULT and "context" in payload and exc.code in (100, 131009):
                    log.warning("reply context refused; sending without it", code=exc.code)
                    payload.pop("context")
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover
