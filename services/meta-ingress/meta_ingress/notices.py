"""Notices for the operator: SendFailure events on the wa-to-b24 flow, shown in the Bitrix24 chat."""

from __future__ import annotations

from dataclasses import dataclass

from zaptrix.kafka import EventProducer, PublishError, TransientError
from zaptrix.logging import get_logger
from zaptrix.v1 import events_pb2

from meta_ingress.graph import GraphApiError

log = get_logger(__name__)

OperatorEvent = events_pb2.OperatorMessage | events_pb2.OperatorMessageEdit | events_pb2.OperatorMessageDelete


@dataclass
class Notice:
    """Where a failure notice goes (the SendFailure fields that come from the Bitrix24 side)."""

    event_id: str
    member_id: str
    line_id: int
    connector_id: str
    bitrix_chat_id: str
    bitrix_message_id: str  # empty: an informational notice, no message of the operator failed
    external_chat_id: str
    conversation_key: str = ""

    @classmethod
    def about(cls, event: OperatorEvent, event_id: str, *, informational: bool = False) -> Notice:
        """A notice to the chat of an operator's event (about its message unless ``informational``)."""
        return cls(
            event_id=event_id,
            member_id=event.member_id,
            line_id=event.line_id,
            connector_id=event.connector_id,
            bitrix_chat_id=event.bitrix_chat_id,
            bitrix_message_id="" if informational else event.bitrix_message_id,
            external_chat_id=event.external_chat_id,
        )


def graph_error(exc: BaseException) -> events_pb2.GraphError:
    if isinstance(exc, GraphApiError):
        return events_pb2.GraphError(
            code=exc.code if exc.code is not None and 0 <= exc.code < 2**31 else 0,
            title=exc.title,
            message=exc.message[:500],
            details=exc.details[:500],
        )
    return events_pb2.GraphError(code=0, title=type(exc).__name__, message=str(exc)[:500])


def window_error(message: str, details: str) -> events_pb2.GraphError:
    """A 131047 the dispatcher reports itself (known before sending, or reported after the send)."""
    return events_pb2.GraphError(code=131047, title="Re-engagement message", message=message, details=details)


class Notifier:
    def __init__(self, producer: EventProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def send(
        self, notice: Notice, error: events_pb2.GraphError | None, text: str, template_sent: bool = False
    ) -> None:
        """Produce the SendFailure; TransientError when Kafka does not take it (the event is retried)."""
        failure = events_pb2.SendFailure(
            member_id=notice.member_id,
            line_id=notice.line_id,
            connector_id=notice.connector_id,
            bitrix_chat_id=notice.bitrix_chat_id,
            bitrix_message_id=notice.bitrix_message_id,
            external_chat_id=notice.external_chat_id,
            notice=text[:2000],
            template_sent=template_sent,
        )
        if error is not None:
            failure.error.CopyFrom(error)
        env = events_pb2.Envelope(
            event_id=notice.event_id,
            conversation_key=notice.conversation_key or f"b24:{notice.member_id}:{notice.external_chat_id}",
            source=events_pb2.PLATFORM_WHATSAPP,
            send_failure=failure,
        )
        env.occurred_at.GetCurrentTime()
        try:
            await self.producer.publish(self.topic, [env])
        except PublishError as exc:
            raise TransientError(f"cannot publish the failure notice: {exc}") from exc
        log.info(
            "failure notice produced", notice_event_id=notice.event_id, code=error.code if error else None
        )
