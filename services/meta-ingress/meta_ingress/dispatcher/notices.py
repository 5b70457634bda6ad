"""Notices for the operator: SendFailure events on the wa-to-b24 flow, shown in the Bitrix24 chat."""

from __future__ import annotations

from dataclasses import dataclass

from zaptrix.kafka import EventProducer, PermanentError, PublishError, TransientError
from zaptrix.logging import get_logger
from zaptrix.v1 import events_pb2, mapper_pb2

from meta_ingress.graph.errors import GraphApiError

log = get_logger(__name__)

# The fields a Notice and its SendFailure share: where in Bitrix24 the notice is shown.
_ADDRESS = ("member_id", "line_id", "connector_id", "bitrix_chat_id", "bitrix_message_id", "external_chat_id")

OperatorEvent = events_pb2.OperatorMessage | events_pb2.OperatorMessageEdit | events_pb2.OperatorMessageDelete


@dataclass(frozen=True)
class Notice:
    """Where a failure notice goes. The portal, chat and Kafka key are always a conversation's, fixed when
    the notice is made, never the event's claim."""

    event_id: str
    member_id: str
    line_id: int
    connector_id: str
    bitrix_chat_id: str
    bitrix_message_id: str  # empty: an informational notice, no message of the operator failed
    external_chat_id: str
    conversation_key: str

    @classmethod
    def about(
        cls,
        event: OperatorEvent,
        event_id: str,
        conversation: mapper_pb2.Conversation,
        *,
        informational: bool = False,
    ) -> Notice:
        """A notice in the conversation's chat about an operator's event (about its message unless
        ``informational``)."""
        return cls(
            event_id=event_id,
            member_id=conversation.member_id,
            line_id=event.line_id,
            connector_id=event.connector_id,
            bitrix_chat_id=event.bitrix_chat_id or conversation.bitrix_chat_id,
            bitrix_message_id="" if informational else event.bitrix_message_id,
            external_chat_id=conversation.external_chat_id,
            conversation_key=f"{conversation.phone_number_id}:{conversation.wa_id}",
        )

    @classmethod
    def for_conversation(
        cls, conversation: mapper_pb2.Conversation, event_id: str, line_id: int = 0, connector_id: str = ""
    ) -> Notice:
        """An informational notice in a conversation's chat (no operator message failed); without a line
        and connector the bitrix dispatcher takes them from the channel."""
        return cls(
            event_id=event_id,
            member_id=conversation.member_id,
            line_id=line_id,
            connector_id=connector_id,
            bitrix_chat_id=conversation.bitrix_chat_id,
            bitrix_message_id="",
            external_chat_id=conversation.external_chat_id,
            conversation_key=f"{conversation.phone_number_id}:{conversation.wa_id}",
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
        if not notice.member_id or not notice.conversation_key:
            # A programming error, not an input: a notice must never go to a portal the event merely named.
            raise PermanentError(f"notice {notice.event_id} is not routed to a conversation; not produced")
        address = {name: getattr(notice, name) for name in _ADDRESS}
        failure = events_pb2.SendFailure(notice=text[:2000], template_sent=template_sent, **address)
        if error is not None:
            failure.error.CopyFrom(error)
        env = events_pb2.Envelope(
            event_id=notice.event_id,
            conversation_key=notice.conversation_key,
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
