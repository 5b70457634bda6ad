"""A mapper or token-keeper answer becomes the outcome zaptrix.rpc gives it, the same in both adapters."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from bitrix_ingress.deps import Deps
from bitrix_ingress.dispatcher.work import outcome_for

S = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (S.ALREADY_EXISTS, "dead"),  # a conflict: retrying gives the same answer (was retried)
        (S.UNIMPLEMENTED, "dead"),  # the peer lacks the method: a deployment to fix (was retried)
        (S.UNAUTHENTICATED, "dead"),  # no client certificate accepted (was retried)
        (S.PERMISSION_DENIED, "dead"),  # the caller allowlist refuses us
        (S.OUT_OF_RANGE, "dead"),
        (S.NOT_FOUND, "dead"),
        (S.UNAVAILABLE, "retry"),
        (S.INTERNAL, "retry"),
        (S.DEADLINE_EXCEEDED, "retry"),
    ],
)
async def test_a_peer_answer_becomes_one_outcome(code: grpc.StatusCode, kind: str) -> None:
    async def refuse(request: Any, **_: Any) -> Any:
        raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="said no")

    deps = Deps(cast(Any, SimpleNamespace(mapper=None, token_keeper=None, timeout=1.0)))
    with pytest.raises(Exception) as info:
        await deps._unary(refuse, None, "mapper LinkMessage")
    outcome = outcome_for(info.value)
    assert outcome.kind == kind
    assert outcome.reason.startswith("mapper LinkMessage: ")
