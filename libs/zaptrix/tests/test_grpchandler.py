"""The one RPC wrapper of mapper and token-keeper: the service's table, then a database outage as UNAVAILABLE,
anything else a bare INTERNAL; every call observed with its code, a cancelled one as CANCELLED."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from zaptrix.database import DatabaseUnavailable
from zaptrix.grpchandler import rpc_decorator, status_of


class Missing(Exception):
    pass


class MissingRow(Missing):
    pass


TABLE = [(Missing, grpc.StatusCode.NOT_FOUND)]


class Aborted(Exception):
    pass


class Context:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise Aborted


def test_status_of_follows_the_table_then_the_outage_rule() -> None:
    assert status_of(MissingRow("x"), TABLE) is grpc.StatusCode.NOT_FOUND  # a subclass takes its base's code
    assert status_of(DatabaseUnavailable("down"), TABLE) is grpc.StatusCode.UNAVAILABLE
    assert status_of(ValueError("x"), TABLE) is grpc.StatusCode.INTERNAL


async def test_every_call_is_observed_with_its_code_and_internal_errors_say_nothing() -> None:
    seen: list[tuple[str, grpc.StatusCode]] = []
    rpc = rpc_decorator(TABLE, lambda method, code, _: seen.append((method, code)))

    class Servicer:
        @rpc
        async def Get(self, request: str) -> str:
            if request == "missing":
                raise MissingRow("no row 7")
            if request == "bug":
                raise ValueError("SELECT ... password=hunter2")
            if request == "cancel":
                raise asyncio.CancelledError
            return request.upper()

    servicer: Any = Servicer()
    assert await servicer.Get("ok", Context()) == "OK"
    missing, bug = Context(), Context()
    with pytest.raises(Aborted):
        await servicer.Get("missing", missing)
    with pytest.raises(Aborted):
        await servicer.Get("bug", bug)
    with pytest.raises(asyncio.CancelledError):
        await servicer.Get("cancel", Context())
    assert missing.aborted == (grpc.StatusCode.NOT_FOUND, "no row 7")
    assert bug.aborted == (grpc.StatusCode.INTERNAL, "internal error")
    assert [code for _, code in seen] == [
        grpc.StatusCode.OK,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
    ]
    assert {method for method, _ in seen} == {"Get"}


async def test_a_failed_call_is_counted_before_its_answer_leaves() -> None:
    """A caller that has seen the error must also see it counted (the mapper's INTERNAL test read the
    counter right after the answer and, under load, found it not yet incremented)."""
    seen: list[grpc.StatusCode] = []
    rpc = rpc_decorator(TABLE, lambda _, code, __: seen.append(code))

    class CountingContext(Context):
        async def abort(self, code: grpc.StatusCode, message: str) -> None:
            self.counted_when_aborting = list(seen)
            await super().abort(code, message)

    class Servicer:
        @rpc
        async def Get(self, request: str) -> str:
            raise MissingRow("gone") if request == "missing" else ValueError("bug")

    servicer: Any = Servicer()
    for request, code in (("missing", grpc.StatusCode.NOT_FOUND), ("bug", grpc.StatusCode.INTERNAL)):
        seen.clear()
        ctx = CountingContext()
        with pytest.raises(Aborted):
            await servicer.Get(request, ctx)
        assert ctx.counted_when_aborting == [code]
        assert seen == [code]  # and only once
