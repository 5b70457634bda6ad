"""CRM (mode GATEWAY, first contact): find the customer's contact by phone, else create it; never a duplicate."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, NamedTuple

from zaptrix.identity import phone_variants
from zaptrix.logging import get_logger
from zaptrix.rpc import RpcFailed, RpcNotFound

from bitrix_ingress.bitrix_rest.client import PermanentBitrixError
from bitrix_ingress.deps import Deps, conversation_update
from bitrix_ingress.dispatcher.packing import customer_user
from bitrix_ingress.dispatcher.portal_calls import PortalCalls
from bitrix_ingress.dispatcher.work import DeliverWork, Work
from bitrix_ingress.metrics import CRM
from bitrix_ingress.text import split_name

log = get_logger(__name__)


class Contacts(NamedTuple):
    ids: dict[str, str]  # conversation id -> CRM contact id
    failed: dict[Work, BaseException]  # works that must not be sent now
    requests: int


async def ensure_contacts(
    deps: Deps, requests: PortalCalls, member_id: str, works: list[DeliverWork]
) -> Contacts:
    """Find the customer's CRM contact by phone, else create it; never a duplicate.
    The contact ids found or created, the works a CRM failure holds back, and the requests made."""
    by_conv: OrderedDict[str, list[DeliverWork]] = OrderedDict()
    for w in works:
        by_conv.setdefault(w.conv.id, []).append(w)
    keys = {conv_id: f"f{i}" for i, conv_id in enumerate(by_conv)}
    find: dict[str, tuple[str, dict[str, Any]]] = {}
    for conv_id, ws in by_conv.items():
        # Every spelling of the number (Brazil's extra 9, Mexico's 521/52, Argentina's 549/54), with and
        # without "+": a contact saved under another variant is the same person.
        spellings = [v for digits in phone_variants(_phone_of(ws[0])) for v in (f"+{digits}", digits)]
        find[keys[conv_id]] = (
            "crm.duplicate.findbycomm",
            {"type": "PHONE", "values": spellings, "entity_type": "CONTACT"},
        )
    found, made = await requests.run_commands(member_id, find, [w for ws in by_conv.values() for w in ws])
    contact_ids: dict[str, str] = {}
    failed: dict[Work, BaseException] = {}
    add: dict[str, tuple[str, dict[str, Any]]] = {}
    for conv_id, ws in by_conv.items():
        res = found.get(keys[conv_id])
        if isinstance(res, BaseException):
            _crm_failed(ws, res, failed)
            continue
        ids = _contact_ids(res)
        if ids:
            contact_ids[conv_id] = str(min(ids))
            CRM.labels("found").inc()
            continue
        first = ws[0]
        name, last_name = split_name(first.contact_name)
        add[keys[conv_id]] = (
            "crm.contact.add",
            {
                "fields": {
                    "NAME": name,
                    "LAST_NAME": last_name,
                    "PHONE": [{"VALUE": f"+{_phone_of(first)}", "VALUE_TYPE": "MOBILE"}],
                    "SOURCE_DESCRIPTION": "WhatsApp (Zaptrix)",
                    "OPENED": "Y",
                },
                "params": {"REGISTER_SONET_EVENT": "N"},
            },
        )
    if add:
        adding = [w for conv_id, ws in by_conv.items() if keys[conv_id] in add for w in ws]
        created, more = await requests.run_commands(member_id, add, adding)
        made += more
        for conv_id, ws in by_conv.items():
            if keys[conv_id] not in add:
                continue
            res = created.get(keys[conv_id])
            if isinstance(res, BaseException):
                _crm_failed(ws, res, failed)
            elif res:
                contact_ids[conv_id] = str(res)
                CRM.labels("created").inc()
    for conv_id, contact_id in contact_ids.items():
        try:
            await deps.update_conversation(conversation_update(conv_id, bitrix_contact_id=contact_id))
        except (RpcFailed, RpcNotFound) as exc:  # found again by phone next time: no duplicate
            log.warning("could not record the CRM contact", conversation_id=conv_id, error=str(exc))
    return Contacts(contact_ids, failed, made)


def _phone_of(w: DeliverWork) -> str:
    """The customer's number (prepare_customer asks for a contact only when one is known)."""
    _, phone = customer_user(w.conv)
    return w.cm.wa_id if phone is None else phone


def _crm_failed(works: list[DeliverWork], exc: BaseException, failed: dict[Work, BaseException]) -> None:
    if isinstance(exc, PermanentBitrixError):
        # No crm scope, access denied...: deliver the message anyway; the line's tracker still sees user.phone.
        CRM.labels("error").inc()
        log.error("CRM contact step failed, delivering without it", error=str(exc), wa_id=works[0].cm.wa_id)
        return
    CRM.labels("retry").inc()
    for w in works:
        failed.setdefault(w, exc)


def _contact_ids(result: Any) -> list[int]:
    if not isinstance(result, dict):
        return []
    ids = []
    for value in result.get("CONTACT") or []:
        with contextlib.suppress(TypeError, ValueError):
            ids.append(int(value))
    return ids
