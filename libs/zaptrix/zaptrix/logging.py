"""JSON-lines logging (structlog over the stdlib) with trace_id/span_id, secret redaction and bounded lines.

Every line is bounded whatever a caller passes: strings are cut to ``MAX_VALUE_CHARS``, containers to
``MAX_ITEMS`` items and ``MAX_DEPTH`` levels, tracebacks to their last ``MAX_FRAMES`` frames and
``MAX_TRACEBACK_CHARS``, and the rendered line to ``MAX_LINE_CHARS`` (a line that is still too long keeps
only the identifying fields). Secrets are redacted by key name at any depth, and ``key=value`` / ``Bearer``
credentials inside strings (URLs, exception texts) are masked. Payloads are never logged: log ids and
``fingerprint()`` (size and hash) instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

# Keys whose values are never written, whatever their type (defence in depth: callers must not log secrets).
_SECRET_KEY = re.compile(
    r"(token|secret|password|authorization|auth_id|refresh_id|signature|api_key)", re.IGNORECASE
)
# Credentials inside free text: query strings and form bodies (access_token=...), bearer headers.
_SECRET_IN_TEXT = re.compile(
    r"(?i)((?:access_token|refresh_token|application_token|client_secret|auth_id|refresh_id|"
    r"password|signature|api_key|secret|token)\]?(?:=|[\"']\s*:\s*[\"']))[^&\s\"',;}]+"
)
_BEARER = re.compile(r"(?i)\b(bearer|OAuth)\s+[A-Za-z0-9._~+/=-]{8,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_REDACTED = "[redacted]"
# Warnings given before configure_logging (settings are read first: they name the log level).
_early_warnings: list[tuple[str, str, dict[str, Any]]] = []

MAX_VALUE_CHARS = 2048
MAX_ITEMS = 50
MAX_DEPTH = 6
MAX_FRAMES = 30
MAX_TRACEBACK_CHARS = 8192
MAX_LINE_CHARS = 16384
# What a line that is still too long keeps: enough to find the event and its trace.
_CORE_KEYS = (
    "event",
    "level",
    "logger",
    "timestamp",
    "service",
    "trace_id",
    "span_id",
    "event_id",
    "member_id",
    "phone_number_id",
)


def redact_text(text: str) -> str:
    """``text`` with credentials in ``key=value`` form and bearer tokens masked."""
    text = _SECRET_IN_TEXT.sub(lambda m: m.group(1) + _REDACTED, text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {_REDACTED}", text)


def cut(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[+{len(text) - limit} chars]"


def bounded_reason(reason: str, limit: int = 500) -> str:
    """A technical reason fit for a header or a log: one line, credentials masked, at most ``limit``."""
    return cut(_CONTROL.sub(" ", redact_text(reason)).replace("\n", " "), limit)


def fingerprint(data: bytes | str | None) -> str:
    """What to log instead of a payload: its size and a short hash."""
    raw = data.encode() if isinstance(data, str) else (data or b"")
    return f"{len(raw)}B sha256:{hashlib.sha256(raw).hexdigest()[:16]}"


def _bound(value: Any, depth: int = 0, limit: int = MAX_VALUE_CHARS) -> Any:
    """A JSON-friendly, bounded, redacted copy of ``value``."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return cut(redact_text(value), limit)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<bytes {fingerprint(bytes(value))}>"
    if depth >= MAX_DEPTH:
        return f"<{type(value).__name__} nested too deep>"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_ITEMS:
                out["…"] = f"+{len(value) - MAX_ITEMS} keys"
                break
            key = cut(str(k), 200)
            out[key] = _REDACTED if _SECRET_KEY.search(key) else _bound(v, depth + 1, limit)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        bounded = [_bound(v, depth + 1, limit) for v in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            bounded.append(f"…+{len(items) - MAX_ITEMS} items")
        return bounded
    try:
        text = str(value)
    except Exception:  # a broken __str__ must not lose the line
        text = f"<unprintable {type(value).__name__}>"
    return cut(redact_text(text), limit)


def _add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event["trace_id"] = format(ctx.trace_id, "032x")
        event["span_id"] = format(ctx.span_id, "016x")
    return event


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Redact secrets at any depth and bound every value (exc_info is formatted later, bounded too)."""
    for key in list(event):
        if key in ("exc_info", "_record", "_from_structlog"):
            continue
        if key != "event" and _SECRET_KEY.search(key):
            event[key] = _REDACTED
        else:
            event[key] = _bound(event[key])
    return event


def format_traceback(exc: BaseException) -> str:
    """The last ``MAX_FRAMES`` frames of each traceback in the chain, cut to ``MAX_TRACEBACK_CHARS``
    (keeping the end, where the error is)."""
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-MAX_FRAMES))
    except Exception:  # pragma: no cover - formatting must never lose the line
        text = f"{type(exc).__name__} (traceback could not be formatted)"
    text = redact_text(text)
    if len(text) > MAX_TRACEBACK_CHARS:
        text = f"[…{len(text) - MAX_TRACEBACK_CHARS} chars cut]\n" + text[-MAX_TRACEBACK_CHARS:]
    return text


def _format_exc_info(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Like structlog's format_exc_info, with the frames and the size capped."""
    exc_info = event.pop("exc_info", None)
    exc: BaseException | None = None
    if isinstance(exc_info, BaseException):
        exc = exc_info
    elif isinstance(exc_info, tuple) and len(exc_info) == 3 and isinstance(exc_info[1], BaseException):
        exc = exc_info[1]
    elif exc_info is True:
        exc = sys.exc_info()[1]
    if exc is not None:
        event["exception"] = format_traceback(exc)
    return event


class BoundedJSONRenderer:
    """JSON lines of at most ``max_chars``: first cut long values harder, then keep only the core keys."""

    def __init__(self, max_chars: int = MAX_LINE_CHARS) -> None:
        self.max_chars = max_chars

    @staticmethod
    def _dump(event: Mapping[str, Any]) -> str:
        return json.dumps(event, default=lambda o: cut(repr(o), 200))

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> str:
        line = self._dump(event)
        if len(line) <= self.max_chars:
            return line
        original = len(line)
        smaller = {k: _bound(v, limit=256) for k, v in event.items() if k != "exception"}
        if "exception" in event:
            smaller["exception"] = str(event["exception"])[-(self.max_chars // 2) :]
        smaller["log_truncated_from"] = original
        line = self._dump(smaller)
        if len(line) <= self.max_chars:
            return line
        core: dict[str, Any] = {k: cut(str(event[k]), 256) for k in _CORE_KEYS if k in event}
        core["log_truncated_from"] = original
        return self._dump(core)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route structlog and stdlib logging to stdout as one JSON object per line."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _format_exc_info,
            BoundedJSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.contextvars.bind_contextvars(service=service)
    # Sanic and aiokafka are chatty at INFO about internals.
    # httpx logs every request URL at INFO, query string (and so credentials) included.
    for noisy in ("sanic.access", "aiokafka", "kafka", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    while _early_warnings:
        name, event, fields = _early_warnings.pop(0)
        get_logger(name).warning(event, **fields)


def warn_early(name: str, event: str, **fields: Any) -> None:
    """A warning that may come before configure_logging: logged at once when structlog is configured, else
    kept (once) and logged by configure_logging, so that it is a JSON line like every other."""
    if structlog.is_configured():
        get_logger(name).warning(event, **fields)
    elif (name, event, fields) not in _early_warnings:
        _early_warnings.append((name, event, fields))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
