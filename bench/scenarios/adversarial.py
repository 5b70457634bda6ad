"""adversarial: time per input character of the parsers and converters on hostile input (review H3, H5, M3).

In-process, no system under test: each hostile family is built at 1k, 10k and 100k characters and run
through the function an attacker reaches (BB-code conversion, the form parser, the two event normalizers).
The figure is the growth ratio, time per character at 100k / at 1k: about 1 for linear work, about 100
for quadratic work (the old BB-code converter and form parser). Each size is run until 0.3 s have passed
(at least 3 times) and the fastest run counts, which keeps a shared machine's noise out of the ratio.
Nothing is asserted; "short" only flags a family whose ratio is over 10. Linear code still shows 2-6x here:
100k-character inputs and their objects no longer fit the CPU caches, and the shared machine's load
varies; per character, 400k costs the same as 100k (quadratic code would cost 4x more).

Sizes are what is fed to the function, unbounded by the caps in front of it (the 20,000-character
BB-code cut, the 2,000-field form cap before authentication): the point is the algorithm's growth. The
``plan_message`` row shows the capped path the dispatcher actually runs.

Runs standalone (no PostgreSQL or Kafka): ``python -m bench.run adversarial``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from bitrix_ingress.formparse import FormError, parse_form
from bitrix_ingress.web import events as bitrix_events
from meta_ingress.dispatcher.bbcode import to_whatsapp
from meta_ingress.dispatcher.send_plan import plan_message
from meta_ingress.web.normalize import normalize, parse_envelope

from bench.common import BenchEnv
from bench.result import Result, verdict

NAME = "adversarial"
SIZES = (1_000, 10_000, 100_000)
MAX_GROWTH = 10.0  # above: flagged (quadratic work shows ~100; linear 1-6, from caches and load)
MIN_SECONDS = 0.3
UNLIMITED = 10**7  # form field cap for the measurement (the algorithm, not the cap in front of it)


def _repeat(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _nested(size: int) -> str:
    n = size // 7
    return "[b]" * n + "x" + "[/b]" * n


def _array_fields(size: int) -> str:
    # a0[]=1&a1[]=1&...: 10 arrays, so none reaches the 10,000-element limit at 100k characters
    fields, total, i = [], 0, 0
    while total < size:
        fields.append(f"a{i % 10}[]=1")
        total += len(fields[-1]) + 1
        i += 1
    return "&".join(fields)


def _deep_keys(size: int) -> str:
    fields, total, i = [], 0, 0
    while total < size:
        fields.append(f"k{i}" + "[x]" * 10 + "=1")
        total += len(fields[-1]) + 1
        i += 1
    return "&".join(fields)


def _many_fields(size: int) -> str:
    fields, total, i = [], 0, 0
    while total < size:
        fields.append(f"f{i}=v")
        total += len(fields[-1]) + 1
        i += 1
    return "&".join(fields)


def _webhook(size: int) -> str:
    messages, total, i = [], 200, 0
    while total < size:
        msg = {
            "from": f"49170000{i % 50:04d}",
            "id": f"wamid.HBgN{i:012d}",
            "timestamp": "1749416383",
            "type": "text",
            "text": {"body": "*a " * 10},
        }
        messages.append(msg)
        total += len(json.dumps(msg)) + 1
        i += 1
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000001", "phone_number_id": "pn1"},
        "contacts": [{"wa_id": "4917000000", "profile": {"name": "Ana"}}],
        "messages": messages,
    }
    change = {"field": "messages", "value": value}
    return json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [change]}]})


def _bitrix_event(size: int) -> str:
    pairs = [("event", "ONIMCONNECTORMESSAGEADD"), ("data[CONNECTOR]", "c"), ("data[LINE]", "7")]
    total, i = 60, 0
    while total < size:
        p = f"data[MESSAGES][{i}]"
        item = [
            (f"{p}[im][message_id]", str(i)),
            (f"{p}[im][chat_id]", "1807"),
            (f"{p}[message][text]", "[b]a[/b] *a "),
            (f"{p}[chat][id]", f"wa_{i}"),
        ]
        pairs += item
        total += len(urlencode(item)) + 1
        i += 1
    return urlencode(pairs)


def _meta_normalize(body: str) -> Any:
    return normalize(parse_envelope(json.loads(body)), lambda pnid, media_id, name: "")


_AUTH = bitrix_events.Auth("m1", "tok", "p.bitrix24.com", "")


def _bitrix_normalize(body: str) -> Any:
    form = parse_form(body, UNLIMITED)
    return bitrix_events.normalize(form, _AUTH, connector_id="c", read_on_reply=True)


def _parse(body: str) -> Any:
    try:
        return parse_form(body, UNLIMITED)
    except FormError as exc:  # reported, still timed: refusing is the work done
        return exc


@dataclass(frozen=True)
class Family:
    name: str
    what: str
    make: Callable[[int], str]
    run: Callable[[str], Any]


FAMILIES = [
    Family("bbcode_stars", "to_whatsapp('*a ' x n)", lambda s: _repeat("*a ", s), to_whatsapp),
    Family("bbcode_attr", "to_whatsapp('[a=' x n)", lambda s: _repeat("[a=", s), to_whatsapp),
    Family("bbcode_nested", "to_whatsapp('[b]' x n + '[/b]' x n)", _nested, to_whatsapp),
    Family(
        "bbcode_unbalanced",
        "to_whatsapp('[b][i]' x n), never closed",
        lambda s: _repeat("[b][i]", s),
        to_whatsapp,
    ),
    Family(
        "bbcode_closers", "to_whatsapp('[/b]' x n), nothing open", lambda s: _repeat("[/b]", s), to_whatsapp
    ),
    Family(
        "bbcode_code", "to_whatsapp('[code]' x n), never closed", lambda s: _repeat("[code]", s), to_whatsapp
    ),
    Family(
        "plan_message",
        "plan_message('*a ' x n): the capped path",
        lambda s: _repeat("*a ", s),
        lambda t: plan_message(t, []),
    ),
    Family("form_auto_index", "parse_form('aK[]=1&' x n)", _array_fields, _parse),
    Family("form_deep_keys", "parse_form('kN[x]...[x]=1&' x n), 11 levels", _deep_keys, _parse),
    Family("form_many_fields", "parse_form('fN=v&' x n)", _many_fields, _parse),
    Family(
        "meta_normalize",
        "parse_envelope + normalize of one webhook, n text messages",
        _webhook,
        _meta_normalize,
    ),
    Family(
        "bitrix_normalize",
        "parse_form + events.normalize, n messages in one event",
        _bitrix_event,
        _bitrix_normalize,
    ),
]


def _time(fn: Callable[[], Any]) -> float:
    best, spent, runs = float("inf"), 0.0, 0
    while runs < 3 or spent < MIN_SECONDS:
        started = time.perf_counter()
        fn()
        took = time.perf_counter() - started
        best, spent, runs = min(best, took), spent + took, runs + 1
    return best


def measure() -> list[dict[str, Any]]:
    rows = []
    for family in FAMILIES:
        per_char: dict[str, float] = {}
        for size in SIZES:
            text = family.make(size)
            per_char[str(size)] = _time(functools.partial(family.run, text)) / len(text) * 1e9  # ns per char
        growth = per_char[str(SIZES[-1])] / per_char[str(SIZES[0])]
        rows.append({"family": family.name, "what": family.what, "ns_per_char": per_char, "growth": growth})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'family':<20} " + " ".join(f"{f'ns/char @{s // 1000}k':>14}" for s in SIZES) + f" {'growth':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{r['ns_per_char'][str(s)]:>14,.0f}" for s in SIZES)
        flag = "" if r["growth"] <= MAX_GROWTH else "  <- super-linear"
        lines.append(f"{r['family']:<20} {cells} {r['growth']:>7.2f}x{flag}")
    return "\n".join(lines)


async def run(env: BenchEnv) -> Result:
    res = Result(
        NAME,
        measured="time per input character of the BB-code converter, form parser and both event normalizers "
        "on hostile input at 1k / 10k / 100k characters",
        target=f"linear: growth (ns/char at 100k / at 1k) ≤ {MAX_GROWTH:g} for every family (quadratic ≈ 100)",
    )
    rows = await asyncio.to_thread(measure)
    print(table(rows), flush=True)
    worst = max(rows, key=lambda r: r["growth"])
    res.figure = f"worst growth {worst['growth']:.2f}x ({worst['family']}); " + ", ".join(
        f"{r['family']} {r['growth']:.2f}x" for r in rows
    )
    res.verdict = verdict(all(r["growth"] <= MAX_GROWTH for r in rows))
    res.details = {"sizes": list(SIZES), "rows": rows, "table": table(rows).splitlines()}
    res.notes.append(
        "in-process (no system under test); the fastest of repeated runs per size; plan_message is the "
        "capped path (20,000 BB-code characters converted, 4 x 4,096 sent), so its growth falls below 1"
    )
    return res
