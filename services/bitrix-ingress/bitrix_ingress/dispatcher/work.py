"""The dispatcher's work items (one per event that goes to Bitrix24) and how an error becomes an outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zaptrix.errors import PermanentError, TransientError
from zaptrix.kafka import Outcome, Received
from zaptrix.v1 import events_pb2, mapper_pb2

from bitrix_ingress.dispatcher import packing as dl

# What Bitrix24 answered for one work: its result, or the error.
Answer = dict[str, Any] | BaseException


def outcome_for(exc: BaseException) -> Outcome:
    """Bitrix24 and RPC errors are TransientError or PermanentError; anything else is retried."""
    if isinstance(exc, TransientError | PermanentError):
        return Outcome.from_exception(exc)
    return Outcome.retry(f"unexpected {type(exc).__name__}: {exc}"[:500])


@dataclass(eq=False)
class Work:
    rec: Received
    member_id: str
    conv_key: str
    connector: str
    line: int
    index: int = -1


@dataclass(eq=False)
class DeliverWork(Work):
    cm: events_pb2.CustomerMessage = field(default_factory=events_pb2.CustomerMessage)
    conv: mapper_pb2.Conversation = field(default_factory=mapper_pb2.Conversation)
    contact_name: str = ""
    need_contact: bool = False
    contact_id: str = ""
    reply_label: str = ""


@dataclass(eq=False)
class StatusWork(Work):
    st: events_pb2.WhatsAppStatus = field(default_factory=events_pb2.WhatsAppStatus)
    method: str = dl.STATUS_DELIVERY
    payload: dict[str, Any] = field(default_factory=dict)
    # A read whose delivery is not reported yet: the .delivery ``payload`` and, after it, this .reading.
    reading_payload: dict[str, Any] | None = None
    new_bitrix_status: str = ""


@dataclass(eq=False)
class NoticeWork(Work):
    source: str = ""
    wa_id: str = ""  # the user.id of the chat's customer (packing.customer_user)
    phone: str | None = None  # the customer's number when known; None: wa_id is the number (old rule)
    contact_name: str = ""
    external_chat_id: str = ""
    bitrix_chat_id: str = ""
    body: str = ""
    wamid: str = ""  # of the failed operator message, for UpdateMessageStatus
    via: str = "connector"
    shown: str = ""  # the exact text to post (echoes, consent lines); empty: the "⚠️ Zaptrix:" notice of body


@dataclass(eq=False)
class ChangeWork(Work):
    """One imconnector call that changes what the chat shows: a customer's edit or revoke
    (imconnector.update/delete.messages, MESSAGES = [payload]) or a name from the business app's contact
    sync (imconnector.chat.name.set, params = payload)."""

    method: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    messages: bool = True  # payload is one MESSAGES[] item (else: the call's own params)

    def call(self) -> dl.Call:
        base = {"CONNECTOR": self.connector, "LINE": self.line}
        if self.messages:
            return dl.Call(self.method, base, [dl.Item(self, self.payload)])
        params = base | self.payload
        return dl.Call(self.method, params, [dl.Item(self, params)], messages=False)
