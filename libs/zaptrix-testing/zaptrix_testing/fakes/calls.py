"""What the fakes share: a call record and scripted failures."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc


async def abort(context: Any, code: grpc.StatusCode, details: str) -> NoReturn:
    """context.abort, typed: it always raises."""
    await context.abort(code, details)
    raise AssertionError("context.abort returned")


T = TypeVar("T")


async def found(context: Any, value: T | None, what: str) -> T:
    """The value, or NOT_FOUND as the real services answer for an unknown key."""
    if value is None:
        await abort(context, grpc.StatusCode.NOT_FOUND, f"no such {what}")
    return value


class Recorder:
    """Records each call as "Method" or "Method:key" (key: the request's natural id) and the request itself;
    answers the next scripted failure of a method with its status code."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.requests: list[tuple[str, Any]] = []
        self.fail: dict[str, list[grpc.StatusCode]] = defaultdict(list)
        # single-use: (method, predicate on the request, status code)
        self.fail_if: list[tuple[str, Callable[[Any], bool], grpc.StatusCode]] = []
        self.down = False  # every call answers UNAVAILABLE (an outage of the whole service)

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.requests if m == method)

    async def _enter(self, method: str, request: Any, context: Any, key: str = "") -> None:
        self.calls.append(f"{method}:{key}" if key else method)
        self.requests.append((method, request))
        if self.down:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "down")
        for rule in self.fail_if:
            if rule[0] == method and rule[1](request):
                self.fail_if.remove(rule)
                await abort(context, rule[2], f"injected {rule[2].name}")
        if self.fail[method]:
            code = self.fail[method].pop(0)
            await abort(context, code, f"injected {code.name}")

    def forget_calls(self) -> None:
        self.calls.clear()
        self.requests.clear()
        self.fail.clear()
        self.fail_if.clear()
        self.down = False
