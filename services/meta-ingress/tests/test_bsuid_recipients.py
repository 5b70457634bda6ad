"""Replies to a customer known only by a BSUID go out with "recipient" (never "to"); 131062 is a clear
operator notice."""

from __future__ import annotations

from meta_ingress.dispatcher.context import Target
from meta_ingress.dispatcher.send_plan import template_payload, text_payload
from meta_ingress.graph.errors import Action, GraphApiError, classify, notice_for
from zaptrix.v1 import mapper_pb2

BSUID = "US.13491208655302741918"


def test_a_bsuid_goes_in_recipient_and_a_phone_in_to() -> None:
    by_bsuid = text_payload(BSUID, "hi")
    assert by_bsuid["recipient"] == BSUID and "to" not in by_bsuid
    by_phone = template_payload("491701234567", "hello", "de")
    assert by_phone["to"] == "491701234567" and "recipient" not in by_phone


def test_the_target_address_is_the_phone_when_known_else_the_current_bsuid() -> None:
    def target(**kw: str) -> Target:
        conv = mapper_pb2.Conversation(phone_number_id="P", wa_id="US.1", **kw)
        return Target(conv, mapper_pb2.Channel(), None)  # type: ignore[arg-type]

    assert target(customer_user_id=BSUID).address == BSUID  # the key is an older BSUID
    assert target(customer_user_id=BSUID, customer_phone="4917012").address == "4917012"
    assert target().address == "US.1"  # a mapper without identity aliases: the key


def test_131062_is_an_operator_notice_that_names_the_cause() -> None:
    exc = GraphApiError(400, 131062, "BSUID recipient not supported")
    assert classify(exc) == Action.NOTIFY
    assert "username" in notice_for(exc) and "authentication" in notice_for(exc)
