"""im.message.add into an Open Lines chat (b24restdocs `api-reference/chats/messages/im-message-add.md`).

Only the chat form of DIALOG_ID ("chat<id>") is modelled. SYSTEM=Y stores a system line: Open Lines does not
relay system messages to the connector, so no OnImConnectorMessageAdd follows (research-2026-12.md 2.2).
A message without SYSTEM=Y would be an operator message in a real portal; the stand-in refuses it rather
than pretend to relay it."""

from __future__ import annotations

import time
from typing import Any

from .bitrix_rest import Ctx, RestError, method, ok
from .bitrix_state import ChatMessage

SCOPE = "im"


@method("im.message.add", SCOPE)
def message_add(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    dialog = str(p.get("DIALOG_ID") or "")
    text = str(p.get("MESSAGE") or "")
    if not dialog:
        raise RestError("DIALOG_ID_EMPTY", "Dialog ID can't be empty")
    if not text.strip():
        raise RestError("MESSAGE_EMPTY", "Message can't be empty")
    if not dialog.startswith("chat") or not dialog[4:].isdigit():
        raise RestError("PARAMS_ERROR", "the stand-in models only DIALOG_ID=chat<id>")
    chat = ctx.portal.chat_by_id(int(dialog[4:]))
    if chat is None:
        raise RestError("ACCESS_ERROR", "You do not have access to the specified dialog")
    if str(p.get("SYSTEM") or "N").upper() != "Y":
        raise RestError("PARAMS_ERROR", "the stand-in models only SYSTEM=Y (a real portal would relay it)")
    message = ChatMessage(
        id=ctx.portal.next_id("message"), direction="system", text=text, date=time.time(), author="system"
    )
    chat.messages.append(message)
    return ok(message.id)
