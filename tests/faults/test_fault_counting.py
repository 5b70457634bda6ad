"""The fault suite's counting (bench/faults/count.py) on hand-made stand-in records: what is lost, what is
a duplicate, which duplicates a documented window explains, when the operator can see a loss."""

from __future__ import annotations

from typing import Any

from bench.faults.count import (
    CRASH_BITRIX,
    CRASH_META,
    GRAPH_AMBIGUOUS,
    Crash,
    CustomerSent,
    OperatorSent,
    count_customers,
    count_operators,
    delivery_marks_missing,
)

M = "Fab12s00"


def client(ident: str, at: float, member: str = "m1", chat: str = "c1") -> dict[str, Any]:
    return {
        "member_id": member,
        "chat_id": chat,
        "direction": "client",
        "text": f"{ident} hi",
        "received_at": at,
    }


def operator(ident: str, at: float, delivered: bool, chat: str = "c1") -> dict[str, Any]:
    return {
        "member_id": "m1",
        "chat_id": chat,
        "direction": "operator",
        "text": f"[b]Op:[/b][br] {ident} ok",
        "delivered": delivered,
        "received_at": at,
    }


def send(ident: str, at: float, status: int = 200, delay: float = 0.0) -> dict[str, Any]:
    return {"text": f"*Op:*\n{ident} ok", "at": at, "http_status": status, "answer_delay_s": delay}


def test_customer_loss_duplicates_and_windows() -> None:
    sent = [CustomerSent(f"{M}-c{i:06d}", 100.0 + i) for i in range(4)]
    marked = [
        client(f"{M}-c000000", 101.0),
        client(f"{M}-c000001", 105.0),  # first copy 1 s before the kill: the crash window
        client(f"{M}-c000001", 115.0),
        client(f"{M}-c000002", 90.0),  # a copy long before the kill: nothing explains the second
        client(f"{M}-c000002", 120.0),
    ]
    webhooks = [{"body": f"{M}-c000003", "accepted_at": 104.0}]
    crashes = [Crash("bitrix-dispatcher", 106.0)]
    got = count_customers(sent, marked, webhooks, [], M, crashes, recovered_at=110.0, crash_window_s=5.0)
    assert (got.sent, got.delivered, got.lost, got.duplicated, got.explained_duplicates) == (4, 3, 1, 2, 1)
    assert got.windows == {CRASH_BITRIX: 1, "unexplained": 1}
    assert got.lost_detail == {"taken, never delivered": 1} and got.lost_visible == 0
    assert got.drain_s == 0.0  # everything sent before the recovery had arrived before it


def test_a_kill_of_another_process_explains_nothing() -> None:
    sent = [CustomerSent(f"{M}-c000000", 100.0)]
    marked = [client(f"{M}-c000000", 101.0), client(f"{M}-c000000", 103.0)]
    crashes = [Crash("meta-dispatcher", 102.0)]
    got = count_customers(sent, marked, [], [], M, crashes, recovered_at=102.0, crash_window_s=5.0)
    assert got.duplicated == 1 and got.explained_duplicates == 0


def test_operator_losses_are_visible_without_a_delivery_mark() -> None:
    sent = [
        OperatorSent(f"{M}-o000000", 100.0, "m1", "c1", gateway_status=200),
        OperatorSent(f"{M}-o000001", 101.0, "m1", "c1", gateway_status=None),  # event never taken
        OperatorSent(f"{M}-o000002", 102.0, "m1", "c1", gateway_status=200),
        OperatorSent(f"{M}-o000003", 103.0, "m1", "c2", gateway_status=200),
    ]
    graph = [
        send(f"{M}-o000000", 104.0, delay=12.0),  # answered late: the dispatcher resent it
        send(f"{M}-o000000", 116.0),
        send(f"{M}-o000003", 104.0, status=429),  # refused: not a delivery
    ]
    marked = [
        operator(f"{M}-o000000", 100.0, True),
        operator(f"{M}-o000001", 101.0, False),
        operator(f"{M}-o000002", 102.0, True),  # marked delivered, never sent: a loss nobody sees
        operator(f"{M}-o000003", 103.0, False, chat="c2"),
    ]
    got = count_operators(sent, graph, marked, [], M, [], recovered_at=110.0, crash_window_s=5.0)
    assert (got.sent, got.delivered, got.lost, got.duplicated, got.explained_duplicates) == (4, 1, 3, 1, 0)
    assert got.windows == {GRAPH_AMBIGUOUS: 1}
    assert got.lost_detail == {
        "event refused or unanswered (Bitrix24 never resends)": 1,
        "event taken, never sent": 2,
    }
    assert got.lost_answers == {"no answer": 1, "200": 2}
    assert got.lost_visible == 2


def test_meta_dispatcher_crash_window_and_drain() -> None:
    sent = [OperatorSent(f"{M}-o00000{i}", 100.0 + i, "m1", "c1", 200) for i in range(3)]
    graph = [
        send(f"{M}-o000000", 104.0),
        send(f"{M}-o000000", 112.0),
        send(f"{M}-o000001", 113.0),
        send(f"{M}-o000002", 120.0),
    ]
    marked = [operator(f"{M}-o00000{i}", 100.0 + i, True) for i in range(3)]
    crashes = [Crash("meta-dispatcher", 105.0)]
    got = count_operators(sent, graph, marked, [], M, crashes, recovered_at=110.0, crash_window_s=5.0)
    assert got.duplicated == got.explained_duplicates == 1 and got.windows == {CRASH_META: 1}
    assert got.drain_s == 10.0  # the last one sent before the recovery arrived 10 s after it
    assert delivery_marks_missing(sent, graph, marked, M) == 0
    marked[1]["delivered"] = False
    assert delivery_marks_missing(sent, graph, marked, M) == 1


def test_a_notice_in_the_chat_makes_a_customer_loss_visible() -> None:
    sent = [CustomerSent(f"{M}-c000000", 100.0)]
    notices = [
        {"member_id": "m1", "chat_id": "c1", "direction": "client", "text": f"not delivered: {M}-c000000"}
    ]
    got = count_customers(sent, [], [], notices, M, [], recovered_at=100.0, crash_window_s=5.0)
    assert got.lost == 1 and got.lost_visible == 1
    assert got.lost_detail == {"webhook never answered 200 (Meta keeps retrying)": 1}
