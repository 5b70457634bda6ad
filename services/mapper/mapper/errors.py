"""Domain errors. The servicer maps each to a gRPC status code; messages never carry secrets.

A database outage is zaptrix.database.DatabaseUnavailable (UNAVAILABLE), raised by the shared pool."""

from __future__ import annotations


class MapperError(Exception):
    """Base of the errors a caller can act on."""


class InvalidArgument(MapperError):
    """The request itself is wrong (empty id, unknown enum, malformed uuid): do not retry."""


class NotFound(MapperError):
    """The addressed row does not exist."""


class AlreadyExists(MapperError):
    """The request conflicts with an existing row (e.g. a wamid linked to something else)."""


class FailedPrecondition(MapperError):
    """The system is not in a state that allows this (e.g. a conversation on an unbound channel)."""
