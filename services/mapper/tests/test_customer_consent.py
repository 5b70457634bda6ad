"""Customer consent (user_preferences) against real PostgreSQL: the newest change wins, per channel and
customer; unknown customers have no preference; bad requests are INVALID_ARGUMENT."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from mapper_support import Mapper, expect_code
from zaptrix.v1 import mapper_pb2 as pb

PNID, OTHER = "100000000000001", "100000000000002"
CAT = "marketing_messages"


def change(
    value: str, at: int, pnid: str = PNID, wa_id: str = "491701", detail: str = ""
) -> pb.CustomerConsent:
    return pb.CustomerConsent(
        phone_number_id=pnid,
        wa_id=wa_id,
        category=CAT,
        value=value,
        detail=detail,
        changed_at=Timestamp(seconds=at),
    )


def get(pnid: str = PNID, wa_id: str = "491701") -> pb.GetCustomerConsentRequest:
    return pb.GetCustomerConsentRequest(phone_number_id=pnid, wa_id=wa_id, category=CAT)


async def test_nothing_recorded_is_an_empty_value(mapper: Mapper) -> None:
    await mapper.bind(PNID)
    assert (await mapper.stub.GetCustomerConsent(get())).value == ""


async def test_the_newest_change_wins_whatever_the_arrival_order(mapper: Mapper) -> None:
    await mapper.bind(PNID)
    now = int(datetime.now(UTC).timestamp())
    stored = await mapper.stub.RecordCustomerConsent(change("stop", now - 100, detail="stop please"))
    assert (stored.value, stored.detail) == ("stop", "stop please")
    assert (await mapper.stub.RecordCustomerConsent(change("resume", now))).value == "resume"
    late = await mapper.stub.RecordCustomerConsent(change("stop", now - 50))  # older, arrives last
    assert late.value == "resume" and late.changed_at.seconds == now
    assert (await mapper.stub.GetCustomerConsent(get())).value == "resume"
    rows = await mapper.sql("SELECT value FROM mapper.customer_consent")
    assert [r["value"] for r in rows] == ["resume"]


async def test_consent_is_per_channel_and_customer(mapper: Mapper) -> None:
    await mapper.bind(PNID)
    await mapper.bind(OTHER)
    now = int(datetime.now(UTC).timestamp())
    await mapper.stub.RecordCustomerConsent(change("stop", now))
    assert (await mapper.stub.GetCustomerConsent(get(OTHER))).value == ""
    assert (await mapper.stub.GetCustomerConsent(get(wa_id="491702"))).value == ""


async def test_bad_requests_are_invalid_argument(mapper: Mapper) -> None:
    await mapper.bind(PNID)
    now = int(datetime.now(UTC).timestamp())
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect_code(mapper.stub.RecordCustomerConsent(change("maybe", now)), invalid)
    await expect_code(mapper.stub.RecordCustomerConsent(change("stop", now, wa_id="")), invalid)
    await expect_code(mapper.stub.RecordCustomerConsent(change("stop", now + 10 * 86400)), invalid)
    no_time = change("stop", now)
    no_time.ClearField("changed_at")
    await expect_code(mapper.stub.RecordCustomerConsent(no_time), invalid)
    await expect_code(mapper.stub.GetCustomerConsent(pb.GetCustomerConsentRequest(wa_id="1")), invalid)
    unbound = change("stop", now, pnid="999")
    await expect_code(mapper.stub.RecordCustomerConsent(unbound), grpc.StatusCode.NOT_FOUND)
