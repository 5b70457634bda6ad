"""Bitrix24's answer to one call, applied to the work items it carried."""

from __future__ import annotations

from typing import Any

from bitrix_ingress import delivery as dl
from bitrix_ingress.rest import BitrixError, MethodNotFound, TransientBitrixError, WrongAuthType, result_items
from bitrix_ingress.work import Work


class PerMessageError(TransientBitrixError):
    """Bitrix24 accepted the call but reported this message as not delivered (SUCCESS=false)."""


def batch_refused(call: dl.Call, err: BitrixError) -> bool:
    return call.method.startswith("imconnector.") and (
        isinstance(err, MethodNotFound | WrongAuthType) or err.code == "ERROR_BATCH_METHOD_NOT_ALLOWED"
    )


def fail_call(call: dl.Call, exc: BaseException) -> None:
    for item in call.items:
        owner: Work = item.owner
        owner.fail(exc)


def succeed_call(call: dl.Call, result: Any) -> None:
    if call.method != dl.SEND_MESSAGES:
        failed = isinstance(result, dict) and result.get("SUCCESS") is False
        for item in call.items:
            owner: Work = item.owner
            if failed:
                owner.fail(
                    PerMessageError(
                        "SUCCESS_FALSE", f"{call.method} answered SUCCESS=false", method=call.method
                    )
                )
            else:
                owner.done(result)
        return
    per_message = result_items(result)
    overall_failed = isinstance(result, dict) and result.get("SUCCESS") is False
    for index, item in enumerate(call.items):
        owner = item.owner
        res = per_message[index] if index < len(per_message) else None
        res_failed = isinstance(res, dict) and res.get("SUCCESS") is False
        if res_failed or (res is None and overall_failed):
            errors = res.get("ERRORS") if isinstance(res, dict) else None
            detail = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors or "")
            owner.fail(PerMessageError("MESSAGE_NOT_DELIVERED", detail[:300], method=call.method))
        else:
            owner.done(res if isinstance(res, dict) else {})
