"""Delays that come from outside (Retry-After, a platform's reset time) made finite and bounded.

A peer decides how long we wait; a hostile or broken one says ``inf``, ``1e9`` or a date in the year 9999.
Every such value goes through here before it reaches a sleep, a pause or a retry record's not-before time.
"""

from __future__ import annotations

import math
import re
import time
from email.utils import parsedate_to_datetime

MAX_DELAY_S = 900.0  # the consumer's retry_max_s default: nothing from outside waits longer
_DELTA_SECONDS = re.compile(r"\d{1,12}(?:\.\d{1,6})?")  # RFC 9110 delta-seconds (a fraction tolerated)


def clamp_delay(seconds: float | None, maximum: float = MAX_DELAY_S) -> float | None:
    """``seconds`` within [0, maximum]; NaN (and None) mean "the peer said nothing usable": None."""
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(0.0, seconds), maximum)  # +inf becomes the maximum, -inf zero


def parse_retry_after(
    value: str | None, *, now: float | None = None, maximum: float = MAX_DELAY_S
) -> float | None:
    """A Retry-After header (delta-seconds or an HTTP date) in seconds within [0, maximum], else None."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return clamp_delay(float(value), maximum)
    if len(value) > 64:  # no HTTP date is that long
        return None
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return clamp_delay(when - (time.time() if now is None else now), maximum)


def seconds_until(epoch_s: object, *, now: float | None = None, maximum: float = MAX_DELAY_S) -> float | None:
    """Seconds until a peer-given epoch time (e.g. Bitrix24's ``operating_reset_at``), bounded, else None."""
    if isinstance(epoch_s, bool) or not isinstance(epoch_s, int | float | str):
        return None
    try:
        when = float(epoch_s)
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(when):
        return None
    return clamp_delay(when - (time.time() if now is None else now), maximum)
