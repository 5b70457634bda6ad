"""im.message.add into an Open Lines chat (b24restdocs api-reference/chats/messages/im-message-add.md):
scope `im`; DIALOG_ID `chat<id>`; MESSAGE required; SYSTEM=Y shows it as a system message. Only chat
members may post (ACCESS_ERROR otherwise): the portal's `im_chat_access` says whether the app's user is
one. A system message stays in the chat: it is not sent to the connector as an operator message."""

from __future__ import annotations

import time
from typing import Any

from .bitrix_rest import Ctx, RestError, method, ok
from .bitrix_state import ChatMessage


def _yes(value: Any, default: bool) -> bool:
    if value is None or value == "":
        return default
    return str(value).strip().upper() in ("Y", "1", "TRUE")


@method("im.message.add", "im")
def message_add(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    dialog = str(p.get("DIALOG_ID") or "").strip()
    if not dialog:
        raise RestError("CHAT_ID_EMPTY", "Recipient chat identifier is not specified when sending a message")
    if not dialog.startswith("chat") or not dialog[4:].isdigit():
        # One-to-one dialogs are not modelled: Zaptrix only ever posts into Open Lines chats.
        raise RestError("USER_ID_EMPTY", "Recipient identifier is not specified (only chat<id> is modelled)")
    text = str(p.get("MESSAGE") or "").strip()
    if not text and not p.get("ATTACH"):
        raise RestError("MESSAGE_EMPTY", "Message text is not provided")
    chat = ctx.portal.chat_by_id(int(dialog[4:]))
    if chat is None or not ctx.portal.spec.im_chat_access:
        raise RestError("ACCESS_ERROR", "Insufficient permissions to send a message")
    system = _yes(p.get("SYSTEM"), False)
    message = ChatMessage(
        id=ctx.portal.next_id("message"),
        direction="system" if system else "operator",
        text=text,
        date=time.time(),
        author="system" if system else f"user{ctx.user_id}",
    )
    chat.messages.append(message)
    return ok(message.id)
