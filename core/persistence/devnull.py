"""`DevNullPersister` / `AsyncDevNullPersister`: stores that keep nothing (tests, or an app
that must run its persister-shaped code path without a store)."""

from __future__ import annotations

from typing import Any

from fanwise.core.persistence.base import (
    AsyncBaseStatePersister,
    BaseStatePersister,
    PersistedStateData,
)
from fanwise.core.state import State


class DevNullPersister(BaseStatePersister):
    """Saves nothing, loads nothing, lists no app."""

    def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None, **kwargs: Any
    ) -> PersistedStateData | None:
        return None

    def list_app_ids(self, partition_key: str | None, **kwargs: Any) -> list[str]:
        return []

    def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: str,
        **kwargs: Any,
    ) -> None:
        return None

    def is_initialized(self) -> bool:
        return True


class AsyncDevNullPersister(AsyncBaseStatePersister):
    """Async twin of `DevNullPersister`; needs `ApplicationBuilder.abuild()`."""

    async def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None, **kwargs: Any
    ) -> PersistedStateData | None:
        return None

    async def list_app_ids(self, partition_key: str | None, **kwargs: Any) -> list[str]:
        return []

    async def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: str,
        **kwargs: Any,
    ) -> None:
        return None

    async def is_initialized(self) -> bool:
        return True
