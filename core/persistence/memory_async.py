"""`AsyncInMemoryPersister`: `InMemoryPersister` for async apps (`abuild()`)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from fanwise.core.persistence.base import (
    AsyncBaseStatePersister,
    Fence,
    Lease,
    PersistedStateData,
    SaveRow,
)
from fanwise.core.persistence.memory import InMemoryPersister
from fanwise.core.state import State


class AsyncInMemoryPersister(AsyncBaseStatePersister):
    """The store of an `InMemoryPersister`, awaited; nothing blocks, so calls run inline."""

    def __init__(self) -> None:
        self._sync = InMemoryPersister()

    def stored_form(self, state: State) -> State:
        """See `RowSaver.stored_form`."""
        return self._sync.stored_form(state)

    def copy(self) -> AsyncInMemoryPersister:
        """A persister on the same store."""
        return copy.copy(self)

    async def is_initialized(self) -> bool:
        return True

    async def acquire_lease(
        self, partition_key: str | None, app_id: str, wait: float = 0
    ) -> Lease:
        """See `InMemoryPersister.acquire_lease`."""
        lease = self._sync.acquire_lease(partition_key, app_id, wait)
        lease.store = self.fenced(lease.fence)
        return lease

    @property
    def fence(self) -> Fence | None:
        """See `RowSaver.fence`."""
        return self._sync.fence

    def fenced(self, fence: Fence | None) -> AsyncInMemoryPersister:
        """See `RowSaver.fenced`."""
        twin = copy.copy(self)
        twin._sync = self._sync.fenced(fence)
        return twin

    async def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        return self._sync.load(partition_key, app_id, sequence_id)

    async def list_app_ids(self, partition_key: str | None) -> list[str]:
        return self._sync.list_app_ids(partition_key)

    async def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        return self._sync.load_many(partition_key, app_ids)

    async def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: str,
        meta: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._sync.save(partition_key, app_id, sequence_id, position, state, status, meta)

    async def save_many(self, rows: Iterable[SaveRow]) -> None:
        self._sync.save_many(rows)
