"""WhatsApp customer identifiers (2026): phone (wa_id), business-scoped user id (BSUID), username.

Shared by meta-ingress (what a webhook may carry), the mapper (what an alias may be) and the bitrix
dispatcher (which phone spellings name the same CRM contact). Pure functions, bounded input.

Formats (Meta's business-scoped-user-ids page, 360dialog): a BSUID is a two-letter country code, a dot and
up to 128 alphanumerics (``US.13491208655302741918``); a parent BSUID has ``ENT.`` after the country
(``US.ENT.…``). A wa_id is the phone number's digits, country code first, no ``+``.
"""

from __future__ import annotations

import re

MAX_IDENTIFIER = 160
_BSUID = re.compile(r"[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}")
_PHONE = re.compile(r"[0-9]{5,20}")
_USERNAME = re.compile(r"[A-Za-z0-9._]{1,64}")


def is_bsuid(value: str) -> bool:
    return len(value) <= MAX_IDENTIFIER and _BSUID.fullmatch(value) is not None


def is_phone(value: str) -> bool:
    return _PHONE.fullmatch(value) is not None


def is_username(value: str) -> bool:
    return _USERNAME.fullmatch(value) is not None


def _digits(phone: str) -> str:
    return "".join(ch for ch in phone[:40] if "0" <= ch <= "9")


def phone_variants(phone: str) -> list[str]:
    """Every spelling (digits only) of one mobile number that WhatsApp and CRMs use, the given one first.

    Brazil (55): the ninth digit after the two-digit area code (55 AA 9XXXXXXXX vs 55 AA XXXXXXXX).
    Mexico (52): the ``1`` after the country code of old mobile numbers (521… vs 52…).
    Argentina (54): the ``9`` after the country code of mobiles (549… vs 54…).
    Other numbers have one spelling. The relation is symmetric: each variant's variants are the same set.
    """
    d = _digits(phone)
    out = [d] if d else []
    if d.startswith("55") and len(d) == 13 and d[4] == "9" and d[5] in "6789":
        out.append(d[:4] + d[5:])
    elif d.startswith("55") and len(d) == 12 and d[4] in "6789":  # mobiles start 6-9 before the extra 9
        out.append(d[:4] + "9" + d[4:])
    elif d.startswith("521") and len(d) == 13:
        out.append("52" + d[3:])
    elif d.startswith("52") and len(d) == 12:
        out.append("521" + d[2:])
    elif d.startswith("549") and len(d) == 13:
        out.append("54" + d[3:])
    elif d.startswith("54") and len(d) == 12:
        out.append("549" + d[2:])
    return out
