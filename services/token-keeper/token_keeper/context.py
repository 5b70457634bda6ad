"""What every part of TokenService works with: the pool, the SQL, the settings and the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from zaptrix.database import Database

from token_keeper.repository import Repository
from token_keeper.settings import TokenKeeperSettings


@dataclass(frozen=True, slots=True)
class Context:
    db: Database
    repo: Repository
    settings: TokenKeeperSettings
    clock: Callable[[], datetime]
