"""Running calls on one portal: as one `batch` request or one by one, bisecting a call refused for a bad
argument, and falling back to single calls for good on a portal that refuses `batch` for imconnector."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from zaptrix.logging import get_logger

from bitrix_ingress import delivery as dl
from bitrix_ingress.call_results import batch_refused, fail_call, succeed_call
from bitrix_ingress.metrics import BATCH_FALLBACKS, MESSAGES_PER_CALL
from bitrix_ingress.portal import PortalClient
from bitrix_ingress.request_spans import request_spans
from bitrix_ingress.rest import ArgumentError, MethodNotFound
from bitrix_ingress.settings import DispatcherSettings
from bitrix_ingress.work import LOGGER, Work

log = get_logger(LOGGER)


class PortalRequests:
    def __init__(self, settings: DispatcherSettings, portals: PortalClient) -> None:
        self.settings = settings
        self.portals = portals
        self._no_batch: set[str] = set()

    def batch_allowed(self, member_id: str) -> bool:
        return self.settings.bitrix_use_batch and member_id not in self._no_batch

    async def execute(self, member_id: str, calls: list[dl.Call]) -> int:
        """Run calls as one request (batch) or one by one; returns the number of HTTP requests."""
        with request_spans(calls):
            if len(calls) == 1 or not self.batch_allowed(member_id):
                made = 0
                for call in calls:
                    made += await self._execute_single(member_id, call)
                return made
            commands = {f"c{i}": (c.method, c.params()) for i, c in enumerate(calls)}
            try:
                result = await self.portals.batch(member_id, commands)
            except MethodNotFound:
                self._disable_batch(member_id, "batch method not available")
                made = 1
                for call in calls:
                    made += await self._execute_single(member_id, call)
                return made
            except Exception as exc:
                for call in calls:
                    fail_call(call, exc)
                return 1
            made = 1
            for i, call in enumerate(calls):
                key = f"c{i}"
                err = result.errors.get(key)
                if err is None:
                    succeed_call(call, result.results.get(key))
                elif batch_refused(call, err):
                    self._disable_batch(member_id, err.reason)
                    made += await self._execute_single(member_id, call)
                elif isinstance(err, ArgumentError) and len(call.items) > 1:
                    made += await self._execute_single(member_id, call)
                else:
                    fail_call(call, err)
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

    async def _execute_single(self, member_id: str, call: dl.Call) -> int:
        if call.messages:
            MESSAGES_PER_CALL.observe(len(call.items))
        try:
            result = await self.portals.call(member_id, call.method, call.params())
        except ArgumentError as exc:
            if len(call.items) > 1:  # one bad message must not sink the others: bisect
                first, second = call.split()
                return (
                    1
                    + await self._execute_single(member_id, first)
                    + await self._execute_single(member_id, second)
                )
            fail_call(call, exc)
            return 1
        except Exception as exc:
            fail_call(call, exc)
            return 1
        succeed_call(call, result)
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
