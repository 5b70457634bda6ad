"""PHP-style nested form keys, the way Bitrix24 sends and parses them.

`MESSAGES[0][user][id]=7` <-> {"MESSAGES": {"0": {"user": {"id": "7"}}}}. Values stay strings and
arrays stay ordered maps (as in PHP); `as_list` turns a numeric-keyed map (or a JSON list) into a list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode


def split_key(key: str) -> list[str]:
    """`a[b][0]` -> ["a", "b", "0"]; `a[]` -> ["a", ""]. Like PHP, text after an unclosed `[` is dropped."""
    start = key.find("[")
    if start <= 0:
        return [key]
    parts = [key[:start]]
    rest = key[start:]
    while rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            break
        parts.append(rest[1:end])
        rest = rest[end + 1 :]
    return parts


def _next_index(node: Mapping[str, Any]) -> str:
    numeric = [int(k) for k in node if k.isdigit()]
    return str(max(numeric) + 1 if numeric else 0)


def parse_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = split_key(key)
        node = root
        for part in parts[:-1]:
            name = part if part != "" else _next_index(node)
            child = node.get(name)
            if not isinstance(child, dict):
                child = {}
                node[name] = child
            node = child
        last = parts[-1] if parts[-1] != "" else _next_index(node)
        node[last] = value
    return root


def parse_query(query: str) -> dict[str, Any]:
    return parse_pairs(parse_qsl(query, keep_blank_values=True))


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested dict/list -> form pairs, like PHP's http_build_query (None skipped, bools as 1/0)."""
    pairs: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            pairs.extend(flatten(value, name))
        elif isinstance(value, list | tuple):
            pairs.extend(flatten({str(i): v for i, v in enumerate(value)}, name))
        elif isinstance(value, bool):
            pairs.append((name, "1" if value else "0"))
        else:
            pairs.append((name, str(value)))
    return pairs


def encode(data: Mapping[str, Any]) -> str:
    return urlencode(flatten(data))


def as_list(value: Any) -> list[Any] | None:
    """A JSON list, or a PHP array with keys 0..n-1 (in any order), as a list; anything else -> None."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and value and all(isinstance(k, str) and k.isdigit() for k in value):
        keys = sorted(value, key=int)
        if [int(k) for k in keys] == list(range(len(keys))):
            return [value[k] for k in keys]
    return None
