"""The template catalogue against real PostgreSQL: a sync replaces a channel's templates, webhooks change
status / quality / category across the WABA's channels only when newer, and only the channel's own portal
may list them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from mapper_support import Mapper, expect_code
from zaptrix.v1 import mapper_pb2 as pb

PNID, OTHER, WABA = "100000000000001", "100000000000002", "200000000000001"
BODY = [{"type": "BODY", "text": "Order {{1}} ships {{2}}"}]


def tpl(tid: str, name: str, status: str = "APPROVED", language: str = "en_US") -> pb.MessageTemplate:
    return pb.MessageTemplate(
        template_id=tid,
        name=name,
        language=language,
        status=status,
        category="UTILITY",
        components_json=json.dumps(BODY),
    )


def sync(pnid: str, *templates: pb.MessageTemplate, at: int | None = None) -> pb.ReplaceTemplatesRequest:
    req = pb.ReplaceTemplatesRequest(phone_number_id=pnid, waba_id=WABA, templates=list(templates))
    if at is not None:
        req.synced_at.CopyFrom(Timestamp(seconds=at))
    return req


def now() -> int:
    return int(datetime.now(UTC).timestamp())


def listing(pnid: str = PNID, member: str = "portal-a", approved: bool = False) -> pb.ListTemplatesRequest:
    return pb.ListTemplatesRequest(member_id=member, phone_number_id=pnid, approved_only=approved)


async def test_a_sync_replaces_the_channels_catalogue(mapper: Mapper) -> None:
    await mapper.bind(PNID)
    first = await mapper.stub.ReplaceTemplates(sync(PNID, tpl("1", "order_update"), tpl("2", "promo")))
    assert (first.stored, first.removed) == (2, 0)
    again = await mapper.stub.ReplaceTemplates(sync(PNID, tpl("1", "order_update", "PAUSED"), tpl("3", "hi")))
    assert (again.stored, again.removed) == (2, 1)
    rows = (await mapper.stub.ListTemplates(listing())).templates
    assert [(t.name, t.status) for t in rows] == [("hi", "APPROVED"), ("order_update", "PAUSED")]
    assert json.loads(rows[1].components_json) == BODY and rows[1].parameter_format == "POSITIONAL"
    approved = (await mapper.stub.ListTemplates(listing(approved=True))).templates
    assert [t.name for t in approved] == ["hi"]


async def test_a_webhook_changes_every_channel_of_the_waba_and_only_forward(mapper: Mapper) -> None:
    await mapper.bind(PNID)
    await mapper.bind(OTHER, member_id="portal-b")
    t0 = now() - 100
    await mapper.stub.ReplaceTemplates(sync(PNID, tpl("1", "order_update"), at=t0))
    await mapper.stub.ReplaceTemplates(sync(OTHER, tpl("1", "order_update"), at=t0))
    paused = pb.TemplateUpdate(waba_id=WABA, template_id="1", status="PAUSED", at=Timestamp(seconds=t0 + 10))
    answer = await mapper.stub.ApplyTemplateUpdate(paused)
    assert answer.updated == 2 and list(answer.phone_number_ids) == [PNID, OTHER]
    assert (await mapper.stub.ListTemplates(listing(approved=True))).templates == []
    late = pb.TemplateUpdate(waba_id=WABA, template_id="1", status="APPROVED", at=Timestamp(seconds=t0 + 5))
    assert (await mapper.stub.ApplyTemplateUpdate(late)).updated == 0  # older than the pause
    quality = pb.TemplateUpdate(waba_id=WABA, template_id="1", quality="RED", at=Timestamp(seconds=t0 + 20))
    assert (await mapper.stub.ApplyTemplateUpdate(quality)).updated == 2
    row = (await mapper.stub.ListTemplates(listing(OTHER, "portal-b"))).templates[0]
    assert (row.status, row.quality, row.category) == ("PAUSED", "RED", "UTILITY")
    unknown = pb.TemplateUpdate(waba_id=WABA, template_id="9", status="APPROVED", at=Timestamp(seconds=now()))
    assert (await mapper.stub.ApplyTemplateUpdate(unknown)).updated == 0


async def test_only_the_channels_portal_may_list(mapper: Mapper) -> None:
    await mapper.bind(PNID)
    await mapper.stub.ReplaceTemplates(sync(PNID, tpl("1", "order_update")))
    await expect_code(mapper.stub.ListTemplates(listing(member="portal-b")), grpc.StatusCode.NOT_FOUND)
    await expect_code(mapper.stub.ListTemplates(listing("999")), grpc.StatusCode.NOT_FOUND)


async def test_bad_catalogues_are_invalid_argument(mapper: Mapper) -> None:
    await mapper.bind(PNID)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    bad_json = tpl("1", "x")
    bad_json.components_json = "{not json"
    await expect_code(mapper.stub.ReplaceTemplates(sync(PNID, bad_json)), invalid)
    not_list = tpl("1", "x")
    not_list.components_json = '{"type": "BODY"}'
    await expect_code(mapper.stub.ReplaceTemplates(sync(PNID, not_list)), invalid)
    await expect_code(mapper.stub.ReplaceTemplates(sync(PNID, tpl("1", "a"), tpl("1", "b"))), invalid)
    await expect_code(mapper.stub.ReplaceTemplates(sync(PNID, tpl("", "a"))), invalid)
    await expect_code(mapper.stub.ReplaceTemplates(sync("999", tpl("1", "a"))), grpc.StatusCode.NOT_FOUND)
    no_time = pb.TemplateUpdate(waba_id=WABA, template_id="1", status="PAUSED")
    await expect_code(mapper.stub.ApplyTemplateUpdate(no_time), invalid)
    assert (await mapper.stub.ListTemplates(listing())).templates == []
