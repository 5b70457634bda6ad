"""What Bitrix24 said is blocked, remembered until it lifts, so that nothing asks it again before then.

- ``OPERATION_TIME_LIMIT`` (429) blocks one method for our app until ``operating_reset_at``: a call of that
  method on that portal fails here with the remaining wait, without a request (the event takes the retry
  topic, due when the block lifts), and a batch sends only its other commands. Asking again would only
  spend the portal's 2 req/s on answers known in advance.
- ``OVERLOAD_LIMIT`` (503) is Bitrix24's manual block of the portal's REST API for us, lifted by Bitrix24
  support, not by a clock: every call to the portal fails here for ``overload_wait_s``
  (ZAPTRIX_BITRIX_OVERLOAD_WAIT_S, or the Retry-After it gave); then one call goes to find out whether it
  was lifted while the others wait for its answer (for at most ``PROBE_S``): a success lifts the block,
  OVERLOAD_LIMIT again starts another wait.

Per process: another replica learns a block from its own first refused call. Bounded like the pacers
(``max_size`` entries, the oldest out first; expired ones are dropped when met).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from bitrix_ingress.bitrix_rest.client import BatchResult, BitrixError, MethodBlocked, Overloaded

OVERLOAD_WAIT_S = 600.0  # a manual block: no reset time is given; look again after this long (default)
PROBE_S = 30.0  # the others' wait for the answer of the call that looks again (at most overload_wait_s)
_WHOLE_PORTAL = ""  # the method of an OVERLOAD_LIMIT entry: every method


class Blocks:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_size: int = 10_000,
        overload_wait_s: float = OVERLOAD_WAIT_S,
    ) -> None:
        self._clock = clock
        self.max_size = max_size
        self.overload_wait_s = overload_wait_s
        self._until: OrderedDict[tuple[str, str], float] = OrderedDict()

    def note(self, member_id: str, exc: BaseException) -> bool:
        """Remember the block an error reports (a MethodBlocked or Overloaded); True when it starts one.
        An OVERLOAD_LIMIT without a Retry-After gets ``overload_wait_s`` as its retry_after."""
        if isinstance(exc, Overloaded):
            exc.retry_after = exc.retry_after or self.overload_wait_s
            return self._add((member_id, _WHOLE_PORTAL), exc.retry_after)
        if isinstance(exc, MethodBlocked) and exc.method and exc.retry_after:
            return self._add((member_id, exc.method), exc.retry_after)
        return False

    def refuse(self, member_id: str, method: str) -> None:
        """Raise the remembered block's error (with the wait left) if the call cannot go now."""
        exc = self.blocked(member_id, method)
        if exc is not None:
            raise exc

    def lifted(self, member_id: str) -> None:
        """The portal answered a request: its REST API is not blocked (any more)."""
        self._until.pop((member_id, _WHOLE_PORTAL), None)

    def blocked(self, member_id: str, method: str) -> BitrixError | None:
        """The error a call of ``method`` on the portal would get now, without asking, or None."""
        return self._refusal(member_id, method, self._overload_left(member_id))

    def split(
        self, member_id: str, commands: Mapping[str, tuple[str, Mapping[str, Any]]]
    ) -> tuple[dict[str, tuple[str, Mapping[str, Any]]], BatchResult]:
        """A batch's commands that may go now, and the answers of those that may not. The portal's
        overload is looked at once: the whole batch is the call that looks again after the wait."""
        allowed: dict[str, tuple[str, Mapping[str, Any]]] = {}
        refused = BatchResult()
        overload = self._overload_left(member_id)
        for key, (method, params) in commands.items():
            exc = self._refusal(member_id, method, overload)
            if exc is None:
                allowed[key] = (method, params)
            else:
                refused.errors[key] = exc
        return allowed, refused

    def _refusal(self, member_id: str, method: str, overload_left: float) -> BitrixError | None:
        return (
            _overloaded(method, overload_left) if overload_left else self._method_blocked(member_id, method)
        )

    def _method_blocked(self, member_id: str, method: str) -> MethodBlocked | None:
        left = self._left((member_id, method))
        if not left:
            return None
        return MethodBlocked(
            "OPERATION_TIME_LIMIT",
            f"the method is blocked for another {left:.0f} s (operating time)",
            method=method,
            retry_after=left,
        )

    def _overload_left(self, member_id: str) -> float:
        """Seconds the portal's REST API stays blocked for us. 0 when it is not, or when the wait is over and
        this call is the one that looks again (the others then wait for its answer)."""
        key = (member_id, _WHOLE_PORTAL)
        until = self._until.get(key)
        if until is None:
            return 0.0
        now = self._clock()
        if until > now:
            return until - now
        self._until[key] = now + min(self.overload_wait_s, PROBE_S)
        return 0.0

    def _add(self, key: tuple[str, str], seconds: float) -> bool:
        now = self._clock()
        started = self._until.get(key, 0.0) <= now
        until = now + seconds
        self._until[key] = max(until, self._until.get(key, until))
        self._until.move_to_end(key)
        while len(self._until) > self.max_size:
            self._until.popitem(last=False)
        return started

    def _left(self, key: tuple[str, str]) -> float:
        until = self._until.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._until[key]
            return 0.0
        return left

    def __len__(self) -> int:
        return len(self._until)


def _overloaded(method: str, left: float) -> Overloaded:
    return Overloaded(
        "OVERLOAD_LIMIT",
        f"the portal's REST API was blocked by Bitrix24 (manual block); asking again in {left:.0f} s",
        method=method,
        retry_after=left,
    )


__all__ = ["OVERLOAD_WAIT_S", "PROBE_S", "Blocks"]
