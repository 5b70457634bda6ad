"""The last-known verdicts that stand in for token-keeper while it is unavailable (web/verification.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest
from bitrix_ingress.deps import Deps
from bitrix_ingress.settings import WebSettings
from bitrix_ingress.web.verification import MAX_PAIRS, Verifications
from zaptrix.rpc import RpcFailed, error_for
from zaptrix.v1 import token_keeper_pb2


@dataclass
class TokenKeeper:
    tokens: dict[str, str] = field(default_factory=dict)
    down: grpc.StatusCode | None = None
    calls: int = 0

    async def verify_application_token(self, member_id: str, token: str) -> Any:
        self.calls += 1
        if self.down is not None:
            raise error_for("token-keeper VerifyApplicationToken", self.down)
        known = member_id in self.tokens
        return token_keeper_pb2.VerifyApplicationTokenResponse(
            known_portal=known, valid=known and self.tokens[member_id] == token
        )


def verifications(tk: TokenKeeper, **settings: Any) -> Verifications:
    return Verifications(cast(Deps, tk), WebSettings(verify_cache_ttl_s=0, **settings))


async def test_a_flood_of_wrong_tokens_does_not_evict_a_portals_last_good_verdict() -> None:
    tk = TokenKeeper({"m1": "good"})
    v = verifications(tk)
    assert (await v.verify("m1", "good")).valid
    for i in range(MAX_PAIRS + 10):
        assert not (await v.verify("m1", f"guess-{i}")).valid
    tk.down = grpc.StatusCode.UNAVAILABLE
    verdict = await v.verify("m1", "good")
    assert verdict.valid and verdict.stale
    assert not (await v.verify("m1", f"guess-{MAX_PAIRS + 9}")).valid  # a remembered refusal
    with pytest.raises(RpcFailed):
        await v.verify("m1", "guess-0")  # evicted by later refusals: not guessed at


async def test_a_token_token_keeper_no_longer_accepts_loses_its_last_good_verdict() -> None:
    tk = TokenKeeper({"m1": "old"})
    v = verifications(tk)
    assert (await v.verify("m1", "old")).valid
    tk.tokens["m1"] = "new"  # reinstalled
    assert not (await v.verify("m1", "old")).valid
    tk.down = grpc.StatusCode.DEADLINE_EXCEEDED
    assert not (await v.verify("m1", "old")).valid


@pytest.mark.parametrize("code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED])
async def test_a_refused_call_is_not_an_outage(code: grpc.StatusCode) -> None:
    """Only an unavailable token-keeper lets the last verdict stand in; a refused call is a deployment to fix."""
    tk = TokenKeeper({"m1": "good"})
    v = verifications(tk)
    assert (await v.verify("m1", "good")).valid
    tk.down = code
    with pytest.raises(RpcFailed):
        await v.verify("m1", "good")


async def test_an_unknown_portal_is_not_remembered_and_stale_verdicts_expire() -> None:
    tk = TokenKeeper({"m1": "good"})
    v = verifications(tk, verify_stale_s=0)
    assert not (await v.verify("m2", "x")).known_portal
    assert (await v.verify("m1", "good")).valid
    tk.down = grpc.StatusCode.UNAVAILABLE
    for member, token in (("m2", "x"), ("m1", "good")):  # never remembered; remembered for 0 s
        with pytest.raises(RpcFailed):
            await v.verify(member, token)
