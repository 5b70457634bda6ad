"""Connecting the connector to an Open Line (bitrix24.md §1: imconnector.activate, then
imconnector.connector.data.set), with the token of the administrator on the page."""

from __future__ import annotations

from typing import Any

from bitrix_ingress.bitrix_rest.portal import PortalClient, Token
from bitrix_ingress.settings import WebSettings


def connector_data(settings: WebSettings, line: int) -> dict[str, Any]:
    return {
        "ID": f"{settings.connector_id}_line{line}",
        "URL": settings.public_base_url,
        "URL_IM": settings.public_base_url,
        "NAME": settings.connector_name,
    }


async def set_line(
    portals: PortalClient, settings: WebSettings, token: Token, line: int, active: bool
) -> None:
    member_id, connector = token.member_id, settings.connector_id
    await portals.call_with_token(
        member_id,
        token,
        "imconnector.activate",
        {"CONNECTOR": connector, "LINE": line, "ACTIVE": 1 if active else 0},
    )
    if active:
        await portals.call_with_token(
            member_id,
            token,
            "imconnector.connector.data.set",
            {"CONNECTOR": connector, "LINE": line, "DATA": connector_data(settings, line)},
        )
