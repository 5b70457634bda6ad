"""The Graph API's errors, and what each means for an operator's message (whatsapp.md A5 error table).

Build logic on ``code`` (and the HTTP status when there is no code), never on titles: Meta says titles
"will eventually be deprecated".
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from enum import StrEnum

from zaptrix.kafka import TransientError


@dataclass(eq=False, repr=False)  # compared and shown as an exception, by identity and message
class GraphApiError(Exception):
    """The Graph API answered with an error (HTTP status >= 400)."""

    http_status: int
    code: int | None
    message: str
    _: KW_ONLY
    subcode: int | None = None
    details: str = ""
    title: str = ""
    fbtrace_id: str = ""
    retry_after: float | None = None

    def __post_init__(self) -> None:
        super().__init__(f"Graph API {self.http_status} code={self.code}: {self.message}")

    @property
    def label(self) -> str:
        return str(self.code) if self.code is not None else f"http_{self.http_status}"


class GraphTransportError(Exception):
    """No usable answer (connection refused, timeout, broken response).

    ``maybe_delivered`` is True when the request may have reached Meta (a read timeout or a connection
    dropped after sending): retrying can then produce a duplicate.
    """

    def __init__(self, message: str, *, maybe_delivered: bool) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered
        self.retry_after: float | None = None


class Action(StrEnum):
    RETRY = "retry"  # transient: back off (in process, then the retry topic)
    THROTTLE = (
        "throttle"  # the phone number's throughput (130429) or an app/WABA rate limit: slow down, retry
    )
    PAIR = "pair"  # 131056: too many messages to this customer; wait at least the pair interval
    AUTH = "auth"  # 0 / 190: the access token was rejected; alert, dead letter, never loop
    WINDOW = "window"  # 131047: 24-h window closed; tell the operator, offer the re-engagement template
    NOTIFY = "notify"  # this message cannot be delivered; tell the operator, the event is done
    FAULT = "fault"  # needs an administrator or a fix of ours; tell the operator, dead letter (replayable)


THROTTLE_CODES = frozenset({4, 17, 32, 613, 80007, 130429})
RETRY_CODES = frozenset({1, 2, 131000, 131016, 131057, 133004})
AUTH_CODES = frozenset({0, 190})
NOTIFY_CODES = frozenset(
    {
        131021,  # recipient cannot be the sender
        131026,  # undeliverable: not on WhatsApp, old client, terms not accepted
        131062,  # not allowed for a BSUID recipient (e.g. authentication templates)
        131048,  # spam rate limit: only after a long pause
        131049,  # Meta chose not to deliver (per-user marketing limit)
        131050,  # the user stopped marketing messages
        131051,  # unsupported message type
        131052,  # media download error
        131053,  # media upload error
        130472,  # the user's number is part of an experiment
        131055,  # method not allowed for this message
        # Templates (an operator's /template send; the catalogue check catches most before sending):
        132000,  # the number of parameters does not match the template
        132001,  # the template does not exist in that language
        132005,  # the text with the parameters is too long
        132007,  # the parameters break the template's format rules
        132012,  # a parameter has the wrong format (e.g. text where the header wants media)
        132015,  # the template is paused (low quality)
        132016,  # the template is disabled
    }
)
# The template errors an operator can act on, with the sentence they see (whatsapp.md A5; pywa errors.py).
TEMPLATE_NOTICES: dict[int, str] = {
    132000: "the number of values does not match the template's variables",
    132001: "this template does not exist (in this language) for the WhatsApp number; the template list is "
    "being refreshed",
    132005: "the text with your values is longer than WhatsApp allows",
    132007: "the values break WhatsApp's formatting rules for this template",
    132012: "a value has the wrong format for the template (for example text where the header needs an "
    "image or a document)",
    132015: "the template is paused by WhatsApp because of its quality; it has been taken out of the picker",
    132016: "the template is disabled by WhatsApp; it has been taken out of the picker",
}
MEDIA_CODES = frozenset({131052, 131053})
# 3 capability, 10 / 200-299 permissions, 100 / 131008 / 131009 invalid parameters (our payload), 368 policy
# block, 131031 account locked, 131042 payment, 131045 certificate, 133010 number not registered, 132xxx
# templates: all need someone to act, and the event can be replayed from the dead-letter topic afterwards.


def classify(exc: BaseException) -> Action:
    if isinstance(exc, GraphTransportError):
        return Action.RETRY
    if not isinstance(exc, GraphApiError):
        return Action.RETRY
    code = exc.code
    if code is None:
        if exc.http_status == 429:
            return Action.THROTTLE
        if exc.http_status in (401,):
            return Action.AUTH
        if exc.http_status >= 500 or exc.http_status in (408, 425):
            return Action.RETRY
        return Action.FAULT
    if code == 131056:
        return Action.PAIR
    if code in THROTTLE_CODES:
        return Action.THROTTLE
    if code in RETRY_CODES:
        return Action.RETRY
    if code in AUTH_CODES:
        return Action.AUTH
    if code == 131047:
        return Action.WINDOW
    if code in NOTIFY_CODES:
        return Action.NOTIFY
    if exc.http_status >= 500:
        return Action.RETRY  # an unknown code with a server error: Meta's side is failing
    return Action.FAULT


def retry_later(exc: BaseException, what: str) -> TransientError | None:
    """The TransientError (retry topic, honouring Retry-After) for an error worth another try later, else
    None: the caller decides what a refusal means."""
    if classify(exc) in (Action.RETRY, Action.THROTTLE, Action.PAIR):
        return TransientError(f"{what}: {describe(exc)}", getattr(exc, "retry_after", None))
    return None


def is_media_problem(exc: BaseException) -> bool:
    return isinstance(exc, GraphApiError) and exc.code in MEDIA_CODES


def describe(exc: BaseException) -> str:
    if isinstance(exc, GraphApiError):
        detail = exc.details or exc.message
        return f"{exc.label}: {detail}"[:300]
    return str(exc)[:300]


def notice_for(exc: GraphApiError) -> str:
    """The text an operator sees in the Bitrix24 chat when their message did not reach the customer."""
    code = exc.code
    detail = (exc.details or exc.message).strip()
    if code == 131047:
        return (
            "Not delivered: more than 24 hours have passed since the customer last wrote, so WhatsApp only "
            "allows template messages now. Send an approved template with the Templates button above the "
            "message box, or type /template NAME value | value. Your message will reach the customer once "
            "they reply."
        )
    if code is not None and code in TEMPLATE_NOTICES:
        return f"Template not delivered: {TEMPLATE_NOTICES[code]} ({code}: {detail})."[:1000]
    if code == 131062:
        return (
            "Not delivered: this customer is known only by their WhatsApp username (no phone number "
            "shared), and WhatsApp does not allow this kind of message (e.g. authentication templates) to "
            "such a customer. Reply with a normal message, or ask the customer to share their number."
        )
    if code == 131026:
        return (
            "Not delivered: this customer cannot receive WhatsApp messages (the number is not on WhatsApp, "
            "uses an old app version, or has not accepted WhatsApp's terms)."
        )
    if code == 131049:
        return (
            "Not delivered: WhatsApp chose not to deliver this message now (per-user limit). Try again later."
        )
    if code == 131050:
        return (
            "Not delivered: the customer has stopped marketing messages from this business. Use a utility "
            "template, or wait until the customer writes."
        )
    if code == 131048:
        return "Not delivered: WhatsApp's spam rate limit was hit for this number. Try again later."
    if code == 131051:
        return "Not delivered: WhatsApp does not support this kind of message."
    if code in MEDIA_CODES:
        return f"Not delivered: WhatsApp could not process the attached file ({detail})."
    if code in AUTH_CODES or exc.http_status == 401:
        return (
            "Not delivered: WhatsApp rejected the access token of this channel. An administrator must renew "
            "it; the message is kept and can be sent again afterwards."
        )
    if (code is not None and code in (10, 368, 131031, 131042, 131045, 133010)) or (
        code is not None and 200 <= code <= 299
    ):
        return (
            f"Not delivered: the WhatsApp Business account cannot send messages right now ({code}: {detail}). "
            "An administrator must check the account; the message is kept and can be sent again afterwards."
        )
    return f"Not delivered: WhatsApp refused the message ({exc.label}: {detail})."[:1000]
