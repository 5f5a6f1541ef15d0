"""`AsyncSQLitePersister`: `SQLitePersister` for async apps, run in worker threads."""

from __future__ import annotations

import asyncio
import copy
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fanwise.core.persistence import _leases
from fanwise.core.persistence.base import (
    AsyncBaseStatePersister,
    Fence,
    Lease,
    PersistedStateData,
    SaveRow,
    Status,
)
from fanwise.core.persistence.sqlite import SQLitePersister
from fanwise.core.state import State


class AsyncSQLitePersister(AsyncBaseStatePersister):
    """Same store and arguments as `SQLitePersister`; each call runs in `asyncio.to_thread`."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        table_name: str = "fanwise_state",
        serde_kwargs: Mapping[str, Any] | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float = 30.0,
        lease_ttl: float = _leases.DEFAULT_TTL,
    ) -> None:
        self._sync = SQLitePersister(
            db_path,
            table_name,
            serde_kwargs,
            connect_kwargs,
            timeout=timeout,
            lease_ttl=lease_ttl,
        )

    def __repr__(self) -> str:
        return f"Async{self._sync!r}"

    def stored_form(self, state: State) -> State:
        """See `RowSaver.stored_form`."""
        return self._sync.stored_form(state)

    def copy(self) -> AsyncSQLitePersister:
        return copy.copy(self)

    async def initialize(self) -> None:
        await asyncio.to_thread(self._sync.initialize)

    async def is_initialized(self) -> bool:
        """See `SQLitePersister.is_initialized`."""
        return await asyncio.to_thread(self._sync.is_initialized)

    def close(self) -> None:
        """See `SQLitePersister.close`."""
        self._sync.close()

    cleanup = close

    async def acquire_lease(
        self, partition_key: str | None, app_id: str, wait: float = 0
    ) -> Lease:
        """The lease of `SQLitePersister.acquire_lease`, held by the thread that awaits this
        (its event loop's), not by the worker thread that takes it."""
        lease = await asyncio.to_thread(
            self._sync._acquire_lease_for,
            threading.current_thread(),
            partition_key,
            app_id,
            wait,
        )
        lease.store = self.fenced(lease.fence)
        return lease

    @property
    def fence(self) -> Fence | None:
        """See `RowSaver.fence`."""
        return self._sync.fence

    def check_fence(self) -> None:
        """See `RowSaver.check_fence` (a round trip only when in doubt)."""
        self._sync.check_fence()

    def fenced(self, fence: Fence | None) -> AsyncSQLitePersister:
        """See `RowSaver.fenced`."""
        twin = copy.copy(self)
        twin._sync = self._sync.fenced(fence)
        return twin

    async def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        return await asyncio.to_thread(self._sync.load, partition_key, app_id, sequence_id)

    async def list_app_ids(self, partition_key: str | None) -> list[str]:
        return await asyncio.to_thread(self._sync.list_app_ids, partition_key)

    async def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        return await asyncio.to_thread(self._sync.load_many, partition_key, list(app_ids))

    async def load_children(
        self,
        partition_key: str | None,
        parent_app_id: str,
        parent_sequence_id: int,
        ids: Mapping[int, str],
    ) -> dict[str, PersistedStateData]:
        """See `SQLitePersister.load_children`."""
        return await asyncio.to_thread(
            self._sync.load_children, partition_key, parent_app_id, parent_sequence_id, dict(ids)
        )

    async def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: Status,
        meta: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        await asyncio.to_thread(
            self._sync.save, partition_key, app_id, sequence_id, position, state, status, meta,
            kwargs.get("child_of"),
        )

    async def save_many(self, rows: Iterable[SaveRow]) -> None:
        await asyncio.to_thread(self._sync.save_many, list(rows))
