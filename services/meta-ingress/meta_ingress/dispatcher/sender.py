"""One Graph API send with pacing and bounded in-process retries.

Order of a send: the customer's pair slot (deferred through the retry topic when far away) → the phone
number's throughput token → POST. Transient answers (5xx, 131000, timeouts, 130429 with a short
Retry-After) are retried here with exponential backoff and full jitter (tenacity), bounded by
``send_attempts`` and ``send_backoff_max_s`` so a poll batch is never held long; what is still failing
is raised for the caller to turn into TransientError (retry topic) or a failure notice. A send whose
outcome is unknown (the request may have reached Meta) is never retried here: send_once.py reconciles it.
Every send carries its part id as ``biz_opaque_callback_data`` (sent_parts.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from zaptrix.kafka import TransientError
from zaptrix.logging import get_logger

from meta_ingress.dispatcher.pacing import ChannelThrottle, PairKey, PairPacer, PairSnapshot
from meta_ingress.graph.client import GraphClient
from meta_ingress.graph.errors import Action, GraphApiError, GraphTransportError, classify
from meta_ingress.metrics import PACING_WAIT, PAIR_DEFERRALS, SENDS, THROTTLED
from meta_ingress.sent_parts import opaque_of
from meta_ingress.settings import DispatcherSettings

log = get_logger(__name__)
T = TypeVar("T")


class PairDeferred(TransientError):
    """The customer's next pair slot is further away than we may wait in process."""


class Sender:
    def __init__(self, settings: DispatcherSettings, graph: GraphClient) -> None:
        self.settings = settings
        self.graph = graph
        self.throttle = ChannelThrottle(
            settings.throughput_mps, settings.throughput_overrides, settings.throughput_burst_s
        )
        self.pair = PairPacer(settings.pair_rate_per_s, settings.pair_burst, settings.pair_margin_s)

    # --- retry policy -----------------------------------------------------------------------------
    def _inline_retryable(self, exc: BaseException, resend_ambiguous: bool = True) -> bool:
        if isinstance(exc, PairDeferred):
            return False
        if not resend_ambiguous and isinstance(exc, GraphTransportError) and exc.maybe_delivered:
            return False
        if classify(exc) not in (Action.RETRY, Action.THROTTLE):
            return False
        retry_after = getattr(exc, "retry_after", None)
        return retry_after is None or retry_after <= self.settings.send_backoff_max_s

    def _wait(self, state: RetryCallState) -> float:
        ceiling = min(
            self.settings.send_backoff_max_s,
            self.settings.send_backoff_base_s * 2 ** (state.attempt_number - 1),
        )
        delay = random.uniform(ceiling / 2, ceiling)
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None) or 0.0
        return float(max(delay, retry_after))

    def check_pair(self, key: PairKey, event_id: str) -> None:
        """Raise PairDeferred now (before any upload work) when this customer's slot is far away."""
        if self.pair.wait_s(key, event_id) > self.settings.pair_inline_wait_max_s:
            retry_after = self.pair.defer(key, event_id)
            PAIR_DEFERRALS.inc()
            raise PairDeferred(f"pair rate: next slot for this customer in {retry_after:.1f}s", retry_after)

    async def _pace(self, phone_number_id: str, key: PairKey, event_id: str) -> PairSnapshot:
        self.check_pair(key, event_id)
        wait = self.pair.wait_s(key, event_id)
        if wait > 0:
            await asyncio.sleep(wait)
        PACING_WAIT.labels("pair").observe(wait)
        await self.throttle.acquire(phone_number_id)
        return self.pair.commit(key, event_id)

    async def send(
        self,
        phone_number_id: str,
        wa_id: str,
        event_id: str,
        token: str,
        payload: dict[str, Any],
    ) -> str:
        """POST one message; returns its wamid. Raises PairDeferred, GraphApiError or GraphTransportError
        (``maybe_delivered``: not retried here, the caller reconciles it)."""
        key = (phone_number_id, wa_id)
        kind = str(payload.get("type", "text"))
        opaque = opaque_of(event_id)
        if opaque is not None:
            payload = {**payload, "biz_opaque_callback_data": opaque}

        async def attempt() -> str:
            previous = await self._pace(phone_number_id, key, event_id)
            try:
                wamid = await self.graph.send_message(phone_number_id, token, payload)
            except GraphTransportError as exc:
                SENDS.labels(kind, "transport_error").inc()
                if exc.maybe_delivered:  # it may have gone out: the pair slot stays taken
                    log.warning(
                        "send outcome unknown (may have reached Meta)", event_id=event_id, error=str(exc)
                    )
                else:
                    self.pair.restore(previous)
                raise
            except GraphApiError as exc:
                SENDS.labels(kind, exc.label).inc()
                action = classify(exc)
                if action == Action.PAIR:
                    THROTTLED.labels(exc.label).inc()
                    self.pair.penalize(key)
                    raise
                # Meta refused it (5xx, throttled, or a synchronous refusal such as 131047): nothing reached
                # the customer, so the slot is still free, e.g. for the re-engagement template that follows.
                self.pair.restore(previous)
                if action == Action.THROTTLE:
                    THROTTLED.labels(exc.label).inc()
                    self.throttle.pause(
                        phone_number_id, min(exc.retry_after or 1.0, self.settings.send_backoff_max_s)
                    )
                raise
            SENDS.labels(kind, "ok").inc()
            return wamid

        return await self.with_retries(attempt, resend_ambiguous=False)

    async def with_retries(self, attempt: Callable[[], Awaitable[T]], *, resend_ambiguous: bool = True) -> T:
        """``attempt`` with bounded in-process retries; an ambiguous failure is retried only when repeating
        it is harmless (``resend_ambiguous``: a mark-as-read, never a send)."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.send_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: self._inline_retryable(exc, resend_ambiguous)),
            reraise=True,
        )
        async for state in retrying:
            with state:
                return await attempt()
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True always raises or returns

    def defer_after_pair_error(self, phone_number_id: str, wa_id: str, event_id: str) -> float:
        """After 131056: reserve the customer's next slot (after the penalty) for this event."""
        PAIR_DEFERRALS.inc()
        return self.pair.defer((phone_number_id, wa_id), event_id)
