"""One answer, for every service that owns a database, to "is this the database failing, or the request?".

A failure of the database itself (unreachable, shutting down, starting up, out of resources, a statement
timeout, a lost serialization race) is an *outage*: the caller should retry later (gRPC UNAVAILABLE).
Anything else is the request's own problem. The SQLSTATE classes are PostgreSQL's (Appendix A); the driver
errors are asyncpg's, recognised by name so that this module needs no database driver itself.
"""

from __future__ import annotations

# 08 connection exception, 40 transaction rollback (serialization failure, deadlock), 53 insufficient
# resources, 55 object not in prerequisite state (55000 "the database system is not accepting connections"
# during shutdown or recovery, 55P03 lock not available), 57 operator intervention (admin shutdown,
# statement timeout, cannot connect now), 3D invalid catalog (the database is being dropped or restored),
# 28 invalid authorization (credentials rotated under us).
OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "28", "3D", "40", "53", "55", "57"})

# asyncpg's client-side errors that mean the connection, not the statement, failed.
_DRIVER_OUTAGES = frozenset({"InterfaceError", "ConnectionDoesNotExistError", "InternalClientError"})


def is_outage(exc: BaseException) -> bool:
    """True when `exc` says the database cannot serve right now, whatever the request was."""
    if isinstance(exc, OSError | TimeoutError):  # refused, reset, pool acquire or command timeout
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate[:2] in OUTAGE_SQLSTATE_CLASSES:
        return True
    return any(cls.__name__ in _DRIVER_OUTAGES for cls in type(exc).__mro__)
