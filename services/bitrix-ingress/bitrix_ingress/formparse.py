"""PHP-style nested form keys, the way Bitrix24 posts its events and reads REST parameters.

Bitrix24 sends ``application/x-www-form-urlencoded`` bodies produced by PHP's ``http_build_query``:
``data[MESSAGES][0][im][chat_id]=1807``. :func:`parse_form` turns such a body into nested dicts whose
values are strings (as PHP's ``$_POST`` would), and :func:`as_list` reads a "PHP array" (a dict with
numeric keys, or a single scalar where the sender sometimes sends a scalar) as a list.
:func:`build_query` is the inverse, used for the sub-commands of the ``batch`` REST method.

The parser is strict where ambiguity would hide an attack or a bug (bad UTF-8, too many fields, too
deep nesting, over-long keys) and lenient where PHP is lenient (a later key overwrites an earlier
one, a scalar is replaced by a nested array, text after an unclosed ``[`` is dropped).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

MAX_FIELDS = 5000
MAX_DEPTH = 12
MAX_KEY_LENGTH = 512
MAX_AUTO_INDEX = 10_000

FormValue = str | dict[str, Any]


class FormError(ValueError):
    """The body is not a form this service can read; the message is safe to return to the caller."""


def split_key(key: str) -> list[str]:
    """``a[b][0]`` -> ``["a", "b", "0"]``; ``a[]`` -> ``["a", ""]``.

    Like PHP: a key without brackets is one segment; text after the last complete ``[...]`` pair
    is ignored (``a[b]x`` -> ``["a", "b"]``); an unclosed bracket makes the rest literal.
    """
    start = key.find("[")
    if start <= 0:
        return [key]
    parts = [key[:start]]
    rest = key[start:]
    while rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            if len(parts) == 1:  # PHP: "a[b" is the plain key "a_b"; we keep it literal
                return [key]
            break
        parts.append(rest[1:end])
        rest = rest[end + 1 :]
    return parts


def is_index(key: str) -> bool:
    """A PHP integer key: ASCII digits only (``"²".isdigit()`` is True, but ``int("²")`` fails)."""
    return key.isascii() and key.isdigit()


class _Indices:
    """The next ``[]`` index of every array node, kept up to date as keys are set: O(1) per field.

    (Recomputing max(numeric keys) + 1 per ``[]`` made ``a[]=…`` x n cost O(n²) before authentication.)
    Nodes are keyed by id() and kept alive here, so an id is never reused during one parse.
    """

    def __init__(self) -> None:
        self._next: dict[int, tuple[dict[str, Any], int]] = {}

    def seen(self, node: dict[str, Any], key: str) -> None:
        if is_index(key) and len(key) < 10:
            nxt = self._next.get(id(node), (node, 0))[1]
            self._next[id(node)] = (node, max(nxt, int(key) + 1))

    def take(self, node: dict[str, Any]) -> str:
        nxt = self._next.get(id(node), (node, 0))[1]
        if nxt > MAX_AUTO_INDEX:
            raise FormError("too many array elements")
        return str(nxt)


def parse_pairs(pairs: list[tuple[str, str]], max_fields: int = MAX_FIELDS) -> dict[str, Any]:
    """Build the nested structure from ordered (key, value) pairs."""
    if len(pairs) > max_fields:
        raise FormError(f"more than {max_fields} form fields")
    root: dict[str, Any] = {}
    indices = _Indices()
    for key, value in pairs:
        if not key:
            continue
        if len(key) > MAX_KEY_LENGTH:
            raise FormError("form key too long")
        parts = split_key(key)
        if len(parts) > MAX_DEPTH:
            raise FormError(f"form key nested deeper than {MAX_DEPTH} levels")
        node = root
        for part in parts[:-1]:
            name = part if part != "" else indices.take(node)
            indices.seen(node, name)
            child = node.get(name)
            if not isinstance(child, dict):
                child = {}
                node[name] = child
            node = child
        last = parts[-1] if parts[-1] != "" else indices.take(node)
        indices.seen(node, last)
        node[last] = value
    return root


def parse_form(body: bytes | str, max_fields: int = MAX_FIELDS) -> dict[str, Any]:
    """Parse an urlencoded body. Raises :class:`FormError` with a caller-safe reason.

    Linear in the body; ``max_fields`` lower for what is parsed before authentication."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormError("body is not valid UTF-8") from exc
    else:
        text = body
    try:
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=False, errors="strict", max_num_fields=max_fields
        )
    except UnicodeDecodeError as exc:
        raise FormError("percent-encoded bytes are not valid UTF-8") from exc
    except ValueError as exc:
        raise FormError(f"more than {max_fields} form fields") from exc
    return parse_pairs(pairs, max_fields)


def as_list(value: Any) -> list[Any]:
    """A PHP array as a list: numeric-keyed dicts in index order, lists as is, a scalar as [scalar].

    A dict with non-numeric keys is one element (a single object sent where a list was expected).
    """
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        if not value:
            return []
        if all(isinstance(k, str) and is_index(k) for k in value):
            return [value[k] for k in sorted(value, key=int)]
        return [value]
    return [value]


def get_path(data: Any, *path: str) -> Any:
    """``get_path(d, "data", "MESSAGES")`` or None when any level is missing or not a mapping."""
    node = data
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def get_str(data: Any, *path: str) -> str:
    """A scalar at ``path`` as a stripped string ('' when missing or not a scalar)."""
    value = get_path(data, *path)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, int | float):
        return str(value)
    return ""


def get_ci(data: Any, key: str) -> Any:
    """Case-insensitive key lookup in one mapping level (Bitrix24 mixes ``MESSAGES``/``messages``)."""
    if not isinstance(data, dict):
        return None
    if key in data:
        return data[key]
    lowered = key.lower()
    for k, v in data.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return None


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested mapping -> form pairs, like PHP's ``http_build_query`` (None skipped, bools as Y/N)."""
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
            pairs.append((name, "Y" if value else "N"))
        else:
            pairs.append((name, str(value)))
    return pairs


def build_query(data: Mapping[str, Any]) -> str:
    return urlencode(flatten(data))
