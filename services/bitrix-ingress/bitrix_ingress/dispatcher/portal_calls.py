"""Running one portal's calls: works → imconnector calls → HTTP requests, in order, within the portal's pacing.

Messages and connector notices for one (connector, line) are packed into imconnector.send.messages
calls, statuses into send.status.* calls, im notices go alone; the calls are packed into `batch`
requests (packing.py). A request runs as one `batch` or call by call: a call refused for a bad argument
is bisected, and a portal that refuses `batch` for imconnector gets single calls for good. Each work's
answer (Bitrix24's result, or the error) is returned to the caller; the works themselves are not changed.
After each request, the caller's ``answered`` gets the answers of the works that request carried (it
records them before the next request goes out); when it answers False, the rest is not sent.

A portal's requests are shared by the poll batches in flight (``send``): at its pacer's slot a request
carries everything pending for the portal by then, not one batch's part of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from zaptrix.logging import get_logger

from bitrix_ingress.bitrix_rest.client import (
    ArgumentError,
    BitrixError,
    MethodNotFound,
    TransientBitrixError,
    WrongAuthType,
    result_items,
)
from bitrix_ingress.bitrix_rest.portal import PortalClient, RateLimitWaitExceeded
from bitrix_ingress.dispatcher import packing as dl
from bitrix_ingress.dispatcher.customer_messages import customer_item
from bitrix_ingress.dispatcher.notices import connector_notice_item, im_notice_call
from bitrix_ingress.dispatcher.work import Answer, ChangeWork, DeliverWork, NoticeWork, StatusWork, Work
from bitrix_ingress.metrics import BATCH_FALLBACKS, MESSAGES_PER_CALL
from bitrix_ingress.settings import DispatcherSettings

log = get_logger(__name__)
tracer = trace.get_tracer(__name__)

Answers = dict[Work, Answer]
# Called after each request with the answers of the works it carried; False: send no more.
Answered = Callable[[list[tuple[Work, Answer]]], Awaitable[bool]]


class PerMessageError(TransientBitrixError):
    """Bitrix24 accepted the call but reported this message as not delivered (SUCCESS=false)."""


class HeldBehind(TransientBitrixError):
    """Not sent: an earlier message of the same conversation failed in this batch (order is kept)."""


class Sent(NamedTuple):
    answers: Answers
    requests: int  # HTTP requests made


@dataclass(eq=False)
class _Pending:
    """One caller's works waiting for the portal's next request (``send``)."""

    works: list[Work]
    answered: Answered | None
    done: asyncio.Future[Sent]


class PortalCalls:
    def __init__(self, settings: DispatcherSettings, portals: PortalClient) -> None:
        self.settings = settings
        self.portals = portals
        self._no_batch: set[str] = set()
        self._pending: dict[str, list[_Pending]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}

    def batch_allowed(self, member_id: str) -> bool:
        return self.settings.bitrix_use_batch and member_id not in self._no_batch

    async def send(self, member_id: str, works: Sequence[Work], answered: Answered | None = None) -> Sent:
        """Send every work to the portal; an answer for each work that a request carried.

        The works join the portal's queue. One sender per portal waits until the portal's pacer has room,
        then packs what is queued by then, of every poll batch in flight, into one request. At 2 req/s a
        request must carry all that arrived during the pacing interval (a reply brings three status
        webhooks); one request per poll batch carried one batch's part, and a small batch spent a slot.
        What the callers rely on holds: each caller's ``answered`` gets the answers of its own works right
        after the request that carried them (before the portal's next request), the callers' works are
        of different conversations (the consumer runs a key in one batch at a time), each in its order."""
        if not works:
            return Sent({}, 0)
        entry = _Pending(list(works), answered, asyncio.get_running_loop().create_future())
        self._pending.setdefault(member_id, []).append(entry)
        if member_id not in self._senders:
            self._senders[member_id] = asyncio.create_task(self._sender(member_id))
        try:
            return await asyncio.shield(entry.done)
        except asyncio.CancelledError:
            queue = self._pending.get(member_id, [])
            if entry in queue:  # not taken yet: nothing of it goes out for a caller that is gone
                queue.remove(entry)
            raise

    async def _sender(self, member_id: str) -> None:
        """The portal's queue, one round per request slot, until it is empty."""
        try:
            while self._pending.get(member_id):
                await self.portals.room(member_id)
                entries = self._take(member_id)
                if entries:
                    await self._send_together(member_id, entries)
        except BaseException as exc:  # whatever happens, every waiting caller gets an answer
            if isinstance(exc, Exception):
                log.exception("portal sender failed", member_id=member_id)
            for entry in self._pending.pop(member_id, []):
                _settle(entry.done, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._senders.pop(member_id, None)

    def _take(self, member_id: str) -> list[_Pending]:
        """What goes out now: the oldest pending works, and those behind them while all still fit in one
        request (works that need several requests go alone). The rest waits for the next slot: a caller
        whose works went in this request is not held until a second one has waited for its slot."""
        queue = self._pending.get(member_id)
        if not queue:
            return []
        taken = [queue.pop(0)]
        works = list(taken[0].works)
        while queue and self._fits(member_id, works + queue[0].works):
            works += queue[0].works
            taken.append(queue.pop(0))
        if not queue:
            del self._pending[member_id]
        return taken

    def _fits(self, member_id: str, works: list[Work]) -> bool:
        try:
            return len(self._requests(member_id, works)) <= 1
        except Exception:  # what cannot be packed fails in its own send, with its caller's works only
            return False

    async def _send_together(self, member_id: str, entries: list[_Pending]) -> None:
        owner = {work: entry for entry in entries for work in entry.works}

        async def answered(carried: list[tuple[Work, Answer]]) -> bool:
            """Each caller records its own works; False from any: the rest is not sent (the mapper is not
            recording)."""
            mine: dict[_Pending, list[tuple[Work, Answer]]] = {}
            for work, answer in carried:
                mine.setdefault(owner[work], []).append((work, answer))
            oks = await asyncio.gather(*(e.answered(c) for e, c in mine.items() if e.answered is not None))
            return all(oks)

        try:
            sent = await self._send_now(member_id, [w for e in entries for w in e.works], answered)
        except BaseException as exc:  # each caller gets it as its own failure; a cancellation cancels them
            for entry in entries:
                _settle(entry.done, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for entry in entries:
            answers = {w: sent.answers[w] for w in entry.works if w in sent.answers}
            entry.done.set_result(Sent(answers, sent.requests))

    async def _send_now(self, member_id: str, works: Sequence[Work], answered: Answered | None) -> Sent:
        answers: Answers = {}
        broken: dict[str, str] = {}
        made = 0
        halted: BaseException | None = None
        for request in self._requests(member_id, works):
            if halted is not None:
                # The portal stayed rate limited beyond the in-place wait (do not wait again for every
                # request: the consumer must keep polling), or the mapper is not recording what was sent:
                # the rest is retried through the topic, unsent.
                for call in request:
                    _fail_call(answers, call, halted)
                continue
            request = _hold_broken(request, broken, answers)
            if not request:
                continue
            made += await self._execute(member_id, request, answers)
            carried: list[tuple[Work, Answer]] = []
            seen: set[int] = set()  # a read carrying its delivery is in two calls: answered once
            for call in request:
                for item in call.items:
                    for work in item.owners:
                        answer = answers.get(work)
                        if answer is not None and id(work) not in seen:
                            seen.add(id(work))
                            carried.append((work, answer))
                        if isinstance(answer, RateLimitWaitExceeded):
                            halted = answer
                        if call.method == dl.SEND_MESSAGES and isinstance(answer, BaseException):
                            if work.conv_key:
                                broken.setdefault(work.conv_key, str(answer)[:200])
            if answered is not None and not await answered(carried) and halted is None:
                halted = TransientBitrixError(
                    "NOT_SENT", "not sent: what the previous request delivered could not be recorded"
                )
        return Sent(answers, made)

    def _requests(self, member_id: str, works: Sequence[Work]) -> list[list[dl.Call]]:
        settings = self.settings
        stream: OrderedDict[tuple[str, int], list[dl.Item]] = OrderedDict()
        statuses: OrderedDict[tuple[str, str, int], list[dl.Item]] = OrderedDict()
        singles: list[dl.Call] = []
        for w in works:
            if isinstance(w, DeliverWork):
                stream.setdefault((w.connector, w.line), []).append(customer_item(w))
            elif isinstance(w, NoticeWork):
                im_call = im_notice_call(w)
                if im_call is not None:
                    singles.append(im_call)
                else:
                    stream.setdefault((w.connector, w.line), []).append(connector_notice_item(w))
            elif isinstance(w, ChangeWork):
                singles.append(w.call())
            elif isinstance(w, StatusWork):
                statuses.setdefault((w.method, w.connector, w.line), []).append(dl.Item(w, w.payload))
                if w.reading_payload is not None:
                    key = (dl.STATUS_READING, w.connector, w.line)
                    statuses.setdefault(key, []).append(dl.Item(w, w.reading_payload))
        calls: list[dl.Call] = []
        for (connector, line), items in stream.items():
            calls += dl.chunk(
                dl.SEND_MESSAGES,
                {"CONNECTOR": connector, "LINE": line},
                items,
                max_messages=settings.bitrix_max_messages_per_call,
                max_files=settings.bitrix_max_files_per_call,
            )
        # Deliveries before readings: a read that carries its message's delivery is reported in that order.
        ordered = sorted(statuses.items(), key=lambda kv: kv[0][0] == dl.STATUS_READING)
        for (method, connector, line), items in ordered:
            calls += dl.chunk(
                method,
                {"CONNECTOR": connector, "LINE": line},
                dl.merge_statuses(items),
                max_messages=settings.bitrix_max_messages_per_call,
                max_files=settings.bitrix_max_messages_per_call,
            )
        calls += singles
        return dl.pack(
            calls,
            use_batch=self.batch_allowed(member_id),
            max_commands=settings.bitrix_batch_max_commands,
            max_messages=settings.bitrix_batch_max_messages,
            max_statuses=settings.bitrix_batch_max_statuses,
        )

    async def _execute(self, member_id: str, calls: list[dl.Call], answers: Answers) -> int:
        """Run calls as one request (batch) or one by one; returns the number of HTTP requests."""
        with request_spans(calls):
            if len(calls) == 1 or not self.batch_allowed(member_id):
                made = 0
                for call in calls:
                    made += await self._execute_single(member_id, call, answers)
                return made
            commands = {f"c{i}": (c.method, c.params()) for i, c in enumerate(calls)}
            try:
                result = await self.portals.batch(member_id, commands)
            except MethodNotFound:
                self._disable_batch(member_id, "batch method not available")
                made = 1
                for call in calls:
                    made += await self._execute_single(member_id, call, answers)
                return made
            except Exception as exc:
                for call in calls:
                    _fail_call(answers, call, exc)
                return 1
            made = 1
            for i, call in enumerate(calls):
                key = f"c{i}"
                err = result.errors.get(key)
                if err is None:
                    _succeed_call(answers, call, result.results.get(key))
                elif batch_refused(call, err):
                    self._disable_batch(member_id, err.reason)
                    made += await self._execute_single(member_id, call, answers)
                elif isinstance(err, ArgumentError) and len(call.items) > 1:
                    made += await self._execute_single(member_id, call, answers)
                else:
                    _fail_call(answers, call, err)
            return made

    def _disable_batch(self, member_id: str, reason: str) -> None:
        if member_id not in self._no_batch:
            self._no_batch.add(member_id)
            BATCH_FALLBACKS.inc()
            log.warning(
                "batch refused for imconnector calls, sending them one by one",
                member_id=member_id,
                reason=reason,
            )

    async def _execute_single(self, member_id: str, call: dl.Call, answers: Answers) -> int:
        if call.messages:
            MESSAGES_PER_CALL.observe(len(call.items))
        try:
            result = await self.portals.call(member_id, call.method, call.params())
        except ArgumentError as exc:
            if len(call.items) > 1:  # one bad message must not sink the others: bisect
                first, second = call.split()
                return (
                    1
                    + await self._execute_single(member_id, first, answers)
                    + await self._execute_single(member_id, second, answers)
                )
            _fail_call(answers, call, exc)
            return 1
        except Exception as exc:
            _fail_call(answers, call, exc)
            return 1
        _succeed_call(answers, call, result)
        return 1

    async def run_commands(
        self, member_id: str, commands: dict[str, tuple[str, dict[str, Any]]], works: Sequence[Work]
    ) -> tuple[dict[str, Any], int]:
        """Independent calls, as batch requests when allowed; results or exceptions per key."""
        out: dict[str, Any] = {}
        keys = list(commands)
        step = self.settings.bitrix_batch_max_commands if self.settings.bitrix_use_batch else 1
        made = 0
        spans_for = [dl.Call("crm", {}, [dl.Item(w, {})]) for w in works]
        with request_spans(spans_for):
            for start in range(0, len(keys), step):
                part = {k: commands[k] for k in keys[start : start + step]}
                made += 1
                if len(part) == 1:
                    ((key, (method, params)),) = part.items()
                    try:
                        out[key] = await self.portals.call(member_id, method, params)
                    except Exception as exc:
                        out[key] = exc
                    continue
                try:
                    res = await self.portals.batch(member_id, part)
                except Exception as exc:
                    out.update(dict.fromkeys(part, exc))
                    continue
                out.update(res.results)
                out.update(res.errors)
        return out, made


def _settle(done: asyncio.Future[Sent], exc: BaseException) -> None:
    """A waiting caller's answer when its works could not go out: the error, or cancelled with the sender."""
    if done.done():
        return
    if isinstance(exc, Exception):
        done.set_exception(exc)
    else:
        done.cancel()


def _hold_broken(request: list[dl.Call], broken: dict[str, str], answers: Answers) -> list[dl.Call]:
    """Keep conversation order: after a failed message, later ones of that conversation wait too."""
    if not broken:
        return request
    out = []
    for call in request:
        if call.method == dl.SEND_MESSAGES:
            kept = []
            for item in call.items:
                work: Work = item.owner
                if work.conv_key in broken:
                    held = HeldBehind("HELD", f"an earlier message failed: {broken[work.conv_key]}")
                    _fail(answers, work, held)
                else:
                    kept.append(item)
            if not kept:
                continue
            call = dl.Call(call.method, call.base, kept, call.messages)
        out.append(call)
    return out


def batch_refused(call: dl.Call, err: BitrixError) -> bool:
    return call.method.startswith("imconnector.") and (
        isinstance(err, MethodNotFound | WrongAuthType) or err.code == "ERROR_BATCH_METHOD_NOT_ALLOWED"
    )


def _fail(answers: Answers, work: Work, exc: BaseException) -> None:
    """The first error of a work is its answer (it replaces a result)."""
    if not isinstance(answers.get(work), BaseException):
        answers[work] = exc


def _done(answers: Answers, work: Work, result: Any) -> None:
    if not isinstance(answers.get(work), BaseException):
        answers[work] = result if isinstance(result, dict) else {"result": result}


def _fail_call(answers: Answers, call: dl.Call, exc: BaseException) -> None:
    for item in call.items:
        for owner in item.owners:
            _fail(answers, owner, exc)


def _succeed_call(answers: Answers, call: dl.Call, result: Any) -> None:
    """Bitrix24's answer to one call, per work: imconnector.send.messages answers per message."""
    if call.method != dl.SEND_MESSAGES:
        failed = isinstance(result, dict) and result.get("SUCCESS") is False
        for item in call.items:
            for owner in item.owners:  # a status's riders share its answer
                if failed:
                    error = PerMessageError(
                        "SUCCESS_FALSE", f"{call.method} answered SUCCESS=false", method=call.method
                    )
                    _fail(answers, owner, error)
                else:
                    _done(answers, owner, result)
        return
    per_message = result_items(result)
    overall_failed = isinstance(result, dict) and result.get("SUCCESS") is False
    for index, item in enumerate(call.items):
        res = per_message[index] if index < len(per_message) else None
        res_failed = isinstance(res, dict) and res.get("SUCCESS") is False
        if res_failed or (res is None and overall_failed):
            errors = res.get("ERRORS") if isinstance(res, dict) else None
            detail = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors or "")
            _fail(
                answers,
                item.owner,
                PerMessageError("MESSAGE_NOT_DELIVERED", detail[:300], method=call.method),
            )
        else:
            _done(answers, item.owner, res if isinstance(res, dict) else {})


@contextlib.contextmanager
def request_spans(calls: list[dl.Call]) -> Iterator[None]:
    """Each event's trace gets a span named after the method that carried it (``bitrix24
    imconnector.send.messages``); the HTTP request itself (a batch or a single call) runs inside the
    first event's span, and every event's span links to it."""
    owned = [(call.method, owner) for call in calls for item in call.items for owner in item.owners]
    if not owned:
        yield
        return
    request_name = "bitrix24 " + (calls[0].method if len(calls) == 1 else "batch")
    attributes = {"zaptrix.bitrix.calls": len(calls), "zaptrix.bitrix.items": len(owned)}
    spans = [
        tracer.start_span(
            f"bitrix24 {method}",
            context=trace.set_span_in_context(work.rec.span),
            kind=SpanKind.INTERNAL,
            attributes={
                **attributes,
                "zaptrix.bitrix.method": method,
                "zaptrix.event_id": work.rec.envelope.event_id,
            },
        )
        for method, work in owned
    ]
    try:
        with tracer.start_as_current_span(
            request_name,
            context=trace.set_span_in_context(spans[0]),
            kind=SpanKind.INTERNAL,
            links=[Link(span.get_span_context()) for span in spans[1:129]],
            attributes=attributes,
        ) as request_span:
            for span in spans:
                span.add_link(request_span.get_span_context())
            yield
    finally:
        for span in spans:
            span.end()
