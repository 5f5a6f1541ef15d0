"""Where applications save their steps: contracts and the bundled persisters."""

from __future__ import annotations

from typing import Any

from fanwise.core.errors import AppLockedError, LeaseLostError
from fanwise.core.persistence._leases import LeaseInfo
from fanwise.core.persistence.base import (
    AsyncBaseStateLoader,
    AsyncBaseStatePersister,
    AsyncBaseStateSaver,
    BaseStateLoader,
    BaseStatePersister,
    BaseStateSaver,
    ChildSlot,
    PersistedStateData,
    SaveRow,
)
from fanwise.core.persistence.devnull import AsyncDevNullPersister, DevNullPersister
from fanwise.core.persistence.hooks import PersisterHook, PersisterHookAsync
from fanwise.core.persistence.memory import InMemoryPersister
from fanwise.core.persistence.memory_async import AsyncInMemoryPersister
from fanwise.core.persistence.sqlite import SQLitePersister, SQLLitePersister
from fanwise.core.persistence.sqlite_async import AsyncSQLitePersister

__all__ = [
    "AppLockedError",
    "AsyncBaseStateLoader",
    "AsyncBaseStatePersister",
    "AsyncBaseStateSaver",
    "AsyncDevNullPersister",
    "AsyncInMemoryPersister",
    "AsyncSQLitePersister",
    "BaseStateLoader",
    "BaseStatePersister",
    "BaseStateSaver",
    "ChildSlot",
    "DevNullPersister",
    "InMemoryPersister",
    "LeaseInfo",
    "LeaseLostError",
    "PersistedStateData",
    "PersisterHook",
    "PersisterHookAsync",
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
