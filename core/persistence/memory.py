"""`InMemoryPersister`: a dict-backed store for tests, serialised like the SQL stores."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

from fanwise.core.errors import AppLockedError
from fanwise.core.persistence import _leases, _rows
from fanwise.core.persistence.base import (
    BaseStatePersister,
    Lease,
    PersistedStateData,
)


class _Store:
    """Rows by partition key, app id and sequence id, and the lease holders (host, pid, since)
    by partition key and app id; shared by a persister and its copies."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.apps: dict[str, dict[str, dict[int, _rows.Row]]] = {}
        self.leases: dict[tuple[str, str], tuple[str, int, str]] = {}

    def __getstate__(self) -> dict[str, Any]:
        with self.lock:
            apps = {
                pk: {app: dict(steps) for app, steps in apps.items()}
                for pk, apps in self.apps.items()
            }
            return {"apps": apps, "leases": dict(self.leases)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.lock = threading.Lock()
        self.apps = state["apps"]
        self.leases = state["leases"]


class InMemoryPersister(_rows.RowSaver, BaseStatePersister):
    """Keeps saved steps in memory; `copy()` shares the store, a pickled copy takes a snapshot."""

    def __init__(self) -> None:
        self._store = _Store()

    def copy(self) -> InMemoryPersister:
        return copy.copy(self)

    def acquire_lease(self, partition_key: str | None, app_id: str, wait: float = 0) -> Lease:
        """A lease kept in the store (a pickled copy carries its holder); re-entrant on one
        thread, while another thread of this process is another driver."""
        slot = (_rows.stored_partition_key(partition_key, self._source(), app_id), app_id)
        return _leases.acquire(
            ("memory", id(self._store), *slot),
            app_id,
            lambda left: _leases.retry(lambda: self._take_lease(slot), left),
            wait,
        )

    def _take_lease(self, slot: tuple[str, str]) -> _leases.Taken:
        mine = (*_leases.me(), _leases.now_text())
        with self._store.lock:
            holder = self._store.leases.get(slot)
            if holder is not None and holder[:2] != mine[:2] and not _leases.died_here(*holder[:2]):
                raise AppLockedError(slot[1], _leases.holder_text(*holder))
            self._store.leases[slot] = mine

        def release() -> None:
            with self._store.lock:
                if self._store.leases.get(slot) == mine:
                    del self._store.leases[slot]

        return _leases.Taken(release)

    def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        stored_key = _rows.stored_partition_key(partition_key, self._source(), app_id)
        with self._store.lock:
            steps = self._store.apps.get(stored_key, {}).get(app_id)
            if not steps:
                return None
            row = steps.get(max(steps) if sequence_id is None else sequence_id)
        return None if row is None else _rows.decode_row(row, self._source())

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        with self._store.lock:
            return sorted(self._store.apps.get(stored_key, {}))

    def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        with self._store.lock:
            apps = self._store.apps.get(stored_key, {})
            latest = {
                app_id: apps[app_id][max(apps[app_id])] for app_id in app_ids if apps.get(app_id)
            }
        return {app_id: _rows.decode_row(row, self._source()) for app_id, row in latest.items()}

    def _write(self, rows: list[_rows.Row], children: list[tuple[Any, _rows.Row]]) -> None:
        """Children are kept with the other apps (memory has no B-tree to keep in order)."""
        with self._store.lock:
            for row in (*rows, *(row for _, row in children)):
                partition_key, app_id, sequence_id = row[:3]
                self._store.apps.setdefault(partition_key, {}).setdefault(app_id, {})[
                    sequence_id
                ] = row

    def is_initialized(self) -> bool:
        """Always: there is nothing to create."""
        return True

    def _source(self) -> str:
        return "InMemoryPersister"
