"""The error vocabulary every service speaks: worth another try later, or never as it is.

The consumer turns a TransientError into a retry (honouring ``retry_after``) and a PermanentError into a
dead letter with ``reason``. Platform and RPC errors derive from one of the two, so a handler lets them
escape and the outcome follows from the class.
"""

from __future__ import annotations


class TransientError(Exception):
    """Worth trying again later (5xx, timeouts, rate limits). retry_after in seconds when the peer said."""

    permanent = False
    reason: str
    retry_after: float | None

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class PermanentError(Exception):
    """Will never succeed as it is: goes to the dead-letter topic with this reason (replayable after a fix)."""

    permanent = True
    retry_after: float | None = None
    reason: str

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


__all__ = ["PermanentError", "TransientError"]
