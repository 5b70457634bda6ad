"""A mapper answer the meta dispatcher does not handle becomes the outcome zaptrix.rpc gives it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from meta_ingress.dispatcher.records import Records
from zaptrix.kafka import Outcome


class _Mapper:
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def FindConversation(self, request: Any, **_: Any) -> Any:
        raise grpc.aio.AioRpcError(self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="said no")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.NOT_FOUND, "dead"),  # an unknown conversation stays unknown (was retried)
        (grpc.StatusCode.ALREADY_EXISTS, "dead"),
        (grpc.StatusCode.PERMISSION_DENIED, "dead"),
        (grpc.StatusCode.UNAVAILABLE, "retry"),
    ],
)
async def test_an_unhandled_mapper_answer_becomes_one_outcome(code: grpc.StatusCode, kind: str) -> None:
    clients = SimpleNamespace(mapper=_Mapper(code), token_keeper=None, timeout=1.0)
    with pytest.raises(Exception) as info:
        await Records(cast(Any, clients)).conversation_of("1001", "49170")
    outcome = Outcome.from_exception(info.value)
    assert outcome.kind == kind
    assert "mapper FindConversation" in outcome.reason
