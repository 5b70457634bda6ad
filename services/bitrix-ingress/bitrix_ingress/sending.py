"""One portal's works → imconnector calls → requests, sent in order within the portal's pacing.

Messages and connector notices for one (connector, line) are packed into imconnector.send.messages
calls, statuses into send.status.* calls, im notices go alone; the calls are packed into `batch` requests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from bitrix_ingress import delivery as dl
from bitrix_ingress.call_results import fail_call
from bitrix_ingress.customer_messages import customer_item
from bitrix_ingress.notices import connector_notice_item, im_notice_call
from bitrix_ingress.portal import RateLimitWaitExceeded
from bitrix_ingress.portal_requests import PortalRequests
from bitrix_ingress.rest import TransientBitrixError
from bitrix_ingress.settings import DispatcherSettings
from bitrix_ingress.work import DeliverWork, NoticeWork, StatusWork, Work


async def send(
    settings: DispatcherSettings, requests: PortalRequests, member_id: str, works: Sequence[Work]
) -> int:
    """Send every work that has no outcome yet; returns the number of HTTP requests made."""
    stream: OrderedDict[tuple[str, int], list[dl.Item]] = OrderedDict()
    statuses: OrderedDict[tuple[str, str, int], list[dl.Item]] = OrderedDict()
    singles: list[dl.Call] = []
    for w in works:
        if w.error is not None or w.result is not None:
            continue
        if isinstance(w, DeliverWork):
            stream.setdefault((w.connector, w.line), []).append(customer_item(w))
        elif isinstance(w, NoticeWork):
            im_call = im_notice_call(w)
            if im_call is not None:
                singles.append(im_call)
            else:
                stream.setdefault((w.connector, w.line), []).append(connector_notice_item(w))
        elif isinstance(w, StatusWork):
            statuses.setdefault((w.method, w.connector, w.line), []).append(dl.Item(w, w.payload))
    calls: list[dl.Call] = []
    for (connector, line), items in stream.items():
        calls += dl.chunk(
            dl.SEND_MESSAGES,
            {"CONNECTOR": connector, "LINE": line},
            items,
            max_messages=settings.bitrix_max_messages_per_call,
            max_files=settings.bitrix_max_files_per_call,
        )
    for (method, connector, line), items in statuses.items():
        calls += dl.chunk(
            method,
            {"CONNECTOR": connector, "LINE": line},
            items,
            max_messages=settings.bitrix_max_messages_per_call,
            max_files=settings.bitrix_max_messages_per_call,
        )
    calls += singles
    packed = dl.pack(
        calls,
        use_batch=requests.batch_allowed(member_id),
        max_commands=settings.bitrix_batch_max_commands,
        max_messages=settings.bitrix_batch_max_messages,
    )
    broken: dict[str, str] = {}
    made = 0
    throttled: BaseException | None = None
    for request in packed:
        if throttled is not None:
            # The portal stayed rate limited beyond the in-place wait: do not wait again for every
            # request of this batch (the consumer must keep polling); retry them through the topic.
            for call in request:
                fail_call(call, throttled)
            continue
        request = _hold_broken(request, broken)
        if not request:
            continue
        made += await requests.execute(member_id, request)
        for call in request:
            for item in call.items:
                work: Work = item.owner
                if isinstance(work.error, RateLimitWaitExceeded):
                    throttled = work.error
                if call.method == dl.SEND_MESSAGES and work.error is not None and work.conv_key:
                    broken.setdefault(work.conv_key, str(work.error)[:200])
    return made


def _hold_broken(request: list[dl.Call], broken: dict[str, str]) -> list[dl.Call]:
    """Keep conversation order: after a failed message, later ones of that conversation wait too."""
    if not broken:
        return request
    out = []
    for call in request:
        if call.method == dl.SEND_MESSAGES:
            kept = []
            for item in call.items:
                work: Work = item.owner
                if work.conv_key in broken:
                    work.held = broken[work.conv_key]
                    work.fail(TransientBitrixError("HELD", f"an earlier message failed: {work.held}"))
                else:
                    kept.append(item)
            if not kept:
                continue
            call = dl.Call(call.method, call.base, kept, call.messages)
        out.append(call)
    return out
