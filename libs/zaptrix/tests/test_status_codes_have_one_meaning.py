"""Every gRPC status code has one meaning for every caller (zaptrix.rpc)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import structlog
from zaptrix import errors, kafka
from zaptrix.kafka import Outcome
from zaptrix.kafka import consumer as kafka_consumer
from zaptrix.rpc import (
    PERMANENT_CODES,
    TRANSIENT_CODES,
    RpcConflict,
    RpcFailed,
    RpcNotFound,
    RpcPermanent,
    RpcTransient,
    call,
    error_for,
)

S = grpc.StatusCode


def _failing(code: grpc.StatusCode, details: str = "said no") -> Any:
    async def answer() -> Any:
        raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)

    return answer()


def test_every_failure_code_has_exactly_one_meaning() -> None:
    special = {S.NOT_FOUND, S.ALREADY_EXISTS}
    failures = set(S) - {S.OK}
    assert TRANSIENT_CODES | PERMANENT_CODES | special == failures
    assert not TRANSIENT_CODES & PERMANENT_CODES and not (TRANSIENT_CODES | PERMANENT_CODES) & special


@pytest.mark.parametrize(
    ("code", "cls", "kind"),
    [
        (S.UNAVAILABLE, RpcTransient, "retry"),
        (S.DEADLINE_EXCEEDED, RpcTransient, "retry"),
        (S.RESOURCE_EXHAUSTED, RpcTransient, "retry"),
        (S.ABORTED, RpcTransient, "retry"),
        (S.INTERNAL, RpcTransient, "retry"),
        (S.NOT_FOUND, RpcNotFound, "dead"),
        (S.ALREADY_EXISTS, RpcConflict, "dead"),
        (S.INVALID_ARGUMENT, RpcPermanent, "dead"),
        (S.FAILED_PRECONDITION, RpcPermanent, "dead"),
        (S.PERMISSION_DENIED, RpcPermanent, "dead"),
        (S.UNAUTHENTICATED, RpcPermanent, "dead"),
        (S.UNIMPLEMENTED, RpcPermanent, "dead"),
    ],
)
async def test_call_raises_the_code_s_error_and_the_consumer_s_outcome(
    code: grpc.StatusCode, cls: type[Exception], kind: str
) -> None:
    with pytest.raises(cls) as info:
        await call("mapper LinkMessage", _failing(code))
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)  # the gRPC error stays reachable
    assert info.value.code == code  # type: ignore[attr-defined]
    outcome = Outcome.from_exception(info.value)
    assert (outcome.kind, outcome.reason) == (kind, f"mapper LinkMessage: {code.name}: said no")


def test_not_found_is_not_a_failure_callers_retry_in_place() -> None:
    # bitrix bookkeeping retries RpcFailed in place; an unknown thing must not be retried there
    assert not isinstance(error_for("x", S.NOT_FOUND), RpcFailed)
    assert isinstance(error_for("x", S.ALREADY_EXISTS), RpcFailed)
    assert isinstance(error_for("x", S.NOT_FOUND), LookupError)


def test_reason_is_bounded() -> None:
    assert len(error_for("mapper X", S.INVALID_ARGUMENT, "y" * 10_000).reason) == 500


async def test_a_refused_caller_is_logged_as_an_error() -> None:
    with structlog.testing.capture_logs() as logs, pytest.raises(RpcPermanent):
        await call("mapper GetChannel", _failing(S.PERMISSION_DENIED, "meta-ingress-web may not call X"))
    assert [e["log_level"] for e in logs] == ["error"]
    assert "PERMISSION_DENIED" in logs[0]["error"]


async def test_a_transient_answer_is_not_logged_here() -> None:
    with structlog.testing.capture_logs() as logs, pytest.raises(RpcTransient):
        await call("mapper GetChannel", _failing(S.UNAVAILABLE))
    assert logs == []


async def test_success_passes_the_answer_through() -> None:
    async def answer() -> str:
        return "ok"

    assert await call("mapper GetChannel", answer()) == "ok"


def test_the_vocabulary_has_one_home_and_the_old_imports_still_work() -> None:
    assert kafka.TransientError is errors.TransientError is kafka_consumer.TransientError
    assert kafka.PermanentError is errors.PermanentError is kafka_consumer.PermanentError
