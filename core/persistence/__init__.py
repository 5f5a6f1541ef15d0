"""Where applications save their steps: contracts and the bundled persisters."""

from __future__ import annotations

from typing import Any

from fanwise.core.errors import AppLockedError
from fanwise.core.persistence.base import (
    AsyncBaseStateLoader,
    AsyncBaseStatePersister,
    AsyncBaseStateSaver,
    BaseStateLoader,
    BaseStatePersister,
    BaseStateSaver,
    PersistedStateData,
    SaveRow,
)
from fanwise.core.persistence.memory import InMemoryPersister
from fanwise.core.persistence.sqlite import SQLitePersister, SQLLitePersister
from fanwise.core.persistence.sqlite_async import AsyncSQLitePersister

__all__ = [
    "AppLockedError",
    "AsyncBaseStateLoader",
    "AsyncBaseStatePersister",
    "AsyncBaseStateSaver",
    "AsyncSQLitePersister",
    "BaseStateLoader",
    "BaseStatePersister",
    "BaseStateSaver",
    "InMemoryPersister",
    "PersistedStateData",
    "PostgreSQLPersister",
    "SQLLitePersister",
    "SQLitePersister",
    "SaveRow",
]


def __getattr__(name: str) -> Any:
    """Import `PostgreSQLPersister` only when it is asked for."""
    if name == "PostgreSQLPersister":
        from fanwise.core.persistence.postgres import PostgreSQLPersister

        return PostgreSQLPersister
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
