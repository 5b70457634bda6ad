"""The one database-outage classifier used by the mapper and token-keeper."""

from __future__ import annotations

import asyncpg
import pytest
from zaptrix.dbfailures import is_outage

OUTAGES = [
    ConnectionRefusedError(111, "refused"),
    TimeoutError(),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.InterfaceError("pool is closing"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),  # 57P03
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),  # 57P01
    asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),  # 57014
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),  # 53300
    asyncpg.exceptions.SerializationError("could not serialize access"),  # 40001
    asyncpg.exceptions.InvalidCatalogNameError('database "x" does not exist'),  # 3D000
    asyncpg.exceptions.InvalidPasswordError("password authentication failed"),  # 28P01
    # 55000 while PostgreSQL shuts down: the fresh-clone `make test` failure that neither service's own list
    # knew (token-keeper answered INTERNAL instead of UNAVAILABLE).
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError("the database system is not accepting connections"),
    asyncpg.exceptions.LockNotAvailableError("could not obtain lock"),  # 55P03
]

NOT_OUTAGES = [
    asyncpg.exceptions.UniqueViolationError("duplicate key"),  # 23505
    asyncpg.exceptions.UndefinedTableError("relation does not exist"),  # 42P01
    asyncpg.exceptions.DataError("invalid input syntax"),  # 22000
    ValueError("bad request"),
    KeyError("x"),
]


@pytest.mark.parametrize("exc", OUTAGES, ids=lambda e: type(e).__name__)
def test_outages_are_retryable(exc: BaseException) -> None:
    assert is_outage(exc)


@pytest.mark.parametrize("exc", NOT_OUTAGES, ids=lambda e: type(e).__name__)
def test_request_errors_are_not_outages(exc: BaseException) -> None:
    assert not is_outage(exc)
